"""``python -m verify.shifts IN``: one model against IN-test moved along every shift at every severity. Which classes
of shift invert (the shifted images get the higher likelihood), by how much, and which detection score notices,
in one report with heat maps (``--shifts``, ``--severities`` and ``--limit`` choose the cells)."""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from empirical.cli import SOURCE_HELP, add_data_arguments, check_limit, check_seed, data_options, run_cli, writable_dir
from empirical.data import sources
from empirical.data.shifts import SEVERITIES, SHIFTS
from empirical.io.atomic import atomic_write, staged, write_json
from empirical.io.distributed import resolve_device
from empirical.io.errors import DgmOodError
from empirical.ood.detectors import RECOMMENDED
from empirical.ood.suite import choose_scores
from empirical.training.presets import get_preset
from verify import figures
from verify.cli import OpenedModel, add_model_arguments, open_model, trained
from verify.runs import provenance
from verify.sweep import Cell, summary, sweep, to_dict


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.shifts", description=__doc__.splitlines()[0],
                                epilog=SOURCE_HELP)
    p.add_argument("in_dataset", metavar="IN", help="the data the model was trained on (a registry name or a path)")
    add_model_arguments(p)
    p.add_argument("--model", default="cvglow", help="our family to train or reuse when no model is named")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--shifts", help=f"comma-separated (default all {len(SHIFTS)}): {', '.join(SHIFTS)}")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated, from 1 to 5 (default all)")
    p.add_argument("--limit", type=int, default=500, metavar="N", help="IN-test images per cell (default 500)")
    p.add_argument("--scores", default="cheap", metavar="SET|NAMES", help="detection scores (default cheap)")
    add_data_arguments(p)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="the report's folder (default runs/shifts/IN-MODEL)")
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
    return names, severities


def _model(args: argparse.Namespace, in_train, in_test, command: str) -> OpenedModel:
    if args.checkpoint or args.model_factory:
        return open_model(args, in_train, in_test)
    return trained(args, args.model, get_preset(args.preset, args.model, in_train.shape, seed=args.seed), in_train,
                   in_test, command)


def _grid(cells: list[Cell], value, names: list[str], severities: tuple[int, ...]) -> np.ndarray:
    grid = np.full((len(names), len(severities)), np.nan)
    for c in cells:
        grid[names.index(c.shift), severities.index(c.severity)] = value(c)
    return grid


def _report(cells: list[Cell], severities: tuple[int, ...], head: str, facts: dict, prov: dict,
            model_source: str) -> str:
    rows = ["| shift | family | " + " | ".join(f"gap @{s}" for s in severities) + " | "
            + " | ".join(f"{RECOMMENDED} @{s}" for s in severities) + " |",
            "|---|---|" + "---:|" * (2 * len(severities))]
    for name in dict.fromkeys(c.shift for c in cells):
        cs = [c for c in cells if c.shift == name]
        rows.append(f"| {name} | {cs[0].family} | " + " | ".join(
            f"{c.gap_bpd:+.3f} ± {c.gap_bpd_stderr:.3f}{' ▲' if c.inverts else ''}" for c in cs) + " | "
            + " | ".join(f"{c.auroc.get(RECOMMENDED, float('nan')):.3f}" for c in cs) + " |")
    inv = facts["inverts_somewhere"]
    lines = [f"# Shift sweep: {head}", "",
             "The gap is bpd(IN-test) − bpd(shifted IN-test): positive (▲ where beyond two standard errors) means the "
             "shifted images get the HIGHER likelihood, the inversion. AUROC: the shifted images are the positive "
             "class (0.5 = chance).", "",
             f"**Invert at some severity** ({len(inv)} of {len({c.shift for c in cells})}): "
             f"{', '.join(inv) or 'none'}. **At every severity:** {', '.join(facts['inverts_everywhere']) or 'none'}. "
             f"The recommended score's worst AUROC per family: " + ", ".join(
                 f"{k} {v:.3f}" for k, v in facts["recommended_worst_auroc_by_family"].items()) + ".",
             "", *rows, "", *_family_table(facts), "", "![gap](gap.png)", "",
             f"![{RECOMMENDED}](auroc_recommended.png)", "",
             "![likelihood](auroc_likelihood.png)", "", "## Provenance", "",
             f"- command: `{prov['command']}`", f"- commit: `{prov['commit']}`", f"- device: {prov['device']}",
             f"- torch {prov['torch']}, started {prov['started']}, wall-clock {prov['seconds']:.0f} s",
             f"- model: {model_source}", "- each cell: the first images of IN-test under the shift, drawn with the "
             "seed of the command (empirical.data.shifts)"]
    return "\n".join(lines) + "\n"


