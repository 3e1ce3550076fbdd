"""Your own model from the command line: ``--model-factory package.module:function [--weights FILE]`` (and a
classifier to attack: ``--classifier-factory``, ``--classifier-weights``).

``function()`` is called with no arguments and must return a ``torch.nn.Module`` meeting empirical.models.contract.
``--weights`` then loads a state dict into it, strictly (every tensor named and shaped as the model's): a
``.safetensors`` file, or a torch file read with ``weights_only=True`` holding a state dict (or a dict with one under
``state_dict`` or ``model_state``).

Security: naming a factory imports that module and runs that function — your code, with your permissions, as
intended. Only name code you trust. Weight files themselves never run code.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import torch
from torch import nn

from empirical.io.errors import DgmOodError
from empirical.io.provenance import file_record
from empirical.models.contract import describe
from empirical.models.registry import non_finite_tensors


class FactoryError(DgmOodError):
    """A model factory or its weights cannot be used."""


def _build(spec: str, flag: str) -> object:
    """Import ``module`` and call ``function()`` of ``spec`` = "module:function"; errors name ``flag``."""
    module_name, sep, fn_name = spec.partition(":")
    if not sep or not module_name or not fn_name:
        raise FactoryError(f"{flag} takes MODULE:FUNCTION (e.g. examples.bpd_glow:build), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as err:  # the user's module ended the program: say so instead of exiting with its code
        raise FactoryError(f"importing {module_name} for {flag} called sys.exit({err.code!r})") from err
    except Exception as err:  # ImportError, or whatever the user's module raises on import
        raise FactoryError(f"cannot import {module_name} for {flag}: {type(err).__name__}: {err}") from err
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise FactoryError(f"{module_name} has no function {fn_name!r} ({flag} {spec})")
    try:
        return fn()
    except SystemExit as err:
        raise FactoryError(f"{spec}() called sys.exit({err.code!r}) instead of returning a model") from err
    except Exception as err:  # the user's code: one line here; call it in Python to see the traceback
        raise FactoryError(f"{spec}() failed: {type(err).__name__}: {err}") from err


def call_factory(spec: str) -> nn.Module:
    """The density model of ``--model-factory`` ``spec`` = "module:function", checked against the contract."""
    model = _build(spec, "--model-factory")
    describe(model, spec)
    return model


def call_classifier_factory(spec: str) -> nn.Module:
    """The classifier of ``--classifier-factory`` ``spec``: any ``nn.Module`` (its logits are checked when it is
    attacked, verify.attacking)."""
    model = _build(spec, "--classifier-factory")
    if not isinstance(model, nn.Module):
        raise FactoryError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise FactoryError(f"cannot read the weights {path}: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise FactoryError(f"cannot read the weights {path}: {err.strerror or err}") from err
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as err:
        raise FactoryError(f"{path} is not a readable weights file (torch, weights_only): "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    for key in ("state_dict", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise FactoryError(f"{path} holds no state dict (a dict of named tensors)")
    return obj


def load_weights(model: nn.Module, path: Path) -> dict:
    """Load a state dict from ``path`` into ``model`` strictly; returns the file's record (path, bytes, SHA-256)."""
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"weights file {path} does not exist or is not a file")
    state = _state_dict(path)
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    shapes = [k for k in ours if k in state and tuple(ours[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        what = "; ".join(f"{len(v)} {name} (first {v[0]})" for v, name in (
            (missing, "tensors missing"), (unexpected, "unexpected tensors"), (shapes, "shapes differ")) if v)
        raise FactoryError(f"{path} does not fit the model: {what}")
    bad = non_finite_tensors(state)
    if bad:
        raise FactoryError(f"{path} holds non-finite weights (first {bad[0]}); it cannot give a likelihood")
    model.load_state_dict(state)
    return file_record(path).to_dict()
