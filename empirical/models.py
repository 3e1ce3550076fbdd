"""The model families and how to build each from its config (saved beside every checkpoint).

Every model maps uint8 images to ``log_likelihood(x, generator) -> {"log_px": ..., parts...}`` in nats of
x̃ ∈ [0,1)^D (see empirical.likelihood), so one trainer, evaluator and report serve them all.
"""

from __future__ import annotations

from torch import nn

from empirical.errors import CheckpointError
from empirical.flows import Glow, GlowConfig
from empirical.pixelcnn import PixelCNN, PixelCNNConfig
from empirical.vae import VAE, VAEConfig

FAMILIES: dict[str, tuple[type, type]] = {
    "glow": (GlowConfig, Glow),
    "cvglow": (GlowConfig, Glow),
    "pixelcnn": (PixelCNNConfig, PixelCNN),
    "vae": (VAEConfig, VAE),
}
MODELS = tuple(FAMILIES)
FLOWS = ("glow", "cvglow")


def build_model(family: str, config: dict | object) -> nn.Module:
    """A fresh model of ``family`` from its config object or its ``to_dict()``."""
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(MODELS)}")
    config_cls, model_cls = FAMILIES[family]
    if isinstance(config, dict):
        config = config_cls(**config)
    return model_cls(config)
