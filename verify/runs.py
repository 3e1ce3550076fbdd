"""Trained models cached by what made them (train one into the runs folder, or reuse it when it is finished), and
the provenance every result names: command, commit, device, torch, start and wall-clock."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from empirical import distributed
from empirical.checkpoint import CorruptCheckpoint, code_version, load_checkpoint
from empirical.presets import Preset
from empirical.train import CHECKPOINT, train

REPO = Path(__file__).resolve().parent.parent


def run_name(dataset: str, model_name: str, preset: Preset) -> str:
    """IN-MODEL-PRESET[-splitfixed][-bgMU]-seedN-CODEHASH: every setting that changes the trained model."""
    tags = "-splitfixed" if getattr(preset.model, "split_prior", "learned") == "fixed" else ""
    tags += f"-bg{preset.train.perturb:g}" if preset.train.perturb else ""
    return f"{dataset}-{model_name}-{preset.name}{tags}-seed{preset.train.seed}-{code_version()}"


def cached_model(dataset: str, model_name: str, preset: Preset, device: torch.device, runs_dir: Path, *,
                 data_dir: str | None = None, allow_nonstandard: bool = False, command: str | None = None) -> Path:
    """The checkpoint of ``model_name`` trained on ``dataset`` with ``preset`` in ``runs_dir/models``: reused when
    finished, else trained or resumed (waiting for another process that is training it). Only a checkpoint proven
    corrupt is moved aside (renamed, never deleted); an unreadable one is an error."""
    run_dir = Path(runs_dir) / "models" / run_name(dataset, model_name, preset)
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        try:
            if load_checkpoint(ckpt)["step"] >= preset.train.steps:
                print(f"reusing trained model {ckpt}", file=sys.stderr)
                return ckpt
        except CorruptCheckpoint as err:
            aside = ckpt.with_name(f"{ckpt.name}.corrupt-{dt.datetime.now():%Y%m%d-%H%M%S}")
            os.replace(ckpt, aside)
            print(f"warning: {err}; moved it aside to {aside} and training again", file=sys.stderr)
    print(f"training {model_name} on {dataset} ({preset.train.steps} steps) into {run_dir}", file=sys.stderr)
    train(dataset, model_name, preset, run_dir, data_dir=data_dir, device=str(device), resume=True,
          allow_nonstandard=allow_nonstandard, wait_for_lock=True, command=command)
    return ckpt


def device_description(device: torch.device) -> str:
    """e.g. ``CPU x86_64 (2 threads)``, ``NVIDIA H100 (CUDA)``; under torchrun ``… × 4 ranks``."""
    ranks = f" × {distributed.world().size} ranks" if distributed.active() else ""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA){ranks}"
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads){ranks}"


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(command: str, device: torch.device, started: str, t0: float) -> dict:
    """results.json's ``provenance``: what produced the numbers, where, and how long it took (``t0`` from time.time)."""
    return {"command": command, "commit": git_commit(), "device": device_description(device),
            "torch": torch.__version__, "started": started, "seconds": time.time() - t0}
