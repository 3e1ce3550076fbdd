"""Test bits/dim against cumulative training wall-clock, from checkpoints' histories:
``python bench/time_to_bpd.py runs/models/*/last.pt --out results/time_to_bpd``  (CSV + PNG).

The trainer records (step, train bpd, test bpd, cumulative seconds, device) at every evaluation, across
resumed sessions, so a run continued on another machine keeps one curve.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from empirical.cli import run_cli  # noqa: E402
from empirical.training.checkpoint import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="writes OUT.csv and OUT.png")
    args = p.parse_args(argv)
    rows = []
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    for path in args.checkpoints:
        payload = load_checkpoint(path)
        label = path.parent.name  # the run folder: unique per run, and it names dataset, model and preset
        hist = payload["history"]
        for h in hist:
            rows.append({"run": label, **{k: h.get(k) for k in ("step", "seconds", "train_bpd", "test_bpd", "device")}})
        ax.plot([h["seconds"] / 60 for h in hist], [h["test_bpd"] for h in hist], "o-", label=label)
    ax.set_xlabel("training wall-clock [min]")
    ax.set_ylabel("test bits/dim")
    ax.legend(frameon=False, fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out.with_suffix(".png"), dpi=150)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} points from {len(args.checkpoints)} runs -> {args.out.with_suffix('.csv')}, .png")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
