"""``python -m verify.shifts IN``: IN-test moved along every shift at every severity, under our flow of IN (or yours),
our PixelCNN and VAE of IN (``--all-models``) and our flow of another set. Which classes of shift invert (the
shifted images get the higher likelihood), whether the models agree on it image by image (model or data), how
well the closed form and the input-complexity fit predict the gap, and which detection score notices, in one
report with figures (``--shifts``, ``--severities`` and ``--limit`` choose the cells)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np

from empirical.cli import SOURCE_HELP, check_limit, check_seed, data_options, run_cli, writable_dir
from empirical.data import sources
from empirical.data.shifts import SEVERITIES, SHIFTS
from empirical.io import distributed
from empirical.io.atomic import atomic_write, staged, write_json
from empirical.io.distributed import resolve_device
from empirical.io.errors import DataError, DgmOodError
from empirical.ood.detectors import RECOMMENDED
from empirical.ood.suite import choose_scores, one_model_choice
from empirical.training.presets import get_preset
from verify import shift_figures
from verify.agreement import IN_TEST, complexity_r2, rank_agreement, verdicts
from verify.cli import FAMILIES, OTHER_SET, OpenedModel, add_family_arguments, add_run_arguments, our_models, trained
from verify.results import Provenance
from verify.runs import provenance
from verify.shift_report import gap_figure, render
from verify.sweep import Sweep, best_worst_case, shifted_sets, summary, sweep, to_dict, worst_case

log = logging.getLogger(__name__)

# images per cell by default: the sweeps a user runs first finish in about 5 minutes on a 2-core machine
DEFAULT_LIMIT = {("one", "grey"): 500, ("one", "colour"): 200, ("all", "grey"): 80, ("all", "colour"): 30}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.shifts", description=__doc__.splitlines()[0],
                                epilog=SOURCE_HELP)
    p.add_argument("in_dataset", metavar="IN", help="the data the model was trained on (a registry name or a path)")
    add_family_arguments(p)
    p.add_argument("--shifts", help=f"comma-separated (default all {len(SHIFTS)}): {', '.join(SHIFTS)}")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated, from 1 to 5 (default all)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="IN-test images per cell (default: " + ", ".join(
                       f"{n} for {k[1]} images{' with --all-models' if k[0] == 'all' else ''}"
                       for k, n in DEFAULT_LIMIT.items()) + ")")
    p.add_argument("--other-set", metavar="NAME",
                   help="the set whose flow ranks the same images, for agreement across training sets (default: "
                        + ", ".join(f"{a} → {b}" for a, b in OTHER_SET.items()) + "; none to skip)")
    p.add_argument("--scores", default="cheap", metavar="SET|NAMES", help="detection scores (default cheap)")
    add_run_arguments(p)
    p.add_argument("--out", type=Path, help="the report's folder (default runs/shifts/IN-MODEL, or IN-all)")
    return p


def _choices(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[int, ...]]:
    names = tuple(s.strip() for s in args.shifts.split(",")) if args.shifts else tuple(SHIFTS)
    unknown = [n for n in names if n not in SHIFTS]
    if unknown:
        raise DgmOodError(f"--shifts: unknown {', '.join(unknown)}; shifts: {', '.join(SHIFTS)}")
    try:
        severities = tuple(int(s) for s in args.severities.split(","))
    except ValueError as err:
        raise DgmOodError(f"--severities takes whole numbers from 1 to 5, got {args.severities!r}") from err
    if not severities or any(s not in SEVERITIES for s in severities):
        raise DgmOodError(f"--severities takes whole numbers from 1 to 5, got {args.severities!r}")
    for flag, values in (("--shifts", names), ("--severities", severities)):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise DgmOodError(f"{flag} names {', '.join(twice)} more than once")
    return names, severities


def _other_set(args: argparse.Namespace, in_train, command: str) -> tuple[str, OpenedModel] | None:
    """Our flow trained on the other set of the pair (``OTHER_SET``, or ``--other-set``), for rank agreement across
    training sets; None for ``--other-set none`` or an IN with no partner."""
    name = args.other_set or OTHER_SET.get(str(args.in_dataset).lower())
    if name is None or name == "none" or args.checkpoint or args.model_factory:
        return None
    try:
        train, test = sources.open_in(name, data_options(args))
    except DataError as err:
        if args.other_set:  # asked for by name: its absence is an error
            raise
        log.warning("warning: no rank agreement across training sets: %s", err)
        return None
    if train.shape != in_train.shape:
        raise DgmOodError(f"--other-set {name}: its images are {train.shape}, IN's {in_train.shape}; the models must "
                          f"read the same images")
    flow = args.model if args.model not in FAMILIES else "cvglow"
    opened = trained(args, flow, get_preset(args.preset, flow, train.shape, seed=args.seed), train, test, command)
    return _set_name(train), opened


def _set_name(train) -> str:
    """A training set's name as reports show it: ``FashionMNIST`` for FashionMNIST-train."""
    return train.name.removesuffix("-train")


def _limit(args: argparse.Namespace, shape: tuple[int, ...]) -> int:
    """Images per cell: ``--limit``, else what keeps the default sweep within budget (``DEFAULT_LIMIT``)."""
    if args.limit is not None:
        check_limit(args.limit)
        return args.limit
    return DEFAULT_LIMIT[("all" if args.all_models else "one", "colour" if shape[0] == 3 else "grey")]


