"""``python -m verify.detect IN OUT1 [OUT2 ...] --checkpoint PATH``: one model against several OOD sets, an AUROC
table (the detectors of empirical.ood, fitted once on held-out IN images; verify.detection runs them)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from empirical.cli import (
    SOURCE_HELP,
    add_shape_arguments,
    check_limit,
    check_seed,
    data_options,
    run_cli,
    shape_map,
    writable_file,
)
from empirical.data import sources
from empirical.data.imageset import ImageSet
from empirical.io.atomic import write_json
from empirical.io.distributed import resolve_device
from empirical.io.errors import DgmOodError
from empirical.models.contract import describe
from empirical.ood.detectors import RECOMMENDATION, RECOMMENDED
from empirical.ood.suite import SCORE_SETS, choose_scores
from empirical.training.checkpoint import Checkpoint
from verify.cli import add_model_arguments, add_run_arguments, open_model
from verify.detection import screen
from verify.results import Provenance
from verify.runs import extra_models, extra_origins, provenance


# ------------------------------------------------------------------------------------------------ the CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.detect", description=__doc__.splitlines()[0],
                                epilog=SOURCE_HELP)
    p.add_argument("in_dataset", metavar="IN", help="the data the model was trained on (a registry name or a path)")
    p.add_argument("out_datasets", metavar="OUT", nargs="+", help="OOD sets: registry names, constant, noise, paths")
    add_model_arguments(p, checkpoint_required=False)
    p.add_argument("--scores", default="cheap", metavar="SET|NAMES",
                   help=f"a set ({', '.join(SCORE_SETS)}) or score names separated by commas. cheap: likelihood, "
                        "typicality, complexity, DoSE, per-latent scores; model: also the gradient score or a VAE's "
                        "likelihood regret; all: also the likelihood ratio and WAIC, which train a background model "
                        "and an ensemble (cached in --runs-dir)")
    add_shape_arguments(p)
    add_run_arguments(p)
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--limit", type=int, metavar="N",
                   help="score only the first N images of IN-test and of each OUT set (all by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "verify.detect", *(sys.argv[1:] if argv is None else argv)])
    start = Provenance(command)
    for name in (args.in_dataset, *args.out_datasets):
        sources.check_name(name)
    check_seed(args.seed)
    check_limit(args.limit)
    choice = choose_scores(args.scores)
    if choice.level == "none":
        raise DgmOodError("--scores none scores nothing; name a set or scores")
    if args.json:
        writable_file(args.json, "--json")
    device = resolve_device(args.device)
    options = data_options(args)
    in_train, in_test = sources.open_in(args.in_dataset, options)
    opened = open_model(args, in_train, in_test)
    if choice.level == "all" and opened.checkpoint is None:
        raise DgmOodError("--scores all trains a background model and an ensemble like the checkpoint; it needs "
                          "--checkpoint (an outside model's training is not known)")
    model = opened.module.to(device).eval()
    shape = describe(model).shape
    scored = in_test.head(args.limit)
    outs = [sources.open_out(name, shape, shape_map(args), options, n_synthetic=len(scored), seed=args.seed,
                             in_test=in_test)
            .head(args.limit) for name in args.out_datasets]
    background, ensemble = extra_for(opened.checkpoint, in_train, in_test, device, args.runs_dir, args.seed, command) \
        if choice.level == "all" else (None, [])
    extra_sources = extra_origins(background, ensemble) if background is not None else None
    table = screen(model, scored, outs, heldout=opened.heldout,
                   background=None if background is None else background.model, ensemble=[e.model for e in ensemble],
                   expensive=choice.level in ("model", "all"), choice=choice, seed=args.seed,
                   device=device)
    plumbing = any(s.nonstandard for s in (in_train, in_test, *outs))
    names = list(dict.fromkeys(k for det in table.values() for k in det["scores"]))
    label = "PLUMBING RUN on non-standard data, not a result. " if plumbing else ""
    subsample = f", on the first {args.limit} images of IN-test and of each OUT set" if args.limit else ""
    print(f"{label}AUROC (OUT positive; 0.5 = chance) for {opened.name} trained on {in_train.source} "
          f"({opened.source}){subsample}:")
    print(f"recommended score: {RECOMMENDED} (first column): {RECOMMENDATION}")
    print("| OUT | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for name, det in table.items():
        print(f"| {name} | " + " | ".join(f"{det['scores'][s]['auroc']:.3f}" if s in det["scores"] else "n/a"
                                         for s in names) + " |")
    if args.json:
        write_json(args.json, {"in": in_train.source, "model": opened.source, "plumbing": plumbing, "limit": args.limit,
                               "extra_model_sources": extra_sources, "detection": table,
                               "data": {"in_test": scored.provenance(), **{o.source: o.provenance() for o in outs}},
                               "provenance": provenance(start, device)})
    return 0


def extra_for(checkpoint: Checkpoint, in_train: ImageSet, in_test: ImageSet, device: torch.device, runs_dir: Path,
              seed: int, command: str) -> tuple[Checkpoint, list[Checkpoint]]:
    """The background model and the ensemble's other members for ``--scores all``, trained or reused like the
    checkpoint (same family, preset and architecture)."""
    return extra_models(in_train, in_test, checkpoint.name, checkpoint.preset(seed), device, runs_dir, seed=seed,
                        command=command)


if __name__ == "__main__":
    sys.exit(run_cli(main))
