"""One writer per run folder: an exclusive ``flock`` on ``FOLDER/.lock`` holding the owner's pid.

The kernel drops the lock when its process ends, however it ends (kill -9 included), so a stale lock
file never blocks anyone; the pid in it only names the holder in messages.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from empirical.io.errors import DgmOodError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLocked(DgmOodError):
    """Another process holds the run folder."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


@contextmanager
def run_lock(folder: Path, *, wait: bool = False, what: str = "this run") -> Iterator[None]:
    """Hold ``folder``'s lock for the block. Busy: wait for it (``wait=True``, saying who holds it) or raise
    RunLocked naming the holder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise DgmOodError(f"cannot use {folder} for {what}: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise RunLocked(f"{folder} is in use by {holder} ({what} is already running there); wait for it "
                                f"to finish or choose another folder") from None
            log.warning("waiting for %s, which holds %s (%s)", holder, folder, what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
