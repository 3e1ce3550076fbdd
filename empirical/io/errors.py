"""The project's own exceptions: each message names the file, dataset or parameter at fault."""

from __future__ import annotations


class DgmOodError(Exception):
    """Base class; the CLIs print these without a traceback and exit with status 2."""


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