def _figures(stage: Path, sweeps: list[Sweep], analysis: dict, severities: tuple[int, ...]) -> None:
    main, sev = sweeps[0], list(severities)
    rows = list(dict.fromkeys(c.shift for c in main.cells))
    for s in sweeps:
        shift_figures.heatmap(shift_figures.grid(s.cells, lambda c: c.gap_bpd, rows, sev), rows, sev,
                              f"gap (bits/dim): {s.label}", "bpd(IN-test) − bpd(shifted)", stage / gap_figure(s.label))
    for key, score in (("recommended", RECOMMENDED), ("likelihood", "likelihood")):
        shift_figures.heatmap(shift_figures.grid(main.cells, lambda c, s=score: c.auroc.get(s, np.nan), rows, sev),
                              rows, sev, f"AUROC of {score}: {main.label}", "AUROC", stage / f"auroc_{key}.png",
                              centre=0.5, fmt="{:.2f}")
    shift_figures.gap_curves(sweeps, stage / "gap_curves.png")
    shift_figures.auroc_curves(main.cells, RECOMMENDED, stage / "auroc_curves.png")
    pairs = list(next(iter(analysis["agreement"].values()), {}))
    if pairs:
        keys = [IN_TEST, *rows]
        values = np.array([[analysis["agreement"][k][p] for p in pairs] for k in keys])
        shift_figures.heatmap(values, keys, pairs, "per-image rank agreement of log p (Spearman ρ)", "ρ",
                              stage / "agreement.png", fmt="{:.2f}", xlabel="models", limits=(-1.0, 1.0))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    distributed.init_from_env(args.device)  # under torchrun: every cell's evaluation is sharded across the ranks
    try:
        return _sweep(args, shlex.join(["python", "-m", "verify.shifts", *(sys.argv[1:] if argv is None else argv)]))
    finally:
        distributed.shutdown()


def _sweep(args: argparse.Namespace, command: str) -> int:
    start = Provenance(command)
    for name in (args.in_dataset, *([args.other_set] if args.other_set and args.other_set != "none" else [])):
        sources.check_name(name)
    check_seed(args.seed)
    names, severities = _choices(args)
    choice = one_model_choice(args.scores, "the shift sweep (--scores)")
    which = "all" if args.all_models else args.model
    out = args.out or Path("runs/shifts") / f"{sources.slug(args.in_dataset)}-{which}"
    writable_dir(out, "--out")
    device = resolve_device(args.device)
    in_train, in_test = sources.open_in(args.in_dataset, data_options(args))
    limit = _limit(args, in_train.shape)
    opened = our_models(args, in_train, in_test, command)
    other = _other_set(args, in_train, command)
    shifted = shifted_sets(in_test, shifts=names, severities=severities, limit=limit, seed=args.seed)
    sweeps = [sweep(m.module.to(device).eval(), shifted, m.heldout, label=f"{m.name} ({_set_name(in_train)})",
                    choice=choice, seed=args.seed, device=device) for m in opened]
    if other:
        sweeps.append(sweep(other[1].module.to(device).eval(), shifted, None, label=f"{other[1].name} ({other[0]})",
                            choice=choose_scores("likelihood"), seed=args.seed, device=device))
    if not any(c.auroc for s in sweeps[:len(opened)] for c in s.cells):
        raise DgmOodError(f"--scores {args.scores}: none of these scores applies to "
                          f"{', '.join(m.name for m in opened)} (a flow's latent terms: latent_top, latent_split1, …)")
    by_model = {s.label: worst_case(s.cells) for s in sweeps[:len(opened)]}  # IN's models, not the other set's
    analysis = {"verdicts": verdicts(sweeps), "agreement": rank_agreement(sweeps),
                "r2": {s.label: complexity_r2(s, shifted) for s in sweeps}, "auroc_by_family": by_model,
                "best_worst_case": best_worst_case(list(by_model.values())),
                "best_worst_case_unrestricted": best_worst_case(list(by_model.values()), exclude=())}
    if not distributed.world().main:  # rank 0 writes the report
        return 0
    facts, prov = summary(sweeps[0].cells), provenance(start, device)
    head = f"trained on {_set_name(in_train)}, {len(shifted.base)} images a cell"
    model_sources = {s.label: m.source for s, m in zip(sweeps, [*opened, *([other[1]] if other else [])], strict=True)}
    with staged(out) as stage:
        _figures(stage, sweeps, analysis, severities)
        write_json(stage / "results.json", {
            "in": in_train.source, "limit": len(shifted.base), "models": model_sources,
            "cells": {s.label: to_dict(s.cells) for s in sweeps}, "summary": facts, **analysis,
            "recommended": RECOMMENDED, "provenance": prov})
        report = render(sweeps, analysis, severities, head, prov, model_sources)
        atomic_write(stage / "report.md", lambda f: f.write(report.encode()))
    data = [s for s, v in analysis["verdicts"].items() if v["driver"] == "data"]
    print(f"{head}: invert at some severity ({sweeps[0].label}): {', '.join(facts['inverts_somewhere']) or 'none'}"
          + (f"; data-driven: {', '.join(data) or 'none'}" if len(sweeps) > 1 else ""))
    print(f"report: {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
