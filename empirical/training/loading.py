"""A trained model from a file: a dgm-ood checkpoint (``torch.load(weights_only=True)``) or shipped weights
(``NAME.safetensors`` beside its card ``NAME.json``), rebuilt and checked."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from empirical.io.errors import CheckpointError
from empirical.models.registry import build_model, non_finite_tensors
from empirical.training.checkpoint import Checkpoint, load_checkpoint


def _is_shipped(path: Path) -> bool:
    return path.suffix == ".safetensors" and path.with_suffix(".json").is_file()


def checkpoint_facts(path: Path) -> dict:
    """What a checkpoint says about its model (family, model_config, training) without building it: the payload, or
    the card of shipped weights (``NAME.safetensors`` beside ``NAME.json``)."""
    path = Path(path)
    if _is_shipped(path):
        try:
            return json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path.with_suffix('.json')} is not a readable card of shipped weights ({err})") \
                from err
    return load_checkpoint(path)


def model_from_checkpoint(path: Path) -> Checkpoint:
    """Rebuild the model of a checkpoint in eval mode; returns (model, payload, path). Refuses non-finite weights.
    Shipped weights (``empirical/weights/NAME.safetensors`` beside their card) are read through empirical.shipped."""
    path = Path(path)
    if _is_shipped(path):
        from empirical.training.shipped import Shipped

        try:
            return Shipped(path.stem, json.loads(path.with_suffix(".json").read_text()), path).load()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path} with {path.with_suffix('.json').name} is not a card of shipped weights "
                                  f"({type(err).__name__}: {err})") from err
    payload = load_checkpoint(path)
    try:
        model = build_model(payload["model"], payload["model_config"])
    except (TypeError, KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has a model config the current code cannot build: {err}") from err
    state = payload["model_state"]
    if not isinstance(state, dict) or set(state) != set(model.state_dict()) or any(
            tuple(v.shape) != tuple(state[k].shape) for k, v in model.state_dict().items()):
        raise CheckpointError(_mismatch(path, model.state_dict(), state if isinstance(state, dict) else {}))
    bad = non_finite_tensors(state)
    if bad:
        n_bad = sum(int((~torch.isfinite(state[k])).sum()) for k in bad)
        total = sum(v.numel() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({n_bad} of {total} values are NaN or "
                              f"inf, in {len(bad)} tensors, first {bad[0]}); it cannot give a likelihood")
    model.load_state_dict(state)
    return Checkpoint(model.eval(), payload, Path(path))


def _mismatch(path: Path, ours: dict, theirs: dict) -> str:
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [k for k in ours if k in theirs and tuple(ours[k].shape) != tuple(theirs[k].shape)]
    parts = [f"{len(v)} {what} (first {v[0]}{shape})" for v, what, shape in (
        (missing, "tensors missing", ""), (unexpected, "unexpected tensors", ""),
        (shapes, "shapes differ", f": {tuple(theirs[shapes[0]].shape)} vs {tuple(ours[shapes[0]].shape)}"
         if shapes else "")) if v]
    return f"checkpoint {path} does not match the model its config describes: " + "; ".join(parts)

