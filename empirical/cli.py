"""Shared CLI plumbing: our errors and the operating system's become one clear line and exit status 2; SIGTERM
stops cleanly; the data options every command shares; output paths checked before any work."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from empirical.data.imageset import LAYOUTS, RESIZE_FILTERS, ShapeMap
from empirical.data.registry import DATASETS
from empirical.data.sources import SPLIT_RULE, DataOptions
from empirical.io import distributed
from empirical.io.errors import DgmOodError
from empirical.models.config import MAX_SEED

SOURCE_HELP = (
    "Data sources (IN, OUT, --dataset): a registry name (" + ", ".join(DATASETS) + "; OUT also constant or "
    "noise), or a path: anything containing '/' or ending in .npy/.npz ('./photos' names a folder here). X.npy or "
    "X.npz: uint8 images N×H×W, N×H×W×C or N×C×H×W (C = 1 or 3; --layout for ambiguous shapes); an .npz with "
    "arrays 'train' and 'test' has two parts, one with several other arrays needs X.npz:KEY. A folder: image files "
    "Pillow reads (PNG, JPEG, PPM, ...), flat or one sub-folder per class, sorted by path, hidden files skipped; "
    "train/ and test/ sub-folders make two parts. An IN without parts is split: " + SPLIT_RULE + ". OUT uses a "
    "source's test part, or all of it. OUT may also be shift:NAME:SEVERITY (IN-test shifted; 26 shifts, severity "
    "0..5; see docs/data.md) or shift:NAME:SEVERITY:SOURCE.")


NAME_MAX = 255 - 40  # bytes of a file name, leaving room for the atomic writer's temp name (.NAME.PID.xxxxxxxx.tmp)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and temp-file cleanup runs."""


def _terminate(signum, frame) -> None:
    raise Terminated


def os_error_text(err: OSError) -> str:
    """One line for an operating-system error: what failed, on which file."""
    what = "no space left on the device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    where = f" ({err.filename})" if err.filename else ""
    return f"{what}{where}: files written before are intact (writes are atomic)"


LOGGERS = ("empirical", "theory", "verify")  # the library's loggers: silent until a command shows them


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time (a test's capture, a redirect)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_progress_messages() -> None:
    """What the commands do before they run: the library's INFO messages (what is read, trained, reused) go to
    stderr as plain lines. Done once per process; the library itself never configures logging."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Stderr) for h in logger.handlers):
            handler = _Stderr()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


MAX_ERROR_CHARS = 1000


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error as one line of at most ``limit`` characters: line breaks (a file name may hold one) are shown as
    ``\\n``, and the middle of a longer message is cut, its length said."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) <= limit:
        return text
    half = (limit - 40) // 2
    return f"{text[:half]} … ({len(text) - 2 * half:,} characters cut) … {text[-half:]}"


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a DgmOodError or an OSError is printed as ``error: ...`` (no traceback) with exit status 2.
    The library's progress messages are shown on stderr."""
    show_progress_messages()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(argv)
    except DgmOodError as err:
        print(f"error: {one_line(err.for_cli())}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {one_line(os_error_text(err))}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not distributed.lost_peer(err):
            raise
        print(f"error: rank {os.environ.get('RANK', '?')}: another rank of this torchrun job stopped (killed or "
              f"crashed), so a collective failed ({one_line(str(err).splitlines()[0], 160)}); every checkpoint "
              f"written before is intact: run the same command again to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        print(f"{what}: every file written before is intact (writes are atomic)", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_seed(seed: int) -> None:
    """``--seed`` must be a whole number from 0 to MAX_SEED (torch's generators refuse negative and huge seeds deep
    inside)."""
    if not 0 <= seed <= MAX_SEED:
        raise DgmOodError(f"--seed must be a whole number from 0 to {MAX_SEED:,}, got {seed}")


def check_limit(limit: int | None) -> None:
    """``--limit N`` (the first N images) must name at least one image."""
    if limit is not None and limit < 1:
        raise DgmOodError(f"--limit must be ≥ 1, got {limit}")


# ------------------------------------------------------------------------------------------------- data
def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--data-dir, --download, --allow-nonstandard-data and --layout: how every command reads its sources."""
    p.add_argument("--data-dir", help="root of the registry datasets (else $DGM_OOD_DATA, <repo>/data, "
                                      "../shared/data)")
    p.add_argument("--download", action="store_true", help="download missing registry datasets (needs a network)")
    p.add_argument("--allow-nonstandard-data", action="store_true",
                   help="accept registry files with non-official image counts; the run is labelled PLUMBING")
    p.add_argument("--layout", choices=LAYOUTS,
                   help="layout of 4-D arrays whose shape could be either (e.g. N×3×32×3)")


def data_options(args: argparse.Namespace) -> DataOptions:
    return DataOptions(args.data_dir, args.download, args.allow_nonstandard_data, args.layout)


def add_shape_arguments(p: argparse.ArgumentParser) -> None:
    """--match and --resize: how OUT images are brought to the model's shape (never silently)."""
    p.add_argument("--match", action="store_true",
                   help="map OUT to the model's shape: zero-pad or centre-crop, grey↔RGB")
    p.add_argument("--resize", choices=list(RESIZE_FILTERS), metavar="FILTER",
                   help=f"resize OUT to the model's height and width with this Pillow filter "
                        f"({', '.join(RESIZE_FILTERS)}); channels are converted as with --match")


def shape_map(args: argparse.Namespace) -> ShapeMap:
    return ShapeMap(args.match, args.resize)


# ------------------------------------------------------------------------------------------------ output
def _utf8(path: Path, flag: str) -> None:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as err:
        raise DgmOodError(f"{flag} {path!r} is not valid UTF-8; reports and JSON name their files, so use a UTF-8 "
                          f"name") from err


def writable_dir(path: Path, flag: str) -> None:
    """Create ``path`` and prove a file can be written there, or a one-line error naming ``flag``."""
    path = Path(path)
    _utf8(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (FileExistsError, NotADirectoryError) as err:
        raise DgmOodError(f"{flag} {path}: a file is in the way ({err.filename} is not a folder)") from err
    except OSError as err:
        raise DgmOodError(f"{flag} {path} is not writable: {os_error_text(err)}") from err


def writable_file(path: Path, flag: str) -> None:
    """Prove ``path`` can be written (its folder exists or can be made, its name is valid and not a folder), before
    any work: a one-line error naming ``flag`` otherwise. Nothing is left behind."""
    path = Path(path)
    _utf8(path, flag)
    name = os.fsencode(path.name)
    if len(name) > NAME_MAX:
        raise DgmOodError(f"{flag} {path}: the file name is {len(name)} bytes; at most {NAME_MAX} are allowed")
    if path.is_dir():
        raise DgmOodError(f"{flag} {path} is a folder, not a file")
    writable_dir(path.parent if str(path.parent) else Path("."), flag)
