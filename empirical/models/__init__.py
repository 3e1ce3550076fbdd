"""Density models and their one contract: flows (Glow, CV-Glow), PixelCNN, the VAE, the registry that builds them,
the contract any outside model meets, the your-model factory, and likelihood (dequantisation, nats ↔ bits/dim,
per-image evaluation)."""
