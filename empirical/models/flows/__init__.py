"""Normalising flows: Glow's layers and the multi-scale model."""

from empirical.models.flows.glow import Glow, GlowConfig

__all__ = ["Glow", "GlowConfig"]
