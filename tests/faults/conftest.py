"""Shared pieces of the fault-injection suite: tiny official-format data, trained smoke checkpoints, a CLI runner
that runs a command as ``python -m`` would, the one-line-error check and a snapshot of a folder's files."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np

from empirical.cli import run_cli
from empirical.io.locking import LOCK_NAME
from tests import datafiles

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 64


def blobs(n: int, seed: int) -> np.ndarray:
    """n structured 28×28 images (a bright blob each), so a smoke model has something to learn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    out = []
    for _ in range(n):
        cy, cx = rng.integers(8, 20, 2)
        blob = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30)
        out.append(np.clip(blob + rng.integers(0, 8, (28, 28)), 0, 255))
    return np.array(out, dtype=np.uint8)


def write_tiny_idx(root: Path, folder: str, seed: int) -> None:
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    labels = np.zeros(N_IMAGES, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (target / f"{prefix}-images-idx3-ubyte").write_bytes(datafiles.idx_bytes(blobs(N_IMAGES, seed), 2051))
        (target / f"{prefix}-labels-idx1-ubyte").write_bytes(datafiles.idx_bytes(labels, 2049))


def env_for(tmp: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DGM_OOD_DATA"}
    env.update(PYTHONPATH=str(REPO), DGM_OOD_CACHE=str(tmp / "cache"), **extra)
    return env


# Our commands: their ``__main__`` is ``sys.exit(run_cli(main))``, so calling that in this process is what
# ``python -m`` does, less a torch import (4–9 s a call on a slow 2-core machine).
IN_PROCESS = ("empirical.", "theory.", "verify.")


def cli(module: str, *args: str | Path, tmp: Path, env: dict | None = None,
        timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m module args`` from ``tmp`` with ``env``; output captured as text. Our commands run in this
    process (the exit status, stdout and stderr a subprocess would give, a traceback included), anything else
    in a subprocess."""
    argv, env = list(map(str, args)), env or env_for(tmp)
    if not module.startswith(IN_PROCESS):
        return subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=timeout)
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    with _as_a_process(tmp, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _exit_status(main, argv)
    return subprocess.CompletedProcess([sys.executable, "-m", module, *argv], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _as_a_process(cwd: Path, env: dict):
    """This process's working folder and environment are ``cwd`` and ``env`` inside the block, then restored."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _exit_status(main, argv: list[str]) -> int:
    """``sys.exit(run_cli(main))`` as the interpreter ends it: argparse's exits, and a traceback with status 1."""
    try:
        return run_cli(main, argv)
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    except Exception:  # an uncaught error: what the interpreter prints, so tests see the traceback
        traceback.print_exc()
        return 1


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, and the last line of stderr is ``error: ...`` naming every needle."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle.lower() in last.lower(), f"{needle!r} not in {last!r}"
    return last


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every saved file under ``folder`` (the run lock's pid record is not one)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}
