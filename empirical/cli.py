"""Shared CLI plumbing: our errors become one clear line and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from empirical.errors import DgmOodError


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a DgmOodError is printed as ``error: ...`` (no traceback)."""
    try:
        return main(argv)
    except DgmOodError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint written is intact", file=sys.stderr)
        return 130
