"""Checkpoints, written atomically (empirical.io.atomic) and read safely: ``torch.load(weights_only=True)`` loads
tensors and plain data only, never code."""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import io
import logging
import os
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, NamedTuple

import torch

from empirical.data.imageset import ImageSet, training_digest
from empirical.io.atomic import atomic_write
from empirical.io.errors import CheckpointError
from empirical.io.provenance import file_sha256
from empirical.io.transfer import MANIFEST_SUFFIX, joined_bytes
from empirical.models.registry import FLOWS, model_config
from empirical.training.presets import Preset, get_preset

log = logging.getLogger(__name__)
FORMAT = 1


_PACKAGE = Path(__file__).resolve().parents[1]  # empirical/


# What decides the weights a training run ends with: the models, their likelihood, the presets and the training
# loop. The data are keyed by their content digest; loading, evaluation, scores and reports do not change weights.
TRAINING_CODE = ("models/flows", "models/registry.py", "models/config.py", "models/pixelcnn.py", "models/vae.py",
                 "models/likelihood.py", "models/contract.py", "training/presets.py", "training/trainer.py",
                 "training/ddp.py", "io/distributed.py")


class CorruptCheckpoint(CheckpointError):
    """The file is there and readable but is not a valid dgm-ood checkpoint (as opposed to unreadable)."""


def code_version(code: tuple[str, ...] = TRAINING_CODE) -> str:
    """Hash of the syntax trees of ``code`` (TRAINING_CODE, or the classifier's): a cached checkpoint is reused only if
    it matches (an edit elsewhere, or to a comment, docstring or layout, keeps the cache)."""
    h = hashlib.sha256()
    files = [f for name in code for f in ((_PACKAGE / name).rglob("*.py") if (_PACKAGE / name).is_dir()
                                                     else [_PACKAGE / name])]
    for path in sorted(files):
        h.update(path.relative_to(_PACKAGE).as_posix().encode())
        h.update(_code_only(path.read_text(encoding="utf-8")).encode())
    return h.hexdigest()[:12]


def _code_only(source: str) -> str:
    """The module's syntax tree without docstrings, as text: what runs, not how it is written or explained."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: a crash never leaves half a file."""
    atomic_write(Path(path), lambda f: write_payload(f, {"format": FORMAT, **payload}, Path(path)))


def write_payload(f: BinaryIO, obj: dict, path: Path) -> None:
    """torch.save ``obj`` into the open file ``f``; a write that fails part-way (torch says "unexpected pos" when
    the disk fills) is a CheckpointError naming ``path``."""
    try:
        torch.save(obj, f)
    except RuntimeError as err:
        raise CheckpointError(f"could not write the checkpoint {path}: the write failed part-way (is the disk full?); "
                              f"an earlier {path.name} is left as it was (torch: {str(err).splitlines()[0][:160]})") \
            from err


SEAL_SUFFIX = ".sha256"  # last.pt.sha256: the finished checkpoint's SHA-256, written when its training ends


def seal(ckpt: Path) -> None:
    """Record a finished checkpoint's SHA-256 beside it (``NAME.sha256``), for ``reusable`` to check."""
    atomic_write(ckpt.with_name(ckpt.name + SEAL_SUFFIX), lambda f: f.write(file_sha256(ckpt).encode()))


