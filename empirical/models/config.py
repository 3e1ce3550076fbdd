"""What every model's config shares: the image shape C×H×W it models, D, its dict form, and the checks of each
field's type and range (a ValueError naming the field, before any model is built)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from empirical.io.errors import DataError

MAX_SEED = 2**31 - 1  # seeds reach torch's generators as seed·1,000,003 + step: kept far from int64's end
MAX_WIDTH = 4096  # channels or units of one layer: beyond it a model no machine here can hold, refused before building
MAX_DEPTH = 256  # steps, blocks or levels


def whole(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """``value`` is a whole number ≥ ``minimum`` (and ≤ ``maximum``; a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum:,}" if maximum is not None else f"≥ {minimum}"
        raise ValueError(f"{name} must be a whole number {bound}, got {value!r}")


def flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def choice(name: str, value: object, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}, got {value!r}")


def positive(name: str, value: object) -> None:
    """``value`` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class ImageModelConfig:
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if len(self.shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.shape):
            raise ValueError(f"shape must be (C, H, W) of whole numbers ≥ 1, got {self.shape!r}")
        whole("seed", getattr(self, "seed", 0), 0, MAX_SEED)

    @property
    def dims(self) -> int:
        """D = C·H·W."""
        return math.prod(self.shape)

    def to_dict(self) -> dict:
        return asdict(self)


def check_images(x: torch.Tensor, shape: tuple[int, int, int]) -> None:
    """A clear DataError for a batch that is not N×C×H×W of the model's shape."""
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"wrong image shape {tuple(x.shape)}: this model takes N×{'×'.join(map(str, shape))}")
