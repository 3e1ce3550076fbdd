"""Multi-scale Glow (Kingma & Dhariwal 2018) and constant-volume Glow (additive couplings).

log p(x̃) = log p_z(f(x̃)) + log|det ∂f/∂x̃|  =  density + volume   (nats, x̃ ∈ [0,1)^D)
density = Σ_i log p(z_i | z_keep,i) + log p(z_top): one term per split latent and one for the top latent.
Per level: squeeze, K × (actnorm → 1×1 conv → coupling), then split (all but the last level).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from empirical.models.config import (
    MAX_DEPTH,
    MAX_WIDTH,
    ImageModelConfig,
    check_images,
    choice,
    flag,
    positive,
    whole,
)
from empirical.models.flows.layers import FlowStep, Split, Squeeze, gaussian_log_density


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
    split_prior: str = "learned"  # "learned" conditional N(μ(z), σ(z)²), or "fixed" N(0, prior_std²)
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, most in (("levels", MAX_DEPTH), ("steps", MAX_DEPTH), ("hidden", MAX_WIDTH)):
            whole(key, getattr(self, key), 1, most)
        choice("coupling", self.coupling, ("affine", "additive"))
        flag("lu", self.lu)
        for key in ("prior", "split_prior"):
            choice(key, getattr(self, key), ("learned", "fixed"))
        positive("prior_std", self.prior_std)
        c, h, w = self.shape
        if h % 2**self.levels or w % 2**self.levels:
            raise ValueError(f"{h}×{w} images cannot be squeezed {self.levels} times (need multiples of "
                             f"{2**self.levels})")

    @property
    def paper_class(self) -> bool:
        """Every latent N(0, σ_ψ²): the single Gaussian latent of the paper's derivation."""
        return self.prior == "fixed" and self.split_prior == "fixed"



class Glow(nn.Module):
    """Glow; ``encode(x̃) -> (latents, density terms, volume)`` in nats per image, ``sample(n, T)``."""

    def __init__(self, config: GlowConfig) -> None:
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's generator state is left as it was
            torch.manual_seed(config.seed)  # conv weights of the coupling networks
            self._build(config, torch.Generator().manual_seed(config.seed))

    def _build(self, config: GlowConfig, gen: torch.Generator) -> None:
        c, h, w = config.shape
        self.squeeze = Squeeze()
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()
        for i in range(config.levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.levels.append(nn.ModuleList(
                FlowStep(c, config.hidden, config.coupling, config.lu, gen) for _ in range(config.steps)))
            if i < config.levels - 1:
                split = Split(c, config.prior_std if config.split_prior == "fixed" else None)
                self.splits.append(split)
                c = split.n_keep
        self.top_shape = (c, h, w)
        if config.prior == "learned":
            self.prior_mean = nn.Parameter(torch.zeros(1, *self.top_shape))
            self.prior_log_std = nn.Parameter(torch.zeros(1, *self.top_shape))

    def top_prior(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log σ) of the top latent: learned per dimension, or exactly N(0, prior_std²) (a constant of the
        config, so σ_ψ is the same number in every precision and for every latent)."""
        if self.config.prior == "learned":
            return self.prior_mean, self.prior_log_std
        return like.new_zeros(()), like.new_full((), math.log(self.config.prior_std))

    # ------------------------------------------------------------------------------ density
    def encode(self, x: torch.Tensor, split_stats: dict[str, torch.Tensor] | None = None,
               ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """x̃ -> (latents, density terms, log|det ∂f/∂x̃|); latents listed per split, then the top.

        The density terms are log p(z_i | ·) for ``split1``, ``split2``, … and log p(z_top) for ``top``;
        their sum is log p_z(f(x̃)). A ``split_stats`` dict receives each split's ``Split.prior_stats``
        (``split1_min_log_std``, ``split1_max_residual_sq``, …).
        """
        check_images(x, self.config.shape)
        h = x - 0.5
        volume = h.new_zeros(h.shape[0])
        zs, terms = [], {}
        for i, steps in enumerate(self.levels):
            h, _ = self.squeeze(h)
            for step in steps:
                h, logdet = step(h)
                volume = volume + logdet
            if i < len(self.splits):
                split = self.splits[i]
                zs.append(h[:, split.n_keep:])
                if split_stats is not None:
                    split_stats.update({f"split{i + 1}_{k}": v for k, v in split.prior_stats(h).items()})
                h, terms[f"split{i + 1}"] = split(h)
        zs.append(h)
        terms["top"] = gaussian_log_density(h, *self.top_prior(h))
        return zs, terms, volume

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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.shape

    def log_prob_parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """log p(x̃) (``log_px``) of dequantised x̃ ∈ [0,1)^D in nats per image, its ``density`` and ``volume`` parts,
        the density's terms per latent (``latent_split1``, …, ``latent_top``) and each latent's squared norm
        ``norm_split1``, …, ``norm_top`` (summary statistics for DoSE; not terms of log p)."""
        zs, terms, volume = self.encode(x)
        density = sum(terms.values())
        norms = {f"norm_{k}": z.flatten(1).pow(2).sum(1) for k, z in zip(terms, zs, strict=True)}
        return {"log_px": density + volume, "density": density, "volume": volume,
                **{f"latent_{k}": v for k, v in terms.items()}, **norms}

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x̃) in nats per image, for dequantised x̃ ∈ [0,1)^D."""
        _, terms, volume = self.encode(x)
        return sum(terms.values()) + volume

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n samples x̃ (not clipped) at prior temperature T."""
        like = next(self.parameters())
        mean, log_std = self.top_prior(like)
        top = mean + temperature * torch.exp(log_std) * torch.randn(n, *self.top_shape, dtype=like.dtype,
                                                                    device=like.device)
        return self.decode([None] * len(self.splits) + [top], temperature)

    # ------------------------------------------------------------------------------ theory
    @property
    def constant_volume(self) -> bool:
        """True for CV-Glow: additive couplings make log|det| independent of x."""
        return self.config.coupling == "additive"

    def linear_path(self) -> Glow:
        """A copy whose coupling networks output zero and whose split latents are N(0, σ_ψ²), σ_ψ =
        ``config.prior_std`` (the top prior is kept): f becomes the linear map of the actnorms and 1×1 convs,
        and log p a quadratic in x̃."""
        lin = copy.deepcopy(self).eval()
        for module in lin.modules():
            if hasattr(module, "net"):
                module.net.off = True
        for split in lin.splits:
            split.fix_prior(self.config.prior_std)
        return lin
