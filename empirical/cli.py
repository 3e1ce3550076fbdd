"""Shared CLI plumbing: our errors become one clear line and exit status 2; SIGTERM stops cleanly."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from empirical.errors import DgmOodError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and temp-file cleanup runs."""


def _terminate(signum, frame) -> None:
    raise Terminated


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a DgmOodError is printed as ``error: ...`` (no traceback) with exit status 2."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(argv)
    except DgmOodError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        print(f"{what}: every file written before is intact (writes are atomic)", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
