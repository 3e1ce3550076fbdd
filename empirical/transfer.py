"""Checkpoints through a channel that limits file size (the GPU machine returns files of at most 16 MiB):
``python -m empirical.transfer split runs/x/last.pt`` writes last.pt.part-000, … (≤ 15 MiB each) and then
last.pt.parts.json, the manifest (every part's size and SHA-256, and the whole file's); ``python -m
empirical.transfer join runs/x/last.pt.parts.json`` rebuilds last.pt after checking every hash. The manifest is
written last, so a manifest exists only for a complete set of parts; ``load_checkpoint`` reads a manifest
directly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from empirical.cli import run_cli
from empirical.io.errors import CheckpointError
from empirical.io.transfer import MIB, join, split


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m empirical.transfer", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="cut a file into parts and write their manifest")
    s.add_argument("path", type=Path)
    s.add_argument("--max-mib", type=float, default=15.0, help="largest part, MiB (default 15)")
    j = sub.add_parser("join", help="rebuild a file from its manifest (X.parts.json)")
    j.add_argument("manifest", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "split":
        if not (math.isfinite(args.max_mib) and args.max_mib > 0):
            raise CheckpointError(f"--max-mib must be a finite number > 0, got {args.max_mib}")
        manifest = split(args.path, int(args.max_mib * MIB))
        print(f"{args.path} → {len(json.loads(manifest.read_text())['parts'])} parts; manifest {manifest}")
    else:
        print(f"rebuilt {join(args.manifest)} (every SHA-256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
