"""Atomic file writes: a crash or an interruption never leaves half a file, nor replaces a good one.

Each write goes to a temp file in the target's folder (named ``.NAME.PID.*.tmp``), is fsync'ed and renamed
over the target, with the mode the umask gives (0644 under the usual 022). Ctrl-C and SIGTERM remove the temp
file on the way out; one left by a writer killed outright (kill -9) is removed by the next write to that name.
A report of several files is written into a staging folder first (``staged``) and moved in only when every file
is complete, so a full disk or an interruption never mixes a new report's files with an old one's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from empirical.io.errors import DgmOodError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path, name: str) -> list[Path]:
    """Delete ``.NAME.PID.*.tmp`` files in ``folder`` whose writer process is gone; returns what was removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\..*\.tmp$")
    for path in folder.glob(f".{name}.*.tmp"):
        m = pattern.match(path.name)
        if m and not _alive(int(m.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, rename it over ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        f = os.fdopen(fd, "wb")
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):  # closing flushes again: on a full disk that fails too; keep the cause
                f.close()
            raise
        f.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically: a NaN or infinity is an error, never a bare ``NaN`` in the file."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError as err:
        raise DgmOodError(f"refusing to write {path}: it would hold a non-finite number ({err})") from err
    atomic_write(Path(path), lambda f: f.write(text.encode()))


RUN_FILES = ".run-files"  # the names of the files the last staged write put into a folder, one per line


@contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A staging folder ``folder/.staging-PID-*``: the files written there are moved into ``folder`` (renamed, which
    needs no space) only when the block ends without an error; otherwise ``folder`` is left as it was. The folder
    then holds exactly this write's files: those an earlier staged write put there (listed in ``.run-files``) and
    this one did not are removed; files of anyone else are left alone. A staging folder left by a writer killed
    outright is removed by the next ``staged`` of ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(".staging-*"):
        m = re.match(r"^\.staging-(\d+)-", old.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=f".staging-{os.getpid()}-"))
    try:
        yield stage
        names = sorted(path.name for path in stage.iterdir())
        for name in names:
            os.replace(stage / name, folder / name)
        _forget_earlier_run(folder, names)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _forget_earlier_run(folder: Path, names: list[str]) -> None:
    """Record ``names`` as the folder's run files, and remove the earlier run's files that are not among them."""
    record = folder / RUN_FILES
    try:
        earlier = record.read_text(encoding="utf-8").splitlines() if record.is_file() else []
    except (OSError, UnicodeDecodeError):
        earlier = []
    atomic_write(record, lambda f: f.write("".join(f"{n}\n" for n in names).encode()))
    for name in set(earlier) - set(names):
        if name and "/" not in name and not name.startswith("."):
            (folder / name).unlink(missing_ok=True)
