"""The classifier that adversarial examples attack: a small CNN on 8-bit images, fed pixel values in [0, 255] (so an
ε-ball of 8/255 is 8 grey levels), returning logits. Any ``nn.Module`` with that contract can take its place."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from empirical.io.errors import DgmOodError
from empirical.models.contract import model_device


@dataclass(frozen=True)
class ClassifierConfig:
    """conv(w)-conv(w)-pool-conv(2w)-conv(2w)-pool-fc(hidden)-fc(classes), 3×3 convolutions, each followed by batch
    normalisation and ReLU; no randomness in the forward pass (in eval mode); ``seed`` initialises the weights."""

    shape: tuple[int, int, int]
    classes: int = 10
    width: int = 32
    hidden: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        c, h, w = self.shape
        if c not in (1, 3) or h % 4 or w % 4:
            raise DgmOodError(f"the classifier takes 1 or 3 channels and sides divisible by 4, got {self.shape}")

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


def _block(c_in: int, c_out: int) -> tuple[nn.Module, ...]:
    """3×3 convolution, batch normalisation, ReLU."""
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()


class SmallCNN(nn.Module):
    """Logits of uint8-scale images x ∈ [0, 255]^(C×H×W) (float), normalised inside to x/255 − ½; attack and score it
    in eval mode (the batch statistics are then fixed)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c, h, w = config.shape
        k = config.width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.features = nn.Sequential(*_block(c, k), *_block(k, k), nn.MaxPool2d(2),
                                          *_block(k, 2 * k), *_block(2 * k, 2 * k), nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * k * (h // 4) * (w // 4), config.hidden), nn.ReLU(),
                                      nn.Linear(config.hidden, config.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x / 255.0 - 0.5))


def build_classifier(config: dict | ClassifierConfig) -> SmallCNN:
    """A SmallCNN from its config (or the config's dict, as a checkpoint or card records it)."""
    if isinstance(config, dict):
        config = ClassifierConfig(**{**config, "shape": tuple(config["shape"])})
    return SmallCNN(config)


@torch.no_grad()
def predict(classifier: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted classes of uint8 (or float pixel-scale) images N×C×H×W, in batches, on the classifier's device."""
    device = model_device(classifier)
    out = [classifier(images[i:i + batch].to(device).float()).argmax(1).cpu() for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
