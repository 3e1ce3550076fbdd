"""The model's log-likelihood wrapped in DistributedDataParallel for training under torchrun."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from empirical.io.distributed import Shard
from empirical.models.likelihood import log_likelihood


class _LogLikelihood(nn.Module):
    """``log_likelihood(model, x, generator, shard)`` (empirical.models.likelihood) as ``forward``, the method DDP
    wraps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, generator: torch.Generator, shard: Shard) -> dict[str, torch.Tensor]:
        return log_likelihood(self.model, x, generator, shard)


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model's log-likelihood wrapped in DistributedDataParallel: its backward all-reduces (averages) the
    gradients over the ranks; the parameters stay ``model``'s own, so checkpoints hold no wrapper."""
    return DistributedDataParallel(_LogLikelihood(model), device_ids=[device] if device.type == "cuda" else None)
