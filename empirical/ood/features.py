"""What the detectors read from a model: per-image evaluations (bits/dim, log p and the model's parts), made once per
image set and shared by every detector built on the same ``ModelPass``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from empirical.data.imageset import as_image_set
from empirical.io.errors import DgmOodError
from empirical.models.contract import describe, model_device
from empirical.models.evaluation import Evaluation, evaluate

STATISTICS_LEFT_OUT = ("density",)  # log p minus the volume: it would count log p twice in DoSE


def images_of(obj: object) -> np.ndarray:
    """uint8 images N×C×H×W from an ImageSet, an array, a tensor or a torch Dataset (``as_image_set``)."""
    return as_image_set(obj, "images").images


def content_key(images: np.ndarray) -> str:
    """SHA-256 of the images' shape and bytes: two arrays with the same content share one evaluation."""
    h = hashlib.sha256(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


class Memo:
    """Per-image results of one function of the images, memoised by content."""

    def __init__(self, compute: Callable[[np.ndarray], object]) -> None:
        self.compute, self.done = compute, {}

    def __call__(self, images: np.ndarray) -> object:
        key = content_key(images)
        if key not in self.done:
            self.done[key] = self.compute(images)
        return self.done[key]

    def remember(self, images: np.ndarray, value: object) -> None:
        """Record a result already computed elsewhere (it must be ``compute(images)``)."""
        self.done[content_key(images)] = value


class ModelPass:
    """``model`` evaluated on image sets (``evaluate`` with a fixed ``seed``), each set once: the same images give the
    same dequantisation noise and so the same numbers, however many detectors ask."""

    def __init__(self, model: nn.Module, *, seed: int = 0, device: torch.device | str | None = None) -> None:
        self.model, self.seed = model, seed
        self.device = torch.device(device) if device is not None else model_device(model)
        self.dims = describe(model).dims
        self.evaluations = Memo(lambda x: evaluate(self.model.to(self.device), x, seed=self.seed, device=self.device,
                                                   label=f"{len(x)} images"))

    def __call__(self, images: object) -> Evaluation:
        return self.evaluations(images_of(images))

    def remember(self, images: object, evaluation: Evaluation) -> None:
        self.evaluations.remember(images_of(images), evaluation)


def as_pass(model: nn.Module | ModelPass, seed: int = 0) -> ModelPass:
    """A ModelPass of ``model`` (itself when it is one already)."""
    if isinstance(model, ModelPass):
        return model
    if not isinstance(model, nn.Module):
        raise DgmOodError(f"a detector reads a density model (a torch nn.Module with log_prob, see "
                          f"empirical.models.contract) or a ModelPass; got {type(model).__name__}")
    return ModelPass(model, seed=seed)


def statistics(ev: Evaluation) -> dict[str, np.ndarray]:
    """An evaluation's summary statistics for DoSE: log p and the model's parts (latent terms and norms, the volume,
    the ELBO), without the density (log p minus the volume)."""
    return {"log_px": ev.log_px, **{k: v for k, v in ev.parts.items() if k not in STATISTICS_LEFT_OUT}}
