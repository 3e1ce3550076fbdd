"""Train (or reuse), measure, predict and judge: ``python -m verify.compare fashionmnist mnist``.

Does a model trained on IN give OUT's test set a higher likelihood than IN's own test set, by how much, and does
the second-order theory predict it? This is the command line around ``verify.api.compare``: it opens the data
sources, trains or reuses the project's model (or takes ``--checkpoint``, or your ``--model-factory``), calls the
API and writes the report.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from empirical.cli import (
    SOURCE_HELP,
    add_data_arguments,
    add_shape_arguments,
    check_seed,
    data_options,
    run_cli,
    shape_map,
    writable_dir,
)
from empirical.data import sources
from empirical.data.imageset import ImageSet, map_to
from empirical.io import distributed
from empirical.io.distributed import resolve_device
from empirical.io.errors import CheckpointError, DgmOodError
from empirical.models.registry import FLOWS, MODELS
from empirical.ood.suite import choose_scores
from empirical.training.loading import checkpoint_facts
from empirical.training.presets import PRESETS, default_budget, get_preset
from verify import api
from verify.cli import OpenedModel, add_model_arguments, check_model_arguments, open_model, trained
from verify.report import write_families
from verify.results import Provenance
from verify.runs import extra_models, trained_model

FAMILY_MODELS = ("pixelcnn", "vae")  # with the --model flow: the paper's three families, side by side


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.compare", description=__doc__.splitlines()[0],
                                epilog=SOURCE_HELP)
    p.add_argument("in_dataset", metavar="IN", help="the training data: a registry name or a path (see below)")
    p.add_argument("out_dataset", metavar="OUT", help="the OOD data: a registry name, constant, noise, or a path")
    p.add_argument("--model", choices=MODELS,
                   help="cvglow (constant-volume Glow, default: every prediction applies), glow (affine), "
                        "pixelcnn or vae; with --checkpoint the checkpoint's own family")
    p.add_argument("--split-prior", choices=["learned", "fixed"],
                   help="flows: 'fixed' makes every split latent N(0, σ_ψ²), the paper's exact model class "
                        "(default: learned conditional priors)")
    p.add_argument("--scores", default="cheap", metavar="SET|NAMES",
                   help="OOD detection scores, a set or score names separated by commas: cheap (likelihood, "
                        "typicality, input complexity, DoSE, per-latent "
                        "scores; default); model (also the gradient score or a VAE's likelihood regret: more passes "
                        "of the same model); all (also the likelihood ratio and WAIC, which train a background model "
                        "and an ensemble); none; or e.g. likelihood,typicality,complexity_png")
    p.add_argument("--entropy", action="store_true",
                   help="also train (or reuse) a model of the same kind on OUT's training part: the entropy "
                        "decomposition gap = [H(IN) − H(OUT)] − [KL(OUT‖p) − KL(IN‖p)]")
    p.add_argument("--all-models", action="store_true",
                   help="run the --model flow (default cvglow), pixelcnn and vae on the same pair; one table "
                        "and one figure (each model's report in its own folder)")
    p.add_argument("--preset", default="auto", choices=["auto", *PRESETS],
                   help="auto = gpu on CUDA, else cpu")
    add_model_arguments(p)
    add_shape_arguments(p)
    add_data_arguments(p)
    p.add_argument("--out", type=Path, help="report folder (default runs/compare/IN-OUT-MODEL-PRESET)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where trained models are cached")
    p.add_argument("--retrain", action="store_true",
                   help="train from scratch even where shipped weights exist for this run (empirical.shipped)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    return p


def checkpoint_family(args: argparse.Namespace) -> str:
    """The family of ``--checkpoint``, which is the truth: a contradicting --model or --split-prior is an error."""
    payload = checkpoint_facts(args.checkpoint)
    family = payload.get("model")
    if family not in MODELS:
        raise CheckpointError(f"{args.checkpoint} names an unknown model family {family!r}")
    if args.model and args.model != family:
        raise CheckpointError(f"{args.checkpoint} is a {family} checkpoint, not {args.model}: drop --model (the "
                              f"checkpoint's own family is used)")
    split = payload.get("model_config", {}).get("split_prior", "learned") if family in FLOWS else None
    if args.split_prior and split != args.split_prior:
        raise CheckpointError(f"{args.checkpoint} has {split or 'no'} split priors, not {args.split_prior}: drop "
                              f"--split-prior")
    return family


def preset_name(args: argparse.Namespace) -> str:
    return args.preset if args.preset != "auto" else ("gpu" if resolve_device(args.device).type == "cuda" else "cpu")


def _model(args: argparse.Namespace, model_name: str, in_train: ImageSet, in_test: ImageSet, command: str,
           ) -> OpenedModel:
    """The named model (--checkpoint, --model-factory), or the project's ``model_name`` trained or reused."""
    if args.checkpoint or args.model_factory:
        return open_model(args, in_train, in_test)
    # --all-models applies --split-prior to its flow only; asked for one other family, get_preset refuses it
    split_prior = None if args.all_models and model_name not in FLOWS else args.split_prior
    preset = get_preset(preset_name(args), model_name, in_train.shape, seed=args.seed, split_prior=split_prior)
    print(f"preset {preset.name}: {model_name} {preset.model}, {preset.train.steps} training steps of "
          f"{preset.train.batch_size}", file=sys.stderr)
    return trained(args, model_name, preset, in_train, in_test, command)


