"""What every result names about where it was made: the git commit of the code and the device, in words."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from empirical import distributed

REPO = Path(__file__).resolve().parent.parent


def device_description(device: torch.device) -> str:
    """e.g. ``CPU x86_64 (2 threads)``, ``NVIDIA H100 (CUDA)``; under torchrun ``… × 4 ranks``."""
    ranks = f" × {distributed.world().size} ranks" if distributed.active() else ""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA){ranks}"
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads){ranks}"


def git_commit() -> str:
    """HEAD, with ``-dirty`` when tracked files differ from it. A copy of a checkout without ``.git`` (the GPU
    machine's) takes ``$DGM_OOD_COMMIT``, set by whoever made the copy, marked ``(declared)``; else ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        declared = os.environ.get("DGM_OOD_COMMIT", "").strip()
        return f"{declared} (declared)" if declared else "unknown"
