"""The project's own exceptions: each message names the file, dataset or parameter at fault."""

from __future__ import annotations

import re

_ARG = re.compile("\ue000([^\ue001]*)\ue001([^\ue002]*)\ue002")


def arg(python: str, flag: str) -> str:
    """How a message names a parameter: ``python`` is what a Python caller wrote (``str(err)`` shows it), ``flag``
    what a command's user typed (the commands print ``err.for_cli()``)."""
    return f"\ue000{python}\ue001{flag}\ue002"


class DgmOodError(Exception):
    """Base class; the CLIs print these without a traceback and exit with status 2, naming their flags where the
    library names its parameters (``arg``)."""

    def __str__(self) -> str:
        return _ARG.sub(r"\1", super().__str__())

    def for_cli(self) -> str:
        """The message with the command line's flags for the library's parameters."""
        return _ARG.sub(r"\2", super().__str__())


class DataError(DgmOodError):
    """Unknown dataset, missing or corrupt file, wrong image shape."""


class DataNotFound(DataError):
    """A split's files are in none of the data roots (a corrupt file is a DataError, never this)."""


class CheckpointError(DgmOodError):
    """Missing, corrupt or incompatible checkpoint."""


class TrainingError(DgmOodError):
    """Training cannot go on (e.g. a NaN/inf loss)."""


class TheoryError(DgmOodError):
    """A prediction was asked for a model or data it does not apply to."""
