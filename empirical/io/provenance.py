"""What every result names about where it was made: the git commit of the code, the device in words, and the
files it read (size and SHA-256)."""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from empirical.io import distributed
from empirical.io.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def device_description(device: torch.device) -> str:
    """e.g. ``CPU x86_64 (2 threads)``, ``NVIDIA H100 (CUDA)``; under torchrun ``… × 4 ranks``."""
    ranks = f" × {distributed.world().size} ranks" if distributed.active() else ""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA){ranks}"
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads){ranks}"


def git_commit() -> str:
    """HEAD, with ``-dirty`` when tracked files differ from it. A copy of a checkout without ``.git`` (the GPU
    machine's) takes ``$DGM_OOD_COMMIT``, set by whoever made the copy, marked ``(declared)``; else ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        declared = os.environ.get("DGM_OOD_COMMIT", "").strip()
        return f"{declared} (declared)" if declared else "unknown"


@dataclass(frozen=True)
class SourceFile:
    """One file a split was read from, as it was on disk."""

    path: str
    bytes: int
    sha256: str
    count: int | None = None  # a folder read as one source: how many files its one digest covers

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def portable_path(path: str | os.PathLike, data_roots: tuple[Path, ...] = ()) -> str:
    """How a report names a file without the folders of the machine that made it: ``$DATA/…`` under one of the data
    roots, else relative to the working folder, else to the repository; a file outside all three keeps the absolute
    path its user chose."""
    path = Path(path).resolve()
    anchors = [(Path(r).resolve(), "$DATA/") for r in data_roots] + [(Path.cwd().resolve(), ""), (REPO, "")]
    for anchor, prefix in anchors:
        if path == anchor or anchor in path.parents:
            return prefix + (path.relative_to(anchor).as_posix() or ".")
    return str(path)


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as ``python -m package.module ARGS`` when it is one of ours (never the absolute
    path of its file), else as it was typed."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path()
    if script.suffix == ".py" and REPO in script.resolve().parents:
        module = ".".join(script.resolve().relative_to(REPO).with_suffix("").parts)
        return shlex.join(["python", "-m", module, *argv[1:]])
    return shlex.join(argv)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path, data_roots: tuple[Path, ...] = ()) -> SourceFile:
    """A file as it is on disk: its portable name (``portable_path``), size and SHA-256 (streamed)."""
    h, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                size += len(chunk)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    return SourceFile(portable_path(path, data_roots), size, h.hexdigest())
