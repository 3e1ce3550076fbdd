"""Dequantisation and the nats <-> bits/dim conversion: the 8-bit discretisation term lives here only.

A model of continuous x̃ ∈ [0,1)^D gives the discrete 8-bit image x the log-likelihood
    log P(x) ≥ E_u[log p(x̃)] - D·log 256,    x̃ = (x + u) / 256,  u ~ U[0,1)^D,
and bits/dim = -log P(x) / (D·log 2).

Discrete models (PixelCNN, the VAE's discretised likelihood) give log P(x) exactly and need no
dequantisation. The whole pipeline speaks log p(x̃) in nats; a discrete model enters it through
``discrete_to_density_nats``: log p(x̃) := log P(x) + D·log 256, the density that is constant on each
1/256 bin, so the one ``bits_per_dim`` formula returns exactly -log P(x)/(D·log 2) for it.

``log_likelihood`` is the pipeline's one call of a model (empirical.models.contract): uint8 images in, the model's
input made here (dequantised, or the bin centres for a discrete model), log p(x̃) and its parts out.
"""

from __future__ import annotations

import math

import torch

from empirical.io.distributed import Shard
from empirical.models.contract import ModelContractError, ModelInfo, describe, model_dtype

LEVELS = 256


def discretisation_nats(dims: int) -> float:
    """D·log 256: the change of variables from [0,256)^D (unit bins) to [0,1)^D."""
    return dims * math.log(LEVELS)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, shard: Shard | None = None) -> torch.Tensor:
    """x̃ = (x + u) / 256 with u ~ U[0,1); returns a new tensor (the input is never modified).

    The noise is drawn on the generator's device, so it does not depend on where the model runs; with a
    ``shard``, x is the shard's rows of a larger batch and u is drawn for the whole batch, then sliced.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"dequantize expects uint8 images, got {x.dtype}")
    device = generator.device if generator is not None else x.device
    shape = x.shape if shard is None else (shard.total, *x.shape[1:])
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    return (x.to(dtype) + (u if shard is None else shard.rows(u)).to(x.device)) / LEVELS


def discrete_to_density_nats(log_p_discrete: torch.Tensor, dims: int) -> torch.Tensor:
    """log p(x̃) = log P(x) + D·log 256 for a discrete model (no dequantisation noise, exact)."""
    return log_p_discrete + discretisation_nats(dims)


def bits_per_dim(log_px_nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """bpd = -(log p(x̃) - D·log 256) / (D·log 2) for log p(x̃) in nats per image on [0,1)^D."""
    return -(log_px_nats - discretisation_nats(dims)) / (dims * math.log(2))


def discrete_log_likelihood(log_px_nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """log P(x) in nats of the 8-bit image: log p(x̃) - D·log 256."""
    return log_px_nats - discretisation_nats(dims)


def bpd_to_nats(bpd: float, dims: int) -> float:
    """Inverse of ``bits_per_dim``: log p(x̃) in nats per image."""
    return -bpd * dims * math.log(2) + discretisation_nats(dims)


def nats_gap_to_bpd(gap_nats: float, dims: int) -> float:
    """A likelihood gap E_q[log p] - E_p[log p] (nats/image) as bpd(p) - bpd(q) = gap / (D·log 2).

    Same sign convention in both units: positive means q gets the higher likelihood.
    """
    return gap_nats / (dims * math.log(2))


def quantize(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit image x = ⌊256·x̃⌋ (clipped to 0..255) of x̃ ∈ [0,1)^D: what a discrete model evaluates."""
    return torch.floor(x * LEVELS).clamp_(0, LEVELS - 1).to(torch.uint8)


def bin_centres(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x̃ = (x + ½)/256: the noise-free input of a discrete model (its density is constant on each bin)."""
    return (x.to(dtype) + 0.5) / LEVELS


def log_likelihood(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator | None = None,
                   shard: Shard | None = None, info: ModelInfo | None = None) -> dict[str, torch.Tensor]:
    """log p(x̃) in nats per image (``log_px``) and the model's parts, for uint8 images ``x`` (``shard``'s rows of a
    larger batch, if given): x̃ = dequantize(x) for a continuous model, the bin centres for a discrete one."""
    info = info or describe(model)
    dtype = model_dtype(model)
    x_in = bin_centres(x, dtype) if info.discrete else dequantize(x, generator, dtype, shard)
    kwargs = {}
    if info.stochastic:
        kwargs["generator"] = generator
        if info.shardable:
            kwargs["shard"] = shard
    method = "log_prob_parts" if info.parts else "log_prob"
    if type(model).__module__.startswith("empirical."):  # our families: their errors are ours, with tracebacks
        out = getattr(model, method)(x_in, **kwargs)
    else:
        try:
            out = getattr(model, method)(x_in, **kwargs)
        except Exception as err:  # an outside model's failure becomes one line that names it
            raise ModelContractError(f"{info.name}.{method} raised {type(err).__name__}: "
                                     f"{str(err).splitlines()[0][:300] if str(err) else ''}") from err
    return checked_output(out if info.parts else {"log_px": out}, info, method, len(x_in), x_in.dtype)


def checked_output(out: object, info: ModelInfo, method: str, n: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A model's output, checked against the contract: ``log_px`` a floating tensor of shape (n,) (cast to the
    input's dtype), else a ModelContractError naming the model and what it returned."""
    log_px = out.get("log_px") if isinstance(out, dict) else None
    what = f"{type(log_px).__name__}" + (f" of shape {tuple(log_px.shape)} and dtype {log_px.dtype}"
                                          if torch.is_tensor(log_px) else "")
    if not torch.is_tensor(log_px) or tuple(log_px.shape) != (n,) or not log_px.is_floating_point():
        raise ModelContractError(f"{info.name}.{method} returned {what} for {n} images; the contract asks for a "
                                 f"floating-point tensor of shape ({n},): one log p(x̃) in nats per image")
    return {**out, "log_px": log_px.to(dtype)}
