"""The density-model contract: what a model must offer to go through the pipeline, and what it may declare.

Required
    ``log_prob(x)``   the log-density log p(x̃) in nats per image (a tensor of N) of dequantised images
                      x̃ = (x + u)/256 ∈ [0, 1)^D, given as a float tensor N×C×H×W on the model's device;
    ``image_shape``   the (C, H, W) it models (our own models also answer through ``config.shape``).

Optional declarations (attributes or properties; the default in brackets)
    ``discrete``        [False] log p is constant on each 1/256 bin: log P(x) + D·log 256 of the 8-bit image
                        (PixelCNN, a VAE with a discretised likelihood). Such a model is given the bin centres
                        (x + ½)/256 instead of noisy x̃; the bits/dim are then exactly −log₂ P(x)/D.
    ``exact``           [True] log_prob is log p itself, not a bound or an estimate (a VAE's IWAE: False).
    ``stochastic``      [False] log_prob draws random numbers: it is called with ``generator=`` (a
                        ``torch.Generator``), and with ``shard=`` too if its signature has that keyword.
    ``smooth``          [not discrete and not stochastic] log_prob is twice differentiable in x̃: the exact second
                        order, the averaged curvature and the Hessian diagnostics apply.
    ``constant_volume`` [False] a flow whose log|det ∂f/∂x̃| does not depend on x̃ (CV-Glow).
    ``linear_path()``   a copy whose log p is quadratic in x̃ (couplings off, Gaussian latents): with
                        ``constant_volume`` it gives the closed form and the ledger's rows 4–6.
    ``log_prob_parts(x)`` a dict with ``log_px`` (= log_prob) and named parts: ``density`` and ``volume`` (a flow's
                        log p_z(f(x̃)) and log|det ∂f/∂x̃|), ``latent_<name>`` (the density's term per latent; they
                        sum with the volume to log_px), or bounds such as ``elbo``.

Dequantisation is one step outside every model (``empirical.models.likelihood.log_likelihood``), so no model can
forget the −D·log 256 term or add noise twice. The project's own four families meet this contract exactly as
an outside model does. Only ``torch.nn.Module`` models are accepted (the theory copies a model to float64).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch
from torch import nn

from empirical.io.errors import DgmOodError

DECLARATIONS = ("discrete", "exact", "stochastic", "smooth", "constant_volume")


class ModelContractError(DgmOodError):
    """A model does not meet the density-model contract."""


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline knows about a model: its declarations, with the contract's defaults filled in."""

    name: str
    shape: tuple[int, int, int]
    discrete: bool
    exact: bool
    stochastic: bool
    smooth: bool
    constant_volume: bool
    linear_path: bool  # has linear_path()
    parts: bool  # has log_prob_parts()
    shardable: bool  # a stochastic log_prob that takes ``shard=`` (its noise then follows torchrun's slicing)

    @property
    def dims(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


def image_shape(model: object) -> tuple[int, int, int]:
    """The (C, H, W) a model declares, from ``image_shape`` or ``config.shape``."""
    shape = getattr(model, "image_shape", None)
    if shape is None:
        shape = getattr(getattr(model, "config", None), "shape", None)
    try:
        c, h, w = (int(v) for v in shape)  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        raise ModelContractError(f"{type(model).__name__} declares no image shape: give it an image_shape attribute "
                                 f"(C, H, W), e.g. (1, 28, 28)") from err
    if min(c, h, w) < 1:
        raise ModelContractError(f"{type(model).__name__} declares image shape {(c, h, w)}; expected (C, H, W) of "
                                 f"positive sizes (C = 1 for grey images, 3 for RGB)")
    return c, h, w


def describe(model: object, name: str | None = None) -> ModelInfo:
    """The model's declarations, checked against the contract (a ModelContractError names what is missing)."""
    if not isinstance(model, nn.Module):
        raise ModelContractError(f"{type(model).__name__} is not a torch.nn.Module; wrap it in one whose log_prob(x) "
                                 f"returns log p(x̃) in nats (see empirical.models.contract)")
    if not callable(getattr(model, "log_prob", None)):
        raise ModelContractError(f"{type(model).__name__} has no log_prob(x) method (log p of dequantised images "
                                 f"x̃ ∈ [0,1)^D in nats per image; see empirical.models.contract)")
    flags = {}
    for key in DECLARATIONS:
        value = getattr(model, key, None)
        if value is not None and not isinstance(value, bool):
            raise ModelContractError(f"{type(model).__name__}.{key} must be True or False, got {value!r}")
        flags[key] = value
    discrete, stochastic = bool(flags["discrete"]), bool(flags["stochastic"])
    smooth = flags["smooth"] if flags["smooth"] is not None else not (discrete or stochastic)
    method = model.log_prob_parts if callable(getattr(model, "log_prob_parts", None)) else model.log_prob
    shardable = stochastic and "shard" in inspect.signature(method).parameters
    return ModelInfo(name or type(model).__name__, image_shape(model), discrete,
                     True if flags["exact"] is None else flags["exact"], stochastic, smooth,
                     bool(flags["constant_volume"]), callable(getattr(model, "linear_path", None)),
                     callable(getattr(model, "log_prob_parts", None)), shardable)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; the CPU for a model that has none."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point type of the model's parameters; float32 for a model that has none."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32
