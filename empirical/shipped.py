"""The shipped weights from the command line (the main job uses them, so it trains nothing; ``--retrain`` trains
from scratch instead):

    python -m empirical.shipped export CHECKPOINT          # write a trained checkpoint's files (maintainers)
    python -m empirical.shipped check                      # every shipped file against its recorded SHA-256
    python -m empirical.shipped retrain NAME --out DIR     # train again with the recorded settings and compare
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from empirical.cli import run_cli, writable_file
from empirical.io.atomic import write_json
from empirical.io.errors import CheckpointError
from empirical.training.shipped import BPD_TOLERANCE, available, check, export, retrain


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m empirical.shipped", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a finished checkpoint's weights and card into empirical/weights")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--name")
    sub.add_parser("check", help="every shipped file against its recorded SHA-256")
    r = sub.add_parser("retrain", help="train again with the recorded settings and compare with the shipped weights")
    r.add_argument("name", help=", ".join(s.name for s in available()) or "a shipped model")
    r.add_argument("--out", type=Path, required=True, help="the new training run's folder")
    r.add_argument("--data-dir")
    r.add_argument("--json", type=Path, help="write the comparison here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        s = export(args.checkpoint, args.name)
        print(f"wrote {s.weights} ({s.card['bytes']:,} bytes) and its card {s.weights.with_suffix('.json')}")
        return 0
    if args.command == "check":
        problems = check()
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print(f"{len(available())} shipped model(s), {len(problems)} problem(s)")
        return 1 if problems else 0
    shipped = {s.name: s for s in available()}
    if args.name not in shipped:
        raise CheckpointError(f"no shipped model {args.name!r}; shipped: {', '.join(shipped) or 'none'}")
    if args.json:
        writable_file(args.json, "--json")
    record = retrain(shipped[args.name], args.out, args.data_dir)
    verdict = "bit for bit identical" if record["bit_for_bit"] else (
        f"not identical (largest weight difference {record['max_abs_weight_difference']:.3g}); test bits/dim "
        f"{record['test_bpd']['retrained']:.4f} against {record['test_bpd']['shipped']:.4f}, "
        + ("within" if record["within_tolerance"] else "OUTSIDE") + f" the tolerance of {BPD_TOLERANCE}")
    print(f"retrained {args.name} in {record['seconds']:.0f} s: {verdict}")
    if args.json:
        write_json(args.json, record)
    return 0 if record["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