def out_parts(args: argparse.Namespace, in_train: ImageSet, out_test: ImageSet) -> tuple[ImageSet, ImageSet]:
    """OUT's training part and the test part compared, in IN's shape, for ``--entropy``: OUT must have a training
    part that is not the images evaluated (a registry dataset, or a source with train and test parts)."""
    if args.out_dataset in sources.SYNTHETIC_NAMES or out_test.part != "test":
        raise DgmOodError(f"--entropy trains a model of OUT on its training part, and {args.out_dataset} has none "
                          f"apart from the images compared (use a registry dataset or a source with train and test "
                          f"parts)")
    train, _ = sources.open_in(args.out_dataset, data_options(args))
    return map_to(train, in_train.shape, shape_map(args)), out_test


def compare_one(args: argparse.Namespace, model_name: str, in_train: ImageSet, in_test: ImageSet,
                out_test: ImageSet, out_dir: Path, started: Provenance | None = None) -> dict:
    """Open or train the model, compare, write the report; returns results.json's content. The wall-clock (and the
    commit) count from ``started``, by default from now."""
    command = shlex.join(["python", "-m", "verify.compare", *args.argv])
    started = started or Provenance(command)
    opened = _model(args, model_name, in_train, in_test, command)
    device = resolve_device(args.device)
    background, ensemble, out_model = None, [], None
    if (args.choice.level == "all" or args.entropy) and opened.checkpoint is None:
        raise DgmOodError("--scores all and --entropy train more models like this one; they need a model of ours (an "
                          "outside model's training is not known)")
    if args.entropy:
        out_train, out_test_part = out_parts(args, in_train, out_test)
        print(f"entropy decomposition: training or reusing a {opened.name} on {out_train.name}", file=sys.stderr)
        out_model = trained_model(out_train, out_test_part, opened.name, opened.checkpoint.preset(args.seed),
                                  device, args.runs_dir, command=command, retrain=args.retrain).model
    if args.choice.level == "all":
        preset = opened.checkpoint.preset(args.seed)
        print("detection scores: training or reusing a background model and 4 more ensemble members",
              file=sys.stderr)
        background, ensemble = extra_models(in_train, in_test, opened.name, preset, device, args.runs_dir,
                                            seed=args.seed, command=command, retrain=args.retrain)
    result = api.compare(opened.checkpoint or opened.module, in_train, in_test, out_test, heldout=opened.heldout,
                         background=background, ensemble=ensemble, out_model=out_model,
                         detection=args.scores,
                         budget=None if opened.checkpoint else default_budget(preset_name(args)), seed=args.seed,
                         device=device, provenance=replace(started, model_source=opened.source), name=opened.name)
    if not distributed.world().main:  # under torchrun every rank evaluates its share; rank 0 reports
        return {}
    results = result.write(out_dir)
    print(result.summary(results["out_dir"]))
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    distributed.init_from_env(args.device)  # under torchrun: join the group (training and evaluation are sharded)
    try:
        return _compare(args)
    finally:
        distributed.shutdown()


def _compare(args: argparse.Namespace) -> int:
    started = Provenance(shlex.join(["python", "-m", "verify.compare", *args.argv]))
    for name in (args.in_dataset, args.out_dataset):
        sources.check_name(name)
    check_seed(args.seed)
    args.choice = choose_scores(args.scores)
    check_model_arguments(args)
    named = args.checkpoint or args.model_factory
    if args.retrain and named:
        raise DgmOodError("--retrain trains our model from scratch; it cannot be combined with --checkpoint or "
                          "--model-factory")
    if args.all_models and named:
        raise DgmOodError("--all-models trains or reuses one model per family; it cannot take --checkpoint or "
                          "--model-factory")
    if args.model_factory and (args.model or args.split_prior):
        raise DgmOodError("--model and --split-prior choose one of our models; --model-factory names yours")
    model = checkpoint_family(args) if args.checkpoint else ("outside" if args.model_factory else
                                                            (args.model or "cvglow"))
    stem = f"{sources.slug(args.in_dataset)}-{sources.slug(args.out_dataset)}" + ("-match" if args.match else "")
    tag = ("-splitfixed" if args.split_prior == "fixed" else "") \
        + (f"-scores{sources.slug(args.scores)}" if args.scores not in ("cheap", "none") else "") \
        + ("-entropy" if args.entropy else "")
    out = args.out or Path("runs/compare") / (f"{stem}-families-{preset_name(args)}{tag}" if args.all_models
                                              else f"{stem}-{model}-{preset_name(args)}{tag}")
    # every input is read and checked before anything is written or trained
    in_train, in_test = sources.open_in(args.in_dataset, data_options(args))
    out_test = sources.open_out(args.out_dataset, in_train.shape, shape_map(args), data_options(args), in_test=in_test,
                                n_synthetic=len(in_test), seed=args.seed)
    if args.entropy:
        out_parts(args, in_train, out_test)  # OUT has a training part: checked before any training
    writable_dir(out, "--out")  # before any training: a report that cannot be written would waste it
    if not named:
        writable_dir(args.runs_dir / "models", "--runs-dir")
    if not args.all_models:
        compare_one(args, model, in_train, in_test, out_test, out, started)
        return 0
    flow = model if model in FLOWS else "cvglow"
    runs = {m: compare_one(args, m, in_train, in_test, out_test, out / m) for m in (flow, *FAMILY_MODELS)}
    if not distributed.world().main:
        return 0
    write_families(runs, out)
    print(f"three families: {out}/families.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
