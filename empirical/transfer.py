"""Checkpoints through a channel that limits file size (the GPU machine returns files of at most 16 MiB):
``python -m empirical.transfer split runs/x/last.pt`` writes last.pt.part-000, … (≤ 15 MiB each) and then
last.pt.parts.json, the manifest (every part's size and SHA-256, and the whole file's); ``python -m
empirical.transfer join runs/x/last.pt.parts.json`` rebuilds last.pt after checking every hash. The manifest is
written last, so a manifest exists only for a complete set of parts; ``load_checkpoint`` reads a manifest
directly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from empirical.atomic import atomic_write, write_json
from empirical.cli import run_cli
from empirical.errors import CheckpointError

MIB = 2**20
MANIFEST_SUFFIX = ".parts.json"


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def split(path: Path, max_bytes: int = 15 * MIB) -> Path:
    """Cut ``path`` into parts of at most ``max_bytes`` beside it; returns the manifest's path."""
    path = Path(path)
    if max_bytes < 1:
        raise CheckpointError(f"the part size must be ≥ 1 byte, got {max_bytes}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from err
    parts = []
    for i, start in enumerate(range(0, max(len(raw), 1), max_bytes)):
        chunk = raw[start: start + max_bytes]
        part = path.with_name(f"{path.name}.part-{i:03d}")
        atomic_write(part, lambda f, c=chunk: f.write(c))
        parts.append({"name": part.name, "bytes": len(chunk), "sha256": _sha256(chunk)})
    manifest = path.with_name(path.name + MANIFEST_SUFFIX)
    write_json(manifest, {"file": path.name, "bytes": len(raw), "sha256": _sha256(raw), "parts": parts})
    return manifest


def joined_bytes(manifest: Path) -> bytes:
    """The original file's bytes from its manifest and parts, every hash checked; a CheckpointError names the
    first missing or damaged part."""
    manifest = Path(manifest)
    try:
        spec = json.loads(manifest.read_text())
        parts, total, whole = spec["parts"], spec["bytes"], spec["sha256"]
    except OSError as err:
        raise CheckpointError(f"cannot read the manifest {manifest}: {err.strerror or err}") from err
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest} is not a parts manifest ({err})") from err
    chunks = []
    for p in parts:
        part = manifest.with_name(p["name"])
        try:
            chunk = part.read_bytes()
        except OSError as err:
            raise CheckpointError(f"part {part} of {manifest} is missing or unreadable: {err.strerror or err}") \
                from err
        if len(chunk) != p["bytes"] or _sha256(chunk) != p["sha256"]:
            raise CheckpointError(f"part {part} of {manifest} is damaged: {len(chunk)} bytes, expected {p['bytes']} "
                                  f"with SHA-256 {p['sha256'][:16]}…")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if len(raw) != total or _sha256(raw) != whole:
        raise CheckpointError(f"the parts of {manifest} do not make the file it describes")
    return raw


def join(manifest: Path) -> Path:
    """Rebuild the file a manifest describes, beside it (atomically); returns its path."""
    manifest = Path(manifest)
    raw = joined_bytes(manifest)
    target = manifest.with_name(json.loads(manifest.read_text())["file"])
    atomic_write(target, lambda f: f.write(raw))
    return target


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
        manifest = split(args.path, int(args.max_mib * MIB))
        print(f"{args.path} → {len(json.loads(manifest.read_text())['parts'])} parts; manifest {manifest}")
    else:
        print(f"rebuilt {join(args.manifest)} (every SHA-256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
