"""Fixtures every test module may use."""

from __future__ import annotations

import os

import pytest

from empirical.training.presets import get_preset
from empirical.training.trainer import train
from tests.faults.conftest import write_tiny_idx
from tests.helpers import registry_sets


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict:
    """Tiny FashionMNIST and MNIST in official idx files, and smoke checkpoints of three families trained on the
    FashionMNIST one (read-only for the tests: copy before changing)."""
    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    write_tiny_idx(data, "fashion-mnist", 1)
    write_tiny_idx(data, "mnist", 2)
    os.environ.setdefault("DGM_OOD_CACHE", str(root / "cache"))
    ckpts = {}
    for model in ("cvglow", "glow", "pixelcnn"):
        preset = get_preset("smoke", model, (1, 28, 28), steps=20)
        ckpts[model] = train(*registry_sets("fashionmnist", data), model, preset, root / "models" / model,
                             progress=False).checkpoint
    return {"root": root, "data": data, "ckpt": ckpts}
