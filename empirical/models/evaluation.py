"""Exact per-image bits/dim of a model on uint8 images, with the parts it declares (density, volume, latents):
``evaluate`` batches, shards over torchrun ranks and checks that every value is finite."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from empirical.io import distributed
from empirical.io.distributed import Shard
from empirical.io.errors import DataError, DgmOodError
from empirical.models.contract import ModelContractError, describe, model_device, model_dtype
from empirical.models.flows.glow import Glow
from empirical.models.likelihood import bits_per_dim, dequantize, log_likelihood


@dataclass
class Evaluation:
    """Per-image results (float64): log_px = log p(x̃) on [0,1)^D in nats, and the model's parts (Glow: ``density`` +
    ``volume`` = log_px, the terms ``latent_*`` in nats and the squared latent norms ``norm_*``; VAE: ``elbo``, a
    lower bound; PixelCNN: none)."""

    log_px: np.ndarray
    parts: dict[str, np.ndarray]
    dims: int

    @property
    def bpd(self) -> np.ndarray:
        return bits_per_dim(self.log_px, self.dims)

    def summary(self) -> dict:
        """Means and standard errors of bpd, log p(x̃) and each part."""
        return {"n": len(self.log_px), "bpd": mean_stderr(self.bpd), "log_px_nats": mean_stderr(self.log_px),
                **{part_key(k): mean_stderr(v) for k, v in self.parts.items()}}


def mean_stderr(v: np.ndarray) -> dict[str, float]:
    """The mean and its standard error s/√n (0 for one value)."""
    n = len(v)
    return {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0}


def part_key(name: str) -> str:
    """How a part is named in summaries and files: ``density_nats``, …; squared norms keep their name."""
    return name if name.startswith("norm_") else f"{name}_nats"


class NonFiniteLikelihood(DgmOodError):
    """A model gave NaN or ±inf as the log-likelihood of an image: there is no number to report."""


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: np.ndarray | torch.Tensor, *, batch_size: int = 500, seed: int = 0,
             device: torch.device | str | None = None, label: str = "images") -> Evaluation:
    """Evaluate uint8 images N×C×H×W with any model meeting empirical.models.contract; any noise (dequantisation, IWAE
    samples) comes from a fixed seed. A non-finite log-likelihood is an error naming how many of the ``label``.

    In a torchrun group the batches are shared out round-robin and gathered in order on every rank: the
    per-image arrays equal one process's (a stochastic model whose log_prob takes no ``shard`` is evaluated whole
    on every rank instead). The caller's array is never modified (each batch is copied).
    """
    info = describe(model)
    images = torch.as_tensor(images)
    if images.dim() != 4 or tuple(images.shape[1:]) != info.shape:
        raise DataError(f"{label} are {'×'.join(map(str, images.shape[1:]))} but the model takes "
                        f"{'×'.join(map(str, info.shape))}")
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    world = distributed.world()
    sharded = world.size > 1 and (not info.stochastic or info.shardable)
    mine: dict[int, dict[str, torch.Tensor]] = {}  # batch index → this rank's results
    try:
        for b, start in enumerate(range(0, len(images), batch_size)):
            batch = images[start: start + batch_size]
            if not sharded:
                result = log_likelihood(model, batch.to(device), gen, info=info)
            else:  # round-robin batches; the others' noise is drawn too (rows 0..0), keeping the stream in step
                owned = b % world.size == world.rank
                shard = Shard(0, len(batch) if owned else 0, len(batch))
                result = log_likelihood(model, shard.rows(batch).to(device), gen, shard, info)
                if not owned:
                    continue
            mine[b] = {k: v.double().cpu() for k, v in result.items()}
    finally:
        model.train(was_training)
    batches = {b: r for part in (distributed.gather(mine) if sharded else [mine]) for b, r in part.items()}
    cat = {k: torch.cat([batches[b][k] for b in sorted(batches)]).numpy() for k in batches.get(0, {})}
    log_px = cat.pop("log_px", np.zeros(0))
    bad = int((~np.isfinite(log_px)).sum())
    if bad:
        raise NonFiniteLikelihood(f"{info.name} gives a non-finite log-likelihood to {bad} of {len(log_px)} {label}: "
                                  f"there is no number to report (an overflowing model?)")
    return Evaluation(log_px, cat, info.dims)


def require_splits(model: torch.nn.Module) -> None:
    """A clear error unless ``model`` is a flow with at least one split prior."""
    if not isinstance(model, Glow) or not len(model.splits):
        raise DgmOodError(f"split-prior statistics need a flow with at least one split (glow, cvglow with ≥ 2 "
                          f"levels), not {type(model).__name__}")


@torch.no_grad()
def split_prior_stats(model: Glow, images: np.ndarray | torch.Tensor, *, batch_size: int = 500, seed: int = 0,
                      ) -> dict[str, np.ndarray]:
    """Per image, for every split i of a flow: the smallest log σ_i(z_keep) of its conditional prior and the largest
    ((z_out − μ_i)/σ_i)², on the same dequantised x̃ as ``evaluate`` with the same seed (see ``Split.prior_stats``)."""
    require_splits(model)
    device, dtype = model_device(model), model_dtype(model)
    gen = torch.Generator().manual_seed(seed)
    images = torch.as_tensor(images)
    stats: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        batch_stats: dict[str, torch.Tensor] = {}
        model.encode(dequantize(images[start: start + batch_size].to(device), gen, dtype), batch_stats)
        for k, v in batch_stats.items():
            stats.setdefault(k, []).append(v.double().cpu())
    return {k: torch.cat(v).numpy() for k, v in stats.items()}


def contract_checks(model: torch.nn.Module, images: np.ndarray, *, seed: int = 0,
                    device: torch.device | str | None = None) -> list[dict]:
    """Cheap checks of an outside model on a few images, beyond what the contract's types say: the same images and
    noise give the same log p (else a ModelContractError: none of its numbers could be reproduced); log p has the
    scale of nats per image (bits/dim or a mean per dimension, read as nats, put every image within 0.1 bits/dim of
    the uniform density's 8: |log p| < 0.1·D·log 2); it varies across images. Returns each check with whether it
    passed."""
    first = evaluate(model, images, seed=seed, device=device, label="contract-check images")
    again = evaluate(model, images, seed=seed, device=device, label="contract-check images")
    name = type(model).__name__
    if not np.allclose(first.log_px, again.log_px, rtol=1e-5, atol=1e-4):
        raise ModelContractError(f"{name}.log_prob gives different values for the same images and the same noise "
                                 f"(largest difference {np.abs(first.log_px - again.log_px).max():.3g} nats): draw "
                                 f"randomness from the generator it is given, or none")
    top = float(np.abs(first.log_px).max())
    return [
        {"check": "the same log p for the same images and noise", "passed": True,
         "detail": f"{len(images)} images evaluated twice"},
        {"check": "log p in nats per image", "passed": top >= 0.1 * first.dims * math.log(2),
         "detail": f"largest |log p| {top:.4g} nats for D = {first.dims}; below 0.1·D·log 2 every image is within "
                   f"0.1 bits/dim of the uniform density, as bits/dim or a mean per dimension read as nats would be"},
        {"check": "log p varies across images", "passed": bool(np.ptp(first.log_px) > 0),
         "detail": f"spread {float(np.ptp(first.log_px)):.4g} nats over {len(images)} images"},
    ]
