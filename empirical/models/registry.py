"""The project's model families and how to build each from its config (saved beside every checkpoint).

Every model meets the density-model contract (empirical.models.contract): ``log_prob(x̃)`` in nats of x̃ ∈ [0,1)^D,
and what it declares about itself, so one trainer, evaluator and report serve them and outside models alike.
``cvglow`` is a configuration of ``glow`` (additive couplings, fixed N(0, σ_ψ²) top prior), not a family.
"""

from __future__ import annotations

import torch
from torch import nn

from empirical.io.errors import CheckpointError
from empirical.models.flows import Glow, GlowConfig
from empirical.models.pixelcnn import PixelCNN, PixelCNNConfig
from empirical.models.vae import VAE, VAEConfig

FAMILIES: dict[str, tuple[type, type]] = {
    "glow": (GlowConfig, Glow),
    "pixelcnn": (PixelCNNConfig, PixelCNN),
    "vae": (VAEConfig, VAE),
}
VARIANTS: dict[str, tuple[str, dict]] = {  # model name -> (family, the config fields that make it)
    "cvglow": ("glow", {"coupling": "additive", "prior": "fixed"}),
}
MODELS = ("glow", "cvglow", "pixelcnn", "vae")
FLOWS = ("glow", "cvglow")


def family_of(name: str) -> str:
    """The family that builds model ``name`` (``cvglow`` → ``glow``)."""
    if name not in MODELS:
        raise CheckpointError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return VARIANTS.get(name, (name, {}))[0]


def model_config(name: str, config: dict | object) -> object:
    """The config object of model ``name`` from itself or its ``to_dict()`` (also read back from JSON, lists for
    tuples); a config that contradicts the name (an affine-coupling ``cvglow``) is refused."""
    if isinstance(config, dict):
        config = FAMILIES[family_of(name)][0](**config)
    wrong = {k: getattr(config, k) for k, v in VARIANTS.get(name, ("", {}))[1].items() if getattr(config, k) != v}
    if wrong:
        raise CheckpointError(f"{name} means {VARIANTS[name][1]}, but the config has {wrong}")
    return config


def build_model(name: str, config: dict | object) -> nn.Module:
    """A fresh model ``name`` from its config object or its ``to_dict()`` (see ``model_config``)."""
    return FAMILIES[family_of(name)][1](model_config(name, config))


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold NaN or ±inf."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]

