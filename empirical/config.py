"""What every model's config shares: the image shape C×H×W it models, D, and its dict form."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from empirical.errors import DataError


@dataclass(frozen=True)
class ImageModelConfig:
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

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
