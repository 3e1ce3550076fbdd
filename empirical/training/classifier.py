"""Training the classifier that adversarial examples attack (empirical.models.classifier), with the trainer's
conventions: named presets, a (seed, step) generator for every batch, atomic checkpoints every few hundred steps,
``resume`` continuing bit for bit, and a runs-folder cache keyed by the preset and the images' content whose
finished checkpoint is sealed (SHA-256) and checked on reuse."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from empirical.data.imageset import ImageSet, training_digest
from empirical.data.sources import slug
from empirical.io.errors import CheckpointError, DgmOodError
from empirical.models.classifier import ClassifierConfig, SmallCNN, build_classifier, predict
from empirical.training.checkpoint import load_checkpoint, reusable, save_checkpoint, seal
from empirical.training.steps import random_hflip, step_generator

log = logging.getLogger(__name__)
# (architecture, steps of 128 images) by preset and image side: 1,500 steps are 3.2 epochs of FashionMNIST
PRESETS = {"smoke": {28: (dict(width=8, hidden=16), 30), 32: (dict(width=8, hidden=16), 30)},
           "cpu": {28: (dict(width=16, hidden=64), 1500), 32: (dict(width=32, hidden=128), 8000)}}


@dataclass(frozen=True)
class ClassifierPreset:
    """A classifier's architecture and optimisation: Adam at ``lr`` with a cosine decay, ``steps`` batches."""

    name: str
    config: ClassifierConfig
    steps: int
    batch_size: int = 128
    lr: float = 1e-3
    checkpoint_every: int = 500
    hflip: bool = False  # mirror-symmetric photographs (CIFAR) only

    def to_dict(self) -> dict:
        return {"name": self.name, "config": self.config.to_dict(), "steps": self.steps,
                "batch_size": self.batch_size, "lr": self.lr, "hflip": self.hflip}


def classifier_preset(name: str, shape: tuple[int, int, int], *, seed: int = 0, hflip: bool = False,
                      classes: int = 10) -> ClassifierPreset:
    """The ``smoke`` (tests) or ``cpu`` preset for images of ``shape``."""
    if name not in PRESETS:
        raise DgmOodError(f"unknown classifier preset {name!r}; use one of {', '.join(PRESETS)}")
    arch, steps = PRESETS[name][28 if shape[-1] <= 28 else 32]
    return ClassifierPreset(name, ClassifierConfig(tuple(shape), classes=classes, seed=seed, **arch), steps,
                            hflip=hflip)


def _batch(images: torch.Tensor, labels: torch.Tensor, preset: ClassifierPreset, step: int):
    g = step_generator(preset.config.seed, step, torch.device("cpu"))
    idx = torch.randint(0, len(images), (preset.batch_size,), generator=g)
    x = images[idx].float()
    return (random_hflip(x, g) if preset.hflip else x), labels[idx]


def _lr(preset: ClassifierPreset, step: int) -> float:
    return preset.lr * 0.5 * (1 + math.cos(math.pi * step / preset.steps))


def accuracy(classifier: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of ``images`` (uint8 N×C×H×W) the classifier labels correctly."""
    pred = predict(classifier.eval(), torch.from_numpy(images))
    return float((pred.numpy() == np.asarray(labels)).mean())


def train_classifier(train: ImageSet, train_labels: np.ndarray, test: ImageSet, test_labels: np.ndarray,
                     preset: ClassifierPreset, out_dir: Path, *, resume: bool = True,
                     device: str = "cpu") -> tuple[SmallCNN, dict]:
    """Train (or, with ``resume``, continue) the classifier in ``out_dir/last.pt``; returns it and its payload."""
    ckpt, dev = Path(out_dir) / "last.pt", torch.device(device)
    model = build_classifier(preset.config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    digest = training_digest(train, test)
    payload = {"kind": "classifier", "dataset": train.source, "preset": preset.to_dict(), "data_digest": digest,
               "step": 0, "history": [], "seconds": 0.0}
    if resume and ckpt.exists():
        payload = load_checkpoint(ckpt)
        if payload.get("preset") != preset.to_dict() or payload.get("data_digest") != digest:
            raise CheckpointError(f"{ckpt} is another classifier (preset or images differ); use another folder")
        model.load_state_dict(payload.pop("model_state"))
        opt.load_state_dict(payload.pop("optimizer_state"))
    x, y = torch.from_numpy(train.images), torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    t0 = time.time() - payload["seconds"]
    for step in range(payload["step"], preset.steps):
        model.train()
        xb, yb = _batch(x, y, preset, step)
        for group in opt.param_groups:
            group["lr"] = _lr(preset, step)
        loss = F.cross_entropy(model(xb.to(dev)), yb.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if done % preset.checkpoint_every == 0 or done == preset.steps:
            acc, shown = accuracy(model, test.images[:2000], test_labels[:2000]), float(loss.detach())
            payload["history"].append({"step": done, "loss": shown, "test_accuracy": acc,
                                       "seconds": time.time() - t0})
            payload.update(step=done, seconds=time.time() - t0)
            log.info("classifier step %d: loss %.3f, accuracy %.3f on 2,000 test images", done, shown, acc)
            save_checkpoint(ckpt, {**payload, "model_state": model.state_dict(),
                                   "optimizer_state": opt.state_dict()})
    return model.eval(), payload


def cached_classifier(train: ImageSet, train_labels: np.ndarray, test: ImageSet, test_labels: np.ndarray,
                      preset: ClassifierPreset, runs_dir: Path, *, device: str = "cpu") -> tuple[SmallCNN, Path]:
    """The classifier of this preset and these images from ``runs_dir/classifiers``: reused when finished and sealed,
    else trained or resumed (``checkpoint.reusable``: one that fails its seal is moved aside)."""
    run_dir = (Path(runs_dir) / "classifiers" /
               f"{slug(train.source)}-cnn-{preset.name}-seed{preset.config.seed}-{training_digest(train, test)[:12]}")
    ckpt = run_dir / "last.pt"
    payload = reusable(ckpt, preset.steps)
    if payload is not None:
        log.info("reusing the trained classifier %s", ckpt)
        model = build_classifier(preset.config)
        model.load_state_dict(payload["model_state"])
        return model.to(device).eval(), ckpt
    log.info("training the %s classifier on %s (%d steps) into %s", preset.name, train.name, preset.steps, run_dir)
    model, _ = train_classifier(train, train_labels, test, test_labels, preset, run_dir, device=device)
    seal(ckpt)
    return model, ckpt
