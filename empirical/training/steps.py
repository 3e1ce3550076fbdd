"""What one training step is made of: the (seed, step) generator, the optimizer and learning-rate schedule,
the batch augmentations, the data-dependent initialisation and the loss (sharded over torchrun ranks)."""

from __future__ import annotations

import math
from functools import partial

import torch

from empirical.io import distributed
from empirical.io.errors import TrainingError
from empirical.models.contract import describe
from empirical.models.likelihood import bits_per_dim, log_likelihood
from empirical.training import ddp
from empirical.training.presets import TrainConfig


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "adamax":
        return torch.optim.Adamax(model.parameters(), lr=cfg.lr)
    raise TrainingError(f"unknown optimizer {cfg.optimizer!r}; use adam or adamax")


def perturb_subpixels(x: torch.Tensor, mu: float, generator: torch.Generator) -> torch.Tensor:
    """Ren et al. (NeurIPS 2019), the background model's input: each sub-pixel of uint8 images is replaced by
    a uniform random value in 0..255 with probability μ (independently), the rest kept."""
    mask = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) < mu
    noise = torch.randint(0, 256, x.shape, generator=generator, device=generator.device, dtype=torch.uint8)
    return torch.where(mask, noise.to(x.device), x)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay: lr·½(1 + cos(π·t)), t the fraction
    of the post-warm-up steps done (0 at the end of the warm-up, 1 at ``steps``)."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
    if cfg.decay == "cosine" and step >= cfg.warmup:
        lr *= 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))
    return lr


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of N×C×H×W mirrored left–right with probability ½ (the flip augmentation of public Glow
    recipes for natural images); one draw per image of the whole batch, so every rank agrees."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def initialize(model: torch.nn.Module, train_x: torch.Tensor, seed: int, dev: torch.device) -> None:
    """Data-dependent initialisation (Glow's ActNorm) on 512 training images drawn with ``seed``; in a group
    each rank passes its rows and the statistics are all-reduced, so every rank gets one process's init."""
    init = train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:512].to(dev)]
    world = distributed.world()
    shard = world.shard(len(init)) if world.size > 1 else None
    with torch.no_grad():
        log_likelihood(model, init if shard is None else shard.rows(init), step_generator(seed, -1, dev), shard)


def training_forward(model: torch.nn.Module, cfg: TrainConfig, dev: torch.device):
    """What a training step calls, ``log_likelihood(model, x, generator, shard)``: wrapped in DDP in a group,
    compiled on CUDA if asked."""
    if distributed.active():
        return ddp.data_parallel(model, dev)
    forward = partial(log_likelihood, model, info=describe(model))
    return torch.compile(forward) if (cfg.compile and dev.type == "cuda") else forward


def batch_loss(forward, batch: torch.Tensor, gen: torch.Generator, dims: int,
               shard: distributed.Shard | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's loss to backpropagate, the whole batch's mean bits/dim). One process: the mean bpd, twice.
    In a group: Σ bpd over this rank's rows · W / B, so that DDP's mean over the ranks is the batch's mean
    gradient, and the batch's mean bpd all-reduced, the same on every rank (for the log and the finite check)."""
    if shard is None:
        loss = bits_per_dim(forward(batch, gen)["log_px"], dims).mean()
        return loss, loss
    bpd = bits_per_dim(forward(shard.rows(batch), gen, shard)["log_px"], dims)
    size = distributed.world().size
    return bpd.sum() * size / shard.total, distributed.all_sum(bpd.sum().detach()) / shard.total
