"""Convolutional VAE (Kingma & Welling 2014) with a discretised logistic likelihood on the 256 pixel levels.

log p(x) is estimated by importance sampling (IWAE, Burda et al. 2016):
    log p(x) ≥ IWAE_k = log (1/k) Σ_j p(x|z_j) p(z_j) / q(z_j|x),  z_j ~ q(·|x),
which increases with k towards log p(x); IWAE_1 is a one-sample ELBO. Training maximises the ELBO
(analytic KL); evaluation reports IWAE_k (k = ``eval_samples``) as ``log_px`` and the ELBO as a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from empirical.io.distributed import Shard
from empirical.models.config import MAX_WIDTH, ImageModelConfig, check_images, whole
from empirical.models.likelihood import discrete_to_density_nats, quantize


@dataclass(frozen=True)
class VAEConfig(ImageModelConfig):
    latent: int = 32
    hidden: int = 64
    eval_samples: int = 100  # k of the IWAE estimate used for evaluation
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("latent", "hidden"):
            whole(key, getattr(self, key), 1, MAX_WIDTH)
        whole("eval_samples", self.eval_samples, 1)
        if self.shape[1] % 4 or self.shape[2] % 4:
            raise ValueError(f"VAE needs image sizes divisible by 4, got {self.shape[1]}×{self.shape[2]}")



def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per sub-pixel for x ∈ {0..255}: logistic mass on the bin [x-½, x+½] (edges open to ±∞),
    with pixels mapped to [-1, 1] (bin half-width 1/255), as in PixelCNN++."""
    xs = x.to(mean.dtype) / 127.5 - 1.0
    inv_s = torch.exp(-log_scale)
    plus = inv_s * (xs - mean + 1.0 / 255)
    minus = inv_s * (xs - mean - 1.0 / 255)
    log_cdf_plus = F.logsigmoid(plus)  # for x = 0
    log_one_minus_cdf_minus = -F.softplus(minus)  # for x = 255
    # log(σ(plus) - σ(minus)) computed stably: σ(p) - σ(m) = σ(p)·σ(-m)·(1 - e^{m-p})
    mid = F.logsigmoid(plus) + F.logsigmoid(-minus) + torch.log(-torch.expm1(minus - plus).clamp_max(-1e-12))
    return torch.where(x == 0, log_cdf_plus, torch.where(x == 255, log_one_minus_cdf_minus, mid))


class VAE(nn.Module):
    """log_prob(x̃) is IWAE_k of the 8-bit image ⌊256·x̃⌋ (+ D·log 256) in evaluation, the ELBO in training."""

    discrete, exact, stochastic = True, False, True  # the density-model contract (empirical.models.contract)

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c, h, w = config.shape
        hid = config.hidden
        self.feat = (2 * hid, h // 4, w // 4)
        flat = math.prod(self.feat)
        with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's generator state is left as it was
            torch.manual_seed(config.seed)
            self.enc = nn.Sequential(nn.Conv2d(c, hid, 4, 2, 1), nn.ELU(), nn.Conv2d(hid, 2 * hid, 4, 2, 1),
                                     nn.ELU(), nn.Flatten())
            self.to_q = nn.Linear(flat, 2 * config.latent)
            self.from_z = nn.Linear(config.latent, flat)
            self.dec = nn.Sequential(nn.ELU(), nn.ConvTranspose2d(2 * hid, hid, 4, 2, 1), nn.ELU(),
                                     nn.ConvTranspose2d(hid, 2 * c, 4, 2, 1))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.shape

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(μ, exp(log_std)²)."""
        mu, log_std = self.to_q(self.enc(x.to(self.to_q.weight.dtype) / 127.5 - 1.0)).chunk(2, dim=1)
        return mu, log_std.clamp(-8, 4)

    def decode_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per image (discretised logistic per sub-pixel)."""
        out = self.dec(self.from_z(z).view(-1, *self.feat))
        mean, log_scale = out.chunk(2, dim=1)
        return discretized_logistic_log_prob(x, torch.tanh(mean), log_scale.clamp(-7, 2)).flatten(1).sum(1)

    def iwae(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, chunk: int = 25,
             shard: Shard | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(IWAE_k, mean one-sample ELBO) in nats per image of the 8-bit image, from the same k samples."""
        check_images(x, self.config.shape)
        mu, log_std = self.encode(x)
        weights = []
        for start in range(0, k, chunk):
            kk = min(chunk, k - start)
            eps = _normal((kk, *mu.shape), generator, mu, shard, dim=1)
            z = mu + torch.exp(log_std) * eps  # kk×N×L
            log_q = (-0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            xr = x.expand(kk, *x.shape).reshape(-1, *x.shape[1:])
            log_px_z = self.decode_log_prob(xr, z.reshape(-1, z.shape[-1])).view(kk, -1)
            weights.append(log_px_z + log_pz - log_q)
        w = torch.cat(weights)
        return torch.logsumexp(w, 0) - math.log(k), w.mean(0)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None,
             shard: Shard | None = None) -> torch.Tensor:
        """One-sample reconstruction term with the analytic KL(q(z|x) ‖ N(0, I)), nats per image."""
        check_images(x, self.config.shape)
        mu, log_std = self.encode(x)
        eps = _normal(mu.shape, generator, mu, shard, dim=0)
        kl = 0.5 * (mu**2 + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(1)
        return self.decode_log_prob(x, mu + torch.exp(log_std) * eps) - kl

    def log_prob_parts(self, x: torch.Tensor, generator: torch.Generator | None = None,
                       shard: Shard | None = None) -> dict[str, torch.Tensor]:
        """For x̃ ∈ [0,1)^D, of the 8-bit image ⌊256·x̃⌋, + D·log 256: in training the ELBO as ``log_px``; in evaluation
        IWAE_k as ``log_px`` and the mean one-sample ELBO as ``elbo`` (both bounds on log p)."""
        d, x = self.config.dims, quantize(x)
        if self.training:
            return {"log_px": discrete_to_density_nats(self.elbo(x, generator, shard), d)}
        iwae, elbo = self.iwae(x, self.config.eval_samples, generator, shard=shard)
        return {"log_px": discrete_to_density_nats(iwae, d), "elbo": discrete_to_density_nats(elbo, d)}

    def log_prob(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 shard: Shard | None = None) -> torch.Tensor:
        """``log_prob_parts(x)["log_px"]``."""
        return self.log_prob_parts(x, generator, shard)["log_px"]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n uint8 images: z ~ N(0, T²I), x = the decoder's logistic means, rounded."""
        z = temperature * torch.randn(n, self.config.latent, device=next(self.parameters()).device)
        mean, _ = self.dec(self.from_z(z).view(-1, *self.feat)).chunk(2, dim=1)
        return ((torch.tanh(mean) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor, shard: Shard | None,
            dim: int) -> torch.Tensor:
    """ε ~ N(0, I) of ``shape`` on ``like``'s device and dtype, drawn on the generator's device; with a ``shard``,
    the batch axis ``dim`` holds the shard's rows and ε is drawn for the whole batch, then sliced."""
    full = shape if shard is None else (*shape[:dim], shard.total, *shape[dim + 1:])
    eps = torch.randn(full, generator=generator, dtype=like.dtype,
                      device=generator.device if generator is not None else like.device)
    return (eps if shard is None else shard.rows(eps, dim)).to(like.device)
