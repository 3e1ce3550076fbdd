"""Training the classifier that adversarial examples attack (empirical.models.classifier), with the trainer's
conventions: named presets, a (seed, step) generator for every batch, atomic checkpoints every few hundred steps,
``resume`` continuing bit for bit, shipped weights for exactly the run they were trained for, and a runs-folder cache
keyed by the preset, the code and the images' content whose finished checkpoint is sealed (SHA-256) and checked on
reuse."""

from __future__ import annotations

import hashlib
import json
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
from empirical.io.provenance import command_line, device_description, git_commit
from empirical.models.classifier import ClassifierConfig, SmallCNN, build_classifier, predict
from empirical.training import shipped
from empirical.training.checkpoint import code_version, load_checkpoint, reusable, save_checkpoint, seal
from empirical.training.steps import random_hflip, step_generator

log = logging.getLogger(__name__)
# (architecture, steps of 128 images) by preset and image side: 3,000 steps are 6.4 epochs of FashionMNIST, 8,000 are
# 20 of CIFAR-10 (0.14 s a step on 2 cores)
PRESETS = {"smoke": {28: (dict(width=8, hidden=16), 30), 32: (dict(width=8, hidden=16), 30)},
           "cpu": {28: (dict(width=32, hidden=128), 3000), 32: (dict(width=32, hidden=128), 8000)}}
CLASSIFIER_CODE = ("models/classifier.py", "training/classifier.py", "training/steps.py")
MODEL = shipped.CLASSIFIER  # the classifier's name in checkpoints and shipped cards ("cnn")


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

    def train_config(self) -> dict:
        """What training does (the checkpointing cadence aside), as checkpoints and cards record it."""
        return {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "hflip": self.hflip,
                "seed": self.config.seed}

    def recorded(self) -> dict:
        """The fields a checkpoint or card of this preset's classifier carries."""
        return {"model": MODEL, "preset": self.name, "model_config": self.config.to_dict(),
                "train_config": self.train_config()}


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
                     preset: ClassifierPreset, out_dir: Path, *, resume: bool = True, device: str = "cpu",
                     command: str | None = None) -> tuple[SmallCNN, dict]:
    """Train (or, with ``resume``, continue) the classifier in ``out_dir/last.pt``; returns it and its payload (the
    fields of ``preset.recorded()``, the images' digest, the history and what made it)."""
    ckpt, dev = Path(out_dir) / "last.pt", torch.device(device)
    model = build_classifier(preset.config).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    payload = {"kind": "classifier", "dataset": train.source, **preset.recorded(),
               "data_digest": training_digest(train, test), "step": 0, "history": [], "seconds": 0.0,
               "code_version": code_version(CLASSIFIER_CODE), "commit": git_commit(),
               "command": command or command_line(), "device": device_description(dev)}
    if resume and ckpt.exists():
        found = load_checkpoint(ckpt)
        if any(found.get(k) != payload[k] for k in (*preset.recorded(), "data_digest", "code_version")):
            raise CheckpointError(f"{ckpt} is another classifier (preset, code or images differ); use another folder")
        model.load_state_dict(found.pop("model_state"))
        opt.load_state_dict(found.pop("optimizer_state"))
        payload = found
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


def find_shipped(train: ImageSet, test: ImageSet, preset: ClassifierPreset) -> shipped.Shipped | None:
    """The shipped classifier trained with exactly ``preset`` on these images, if there is one."""
    want = {**preset.recorded(), "data_digest": training_digest(train, test)}
    return next((s for s in shipped.available() if all(s.card.get(k) == v for k, v in want.items())), None)


def load_shipped(found: shipped.Shipped) -> SmallCNN:
    """A shipped classifier, its file checked against the recorded SHA-256 (``Shipped.state``)."""
    model = build_classifier(found.card["model_config"])
    model.load_state_dict(found.state(set(model.state_dict())))
    return model.eval()


def cached_classifier(train: ImageSet, train_labels: np.ndarray, test: ImageSet, test_labels: np.ndarray,
                      preset: ClassifierPreset, runs_dir: Path, *, device: str = "cpu", retrain: bool = False,
                      command: str | None = None) -> tuple[SmallCNN, Path]:
    """The classifier of this preset and these images: the shipped one (unless ``retrain``), else from
    ``runs_dir/classifiers``, reused when finished and sealed, else trained or resumed (``checkpoint.reusable``: one
    that fails its seal is moved aside). Returns it and its file."""
    found = None if retrain else find_shipped(train, test, preset)
    if found is not None:
        log.info("using the shipped classifier %s", found.weights.name)
        return load_shipped(found).to(device), found.weights
    key = hashlib.sha256(json.dumps([preset.recorded(), code_version(CLASSIFIER_CODE)], sort_keys=True).encode())
    run_dir = (Path(runs_dir) / "classifiers" / f"{slug(train.source)}-{MODEL}-{preset.name}-seed{preset.config.seed}-"
               f"{training_digest(train, test)[:12]}-{key.hexdigest()[:8]}")
    ckpt = run_dir / "last.pt"
    payload = reusable(ckpt, preset.steps)
    if payload is not None:
        log.info("reusing the trained classifier %s", ckpt)
        model = build_classifier(preset.config)
        model.load_state_dict(payload["model_state"])
        return model.to(device).eval(), ckpt
    log.info("training the %s classifier on %s (%d steps) into %s", preset.name, train.name, preset.steps, run_dir)
    model, _ = train_classifier(train, train_labels, test, test_labels, preset, run_dir, device=device,
                                command=command)
    seal(ckpt)
    return model, ckpt
