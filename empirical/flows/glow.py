"""Multi-scale Glow (Kingma & Dhariwal 2018) and constant-volume Glow (additive couplings).

log p(x̃) = log p_z(f(x̃)) + log|det ∂f/∂x̃|  =  density + volume   (nats, x̃ ∈ [0,1)^D)
Per level: squeeze, K × (actnorm → 1×1 conv → coupling), then split (all but the last level).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from empirical.config import ImageModelConfig, check_images
from empirical.flows.layers import FlowStep, Split, Squeeze, gaussian_log_density
from empirical.likelihood import dequantize


@dataclass(frozen=True)
class GlowConfig(ImageModelConfig):
    """Exact hyperparameters of a Glow; saved beside every checkpoint."""

    levels: int
    steps: int
    hidden: int
    coupling: str = "affine"  # "additive" = constant-volume Glow
    lu: bool = True
    prior: str = "learned"  # top prior: "learned" N(μ, σ²) per dimension, or "fixed" N(0, prior_std²)
    prior_std: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        c, h, w = self.shape
        if h % 2**self.levels or w % 2**self.levels:
            raise ValueError(f"{h}×{w} images cannot be squeezed {self.levels} times (need multiples of "
                             f"{2**self.levels})")
        if self.prior not in ("learned", "fixed"):
            raise ValueError(f"prior must be 'learned' or 'fixed', got {self.prior!r}")



class Glow(nn.Module):
    """Glow; ``log_prob_parts(x̃) -> (density, volume)`` in nats per image, ``sample(n, T)``."""

    def __init__(self, config: GlowConfig) -> None:
        super().__init__()
        self.config = config
        gen = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)  # conv weights of the coupling networks
        c, h, w = config.shape
        self.squeeze = Squeeze()
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()
        for i in range(config.levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.levels.append(nn.ModuleList(
                FlowStep(c, config.hidden, config.coupling, config.lu, gen) for _ in range(config.steps)))
            if i < config.levels - 1:
                split = Split(c)
                self.splits.append(split)
                c = split.n_keep
        self.top_shape = (c, h, w)
        if config.prior == "learned":
            self.prior_mean = nn.Parameter(torch.zeros(1, *self.top_shape))
            self.prior_log_std = nn.Parameter(torch.zeros(1, *self.top_shape))
        else:
            self.register_buffer("prior_mean", torch.zeros(1, *self.top_shape))
            self.register_buffer("prior_log_std", torch.full((1, *self.top_shape), math.log(config.prior_std)))

    # ------------------------------------------------------------------------------ density
    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """x̃ -> (latents, log p_z(f(x̃)), log|det ∂f/∂x̃|); latents listed per split, then the top."""
        check_images(x, self.config.shape)
        h = x - 0.5
        density = h.new_zeros(h.shape[0])
        volume = h.new_zeros(h.shape[0])
        zs = []
        for i, steps in enumerate(self.levels):
            h, _ = self.squeeze(h)
            for step in steps:
                h, logdet = step(h)
                volume = volume + logdet
            if i < len(self.splits):
                split = self.splits[i]
                zs.append(h[:, split.n_keep:])
                h, log_pz = split(h)
                density = density + log_pz
        zs.append(h)
        density = density + gaussian_log_density(h, self.prior_mean, self.prior_log_std)
        return zs, density, volume

    def decode(self, zs: list[torch.Tensor | None], temperature: float = 1.0) -> torch.Tensor:
        """Inverse of ``encode``; a ``None`` latent is sampled from its prior at ``temperature``."""
        h = zs[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                h = self.splits[i].inverse(h, zs[i], temperature)
            for step in reversed(self.levels[i]):
                h = step.inverse(h)
            h = self.squeeze.inverse(h)
        return h + 0.5

    def log_prob_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(density, volume) = (log p_z(f(x̃)), log|det ∂f/∂x̃|), nats per image."""
        _, density, volume = self.encode(x)
        return density, volume

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Dequantise uint8 images and return log p(x̃) (``log_px``) with its density and volume parts."""
        dtype = next(self.parameters()).dtype
        density, volume = self.log_prob_parts(dequantize(x, generator, dtype))
        return {"log_px": density + volume, "density": density, "volume": volume}

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x̃) in nats per image, for dequantised x̃ ∈ [0,1)^D."""
        density, volume = self.log_prob_parts(x)
        return density + volume

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n samples x̃ (not clipped) at prior temperature T."""
        mean = self.prior_mean.expand(n, *self.top_shape)
        top = mean + temperature * torch.exp(self.prior_log_std) * torch.randn_like(mean)
        return self.decode([None] * len(self.splits) + [top], temperature)

    # ------------------------------------------------------------------------------ theory
    @property
    def constant_volume(self) -> bool:
        """True for CV-Glow: additive couplings make log|det| independent of x."""
        return self.config.coupling == "additive"

    def linear_path(self) -> Glow:
        """A copy whose coupling networks and split priors output zero: f becomes linear
        (actnorm and 1×1 convs only) and every latent Gaussian with fixed parameters."""
        lin = copy.deepcopy(self).eval()
        for module in lin.modules():
            if hasattr(module, "net"):
                module.net.off = True
        for split in lin.splits:
            for p in split.prior.parameters():
                nn.init.zeros_(p)
        return lin
