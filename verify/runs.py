"""Trained models cached by what made them (train one into the runs folder, or reuse it when it is finished), and
the provenance every result names: command, commit, device, torch, start and wall-clock."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from empirical.data.imageset import ImageSet, training_digest
from empirical.data.sources import slug
from empirical.io import distributed
from empirical.io.provenance import device_description, portable_path
from empirical.training.checkpoint import Checkpoint, code_version, reusable, seal
from empirical.training.loading import model_from_checkpoint
from empirical.training.presets import Preset
from empirical.training.shipped import Shipped, available, find
from empirical.training.trainer import CHECKPOINT, train

if TYPE_CHECKING:
    from verify.results import Provenance

log = logging.getLogger(__name__)

BACKGROUND_MU = 0.2  # Ren et al.'s perturbation rate for the background model, within their 0.1–0.3
ENSEMBLE = 5  # K models for WAIC, as in Choi et al.


def run_name(train_set: ImageSet, test_set: ImageSet, model_name: str, preset: Preset) -> str:
    """IN-MODEL-PRESET[-splitfixed][-bgMU]-seedN-CODEHASH-DATAHASH: every setting that changes the trained model,
    the training code, and the content of the training and test images."""
    tags = "-splitfixed" if getattr(preset.model, "split_prior", "learned") == "fixed" else ""
    tags += f"-bg{preset.train.perturb:g}" if preset.train.perturb else ""
    return (f"{slug(train_set.source)}-{model_name}-{preset.name}{tags}-seed{preset.train.seed}-{code_version()}"
            f"-{training_digest(train_set, test_set)[:12]}")


def cached_model(train_set: ImageSet, test_set: ImageSet, model_name: str, preset: Preset, device: torch.device,
                 runs_dir: Path, *, command: str | None = None) -> Path:
    """The checkpoint of ``model_name`` trained on ``train_set`` with ``preset`` in ``runs_dir/models``: reused when
    finished, else trained or resumed (waiting for another process that is training it). The folder's name holds
    the images' content digest, so changed data are never given an old model. Only a checkpoint proven corrupt is
    moved aside (renamed, never deleted); an unreadable one is an error."""
    run_dir = Path(runs_dir) / "models" / run_name(train_set, test_set, model_name, preset)
    ckpt = run_dir / CHECKPOINT
    if reusable(ckpt, preset.train.steps) is not None:
        log.info("reusing trained model %s", ckpt)
        return ckpt
    log.info("training %s on %s (%d steps) into %s", model_name, train_set.name, preset.train.steps, run_dir)
    train(train_set, test_set, model_name, preset, run_dir, device=str(device), resume=True, wait_for_lock=True,
          command=command)
    if distributed.world().main:
        seal(ckpt)
    return ckpt


def provenance(start: Provenance, device: torch.device) -> dict:
    """results.json's ``provenance``: what produced the numbers (the command, and the commit read when it started),
    where, and how long it took."""
    return {"command": start.command, "commit": start.commit, "device": device_description(device),
            "torch": torch.__version__, "started": start.started, "seconds": time.time() - start.t0}


def extra_models(train_set: ImageSet, test_set: ImageSet, model_name: str, preset: Preset, device: torch.device,
                 runs_dir: Path, *, seed: int, command: str, k: int = ENSEMBLE,
                 retrain: bool = False) -> tuple[Checkpoint, list[Checkpoint]]:
    """For the likelihood ratio and WAIC: the background model (``preset`` with perturbation μ = BACKGROUND_MU) and
    the ensemble's k − 1 other members (seeds seed+1 …), each found like the main model (member 0): shipped
    weights, else trained or reused from ``runs_dir``."""
    from empirical.training.presets import get_preset

    split = getattr(preset.model, "split_prior", None)

    def model_for(p: Preset) -> Checkpoint:
        ckpt = trained_model(train_set, test_set, model_name, p, device, runs_dir, command=command, retrain=retrain)
        return ckpt._replace(model=ckpt.model.to(device))

    background = model_for(get_preset(preset.name, model_name, preset.model.shape, seed=seed, perturb=BACKGROUND_MU,
                                      split_prior=split))
    members = [model_for(get_preset(preset.name, model_name, preset.model.shape, seed=seed + i, split_prior=split))
               for i in range(1, k)]
    return background, members


def origin_text(model: Checkpoint | torch.nn.Module) -> str:
    """Where a model came from, in one line for a report: how its shipped weights were made, a checkpoint's path, or
    an outside module's class."""
    if not isinstance(model, Checkpoint):
        return f"{type(model).__name__} (passed in)"
    name = model.payload.get("shipped")
    if not name:
        return portable_path(model.path)
    path = Path(model.path).resolve()
    shipped = next((s for s in available() if s.name == name and s.weights.resolve() == path), None)
    if shipped:
        return shipped.describe()
    # weights with a card beside them but not the shipped file: said from their own card, whose SHA-256 was checked
    # against the bytes evaluated
    return Shipped(name, model.payload, Path(model.path)).describe(f"weights at {portable_path(model.path)}, not "
                                                                   f"shipped ones:")


def extra_origins(background: Checkpoint | torch.nn.Module | None, ensemble: list) -> dict:
    """results.json's ``extra_model_sources``: the origin of the background model and of each other ensemble member."""
    return {k: [origin_text(m) for m in v] for k, v in
            (("background", [] if background is None else [background]), ("ensemble", list(ensemble))) if v}


def trained_model(train_set: ImageSet, test_set: ImageSet, model_name: str, preset: Preset, device: torch.device,
                  runs_dir: Path, *, command: str, retrain: bool = False) -> Checkpoint:
    """The model of this training run: the shipped weights when they are exactly its (empirical.shipped) and
    ``retrain`` is not asked for, else the cached checkpoint in ``runs_dir`` (trained when missing)."""
    shipped = None if retrain else find(train_set, test_set, model_name, preset)
    if shipped is not None:
        log.info("using the %s", shipped.describe())
        return shipped.load()
    return model_from_checkpoint(cached_model(train_set, test_set, model_name, preset, device, runs_dir,
                                              command=command))