def _family_table(facts: dict) -> list[str]:
    """Each score's mean AUROC per shift family and its worst; the best worst case marked (a rule that looks at
    shifts of IN only)."""
    table = facts["auroc_by_family"]
    families = sorted({f for m in table.values() for f in m if f != "worst"})
    best = facts["best_worst_case"]
    return [f"Mean AUROC per shift family (over its shifts and severities); the best worst case, **{best}**, is what "
            f"a rule fixed in advance would pick from shifts of IN alone (the recommended score stays "
            f"{RECOMMENDED} until that rule is settled on more than one model):", "",
            "| score | " + " | ".join(families) + " | worst |", "|---|" + "---:|" * (len(families) + 1),
            *[f"| {'**' + s + '**' if s == best else s} | " + " | ".join(f"{m.get(f, float('nan')):.3f}"
                                                                          for f in families)
              + f" | {m['worst']:.3f} |" for s, m in table.items()]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time()
    command = shlex.join(["python", "-m", "verify.shifts", *(sys.argv[1:] if argv is None else argv)])
    sources.check_name(args.in_dataset)
    check_seed(args.seed)
    check_limit(args.limit)
    names, severities = _choices(args)
    choice = choose_scores(args.scores)
    out = args.out or Path("runs/shifts") / f"{sources.slug(args.in_dataset)}-{args.model}"
    writable_dir(out, "--out")
    device = resolve_device(args.device)
    in_train, in_test = sources.open_in(args.in_dataset, data_options(args))
    opened = _model(args, in_train, in_test, command)
    model = opened.module.to(device).eval()
    cells = sweep(model, in_test, opened.heldout, shifts=names, severities=severities, limit=args.limit,
                  choice=choice, seed=args.seed, device=device)
    facts, prov = summary(cells), provenance(command, device, started, t0)
    shown = list(dict.fromkeys(c.shift for c in cells))
    head = f"{opened.name} trained on {in_train.source}, {min(args.limit, len(in_test))} images a cell"
    with staged(out) as stage:
        figures.shift_heatmap(_grid(cells, lambda c: c.gap_bpd, shown, severities), shown, list(severities),
                              f"gap (bits/dim): {in_train.source}", "bpd(IN-test) − bpd(shifted)", stage / "gap.png")
        for key, score in (("recommended", RECOMMENDED), ("likelihood", "likelihood")):
            figures.shift_heatmap(_grid(cells, lambda c, s=score: c.auroc.get(s, np.nan), shown, severities), shown,
                                  list(severities), f"AUROC of {score}", "AUROC", stage / f"auroc_{key}.png",
                                  centre=0.5, fmt="{:.2f}")
        write_json(stage / "results.json", {"in": in_train.source, "model": opened.source, "limit": args.limit,
                                            "cells": to_dict(cells), "summary": facts, "provenance": prov})
        report = _report(cells, severities, head, facts, prov, opened.source)
        atomic_write(stage / "report.md", lambda f: f.write(report.encode()))
    print(f"{head}: invert at some severity: {', '.join(facts['inverts_somewhere']) or 'none'}")
    print(f"report: {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