def reusable(ckpt: Path, steps: int) -> dict | None:
    """The payload of ``ckpt`` when its training finished (``steps`` done) and its bytes are the ones it was sealed
    with; None when it is missing or unfinished (train or resume it). A finished checkpoint that fails its seal, or
    a corrupt one, is moved aside (renamed, never deleted) with a warning, and None returned; an unreadable one is
    an error."""
    if not ckpt.exists():
        return None
    stamp = ckpt.with_name(ckpt.name + SEAL_SUFFIX)
    try:
        payload = load_checkpoint(ckpt)
        if payload["step"] < steps:
            return None
        if stamp.is_file() and stamp.read_text().strip() == file_sha256(ckpt):
            return payload
        raise CorruptCheckpoint(f"the finished checkpoint {ckpt} is not the one its training sealed (its SHA-256 is "
                                f"not the one in {stamp.name}{'' if stamp.is_file() else ': none'})")
    except CorruptCheckpoint as err:
        aside = ckpt.with_name(f"{ckpt.name}.corrupt-{dt.datetime.now():%Y%m%d-%H%M%S}")
        os.replace(ckpt, aside)
        stamp.unlink(missing_ok=True)
        log.warning("warning: %s; moved it aside to %s and training again", err, aside)
        return None


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's payload; a CheckpointError if the file is missing or unreadable, a CorruptCheckpoint
    if its bytes are not a dgm-ood checkpoint (including any pickle that would run code). ``path`` may be the
    manifest of a split checkpoint (empirical.transfer: X.parts.json)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        if path.name.endswith(MANIFEST_SUFFIX):  # a checkpoint split for transfer: its parts, joined in memory
            payload = torch.load(io.BytesIO(joined_bytes(path)), map_location="cpu", weights_only=True)
        else:
            with open(path, "rb") as f:
                payload = torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused:
            raise CorruptCheckpoint(f"refused to load {path}: it names {refused.group(1)}, and a dgm-ood checkpoint "
                                    f"holds only tensors and plain data (weights_only; nothing in it was run)") from err
        detail = [line for line in str(err).splitlines() if line.strip()]
        why = detail[-2] if len(detail) > 2 and "weights only" in detail[0].lower() else detail[0] if detail else ""
        raise CorruptCheckpoint(f"corrupt checkpoint {path}: not a readable torch file ({why.strip()})") from err
    except Exception as err:  # torch raises many types on corrupt files
        raise CorruptCheckpoint(f"corrupt checkpoint {path}: {str(err).splitlines()[0] if str(err) else err!r}") \
            from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model_state" not in payload:
        raise CorruptCheckpoint(f"{path} is not a dgm-ood checkpoint (format {FORMAT})")
    return payload


def trained_on(payload: dict, train_set: ImageSet, test_set: ImageSet) -> bool:
    """Whether a checkpoint was trained on these images: by content digest, or, for a checkpoint older than the
    digest, by the SHA-256 of the files it read."""
    if "data_digest" in payload:
        return payload["data_digest"] == training_digest(train_set, test_set)
    files = [f.sha256 for s in (train_set, test_set) for f in s.files]
    return sorted(f["sha256"] for f in payload.get("data_files", [])) == sorted(files)


def check_trained_on(payload: dict, path: Path, train_set: ImageSet, test_set: ImageSet) -> None:
    """A CheckpointError unless the checkpoint at ``path`` was trained on ``train_set`` (and tested on
    ``test_set``): IN must name the data a checkpoint was trained on."""
    if not trained_on(payload, train_set, test_set):
        raise CheckpointError(f"{path} was trained on {payload.get('dataset')}, not on {train_set.source}: IN names "
                              f"the training set (its images are compared by content), so pass the data it was "
                              f"trained on as IN")




class Checkpoint(NamedTuple):
    """A trained model of ours, rebuilt: the model in eval mode, the checkpoint's payload and where it was read."""

    model: torch.nn.Module
    payload: dict
    path: Path

    @property
    def name(self) -> str:
        """The model's name (``cvglow``, ``glow``, ``pixelcnn``, ``vae``)."""
        return self.payload["model"]

    @property
    def dataset(self) -> str:
        """The IN source it was trained on, as named then (``fashionmnist``, a path, …): ``open_in(ckpt.dataset)``."""
        return self.payload["dataset"]

    @property
    def preset_name(self) -> str:
        return self.payload["preset"]

    @property
    def step(self) -> int:
        """Training steps done."""
        return int(self.payload["step"])

    @property
    def data_digest(self) -> str | None:
        """SHA-256 over the content of the training and test images (``training_digest``)."""
        return self.payload.get("data_digest")

    def preset(self, seed: int = 0) -> Preset:
        """The preset that trained this model, to train more like it (``--scores all``, ``--entropy``): its family's,
        with its split prior, seeded ``seed``; a CheckpointError if its architecture is not that preset's."""
        p = self.payload
        preset = get_preset(p["preset"], p["model"], tuple(self.model.config.shape), seed=seed,
                            split_prior=p["model_config"].get("split_prior") if p["model"] in FLOWS else None)
        if replace(model_config(p["model"], p["model_config"]), seed=preset.model.seed) != preset.model:
            raise CheckpointError(f"{self.path} does not use its {p['preset']} preset's architecture (trained with "
                                  f"--arch?), so no model like it can be trained here")
        return preset

    def heldout(self, in_train: ImageSet) -> ImageSet | None:
        """The training images it never saw (the preset's ``holdout``: the last N of ``in_train``), or None."""
        n = int(self.payload.get("train_config", {}).get("holdout", 0))
        if n <= 0:
            return None
        return in_train.select(slice(len(in_train) - n, None), f"the last {n} of {len(in_train)}, held out of "
                                                                f"training")
