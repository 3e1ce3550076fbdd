"""Atomic checkpoints (temp file + rename) with hyperparameters saved beside them as JSON."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from empirical.errors import CheckpointError
from empirical.models import build_model

FORMAT = 1
_PACKAGE = Path(__file__).resolve().parent


def code_version() -> str:
    """Hash of the model and training code: a cached checkpoint is reused only if it matches."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    _atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: a crash never leaves half a file."""
    _atomic_write(Path(path), lambda f: torch.save({"format": FORMAT, **payload}, f))


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's payload, or a CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types on corrupt files
        raise CheckpointError(f"corrupt checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model_state" not in payload:
        raise CheckpointError(f"{path} is not a dgm-ood checkpoint (format {FORMAT})")
    return payload


def model_from_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a checkpoint in eval mode; returns (model, payload)."""
    payload = load_checkpoint(path)
    try:
        model = build_model(payload["model"], payload["model_config"])
        model.load_state_dict(payload["model_state"])
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit the current model code: {err}") from err
    return model.eval(), payload
