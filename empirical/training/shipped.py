"""Shipped weights: ``empirical/weights/NAME.safetensors`` (read without pickle) beside its card ``NAME.json`` (model,
preset, configs, the training images' content digest, the weights' SHA-256, how it was made). ``find`` gives them
only to exactly the run they were trained for; ``check``, ``export`` and ``retrain`` serve the maintainers
(``python -m empirical.shipped``)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch

from empirical.data.imageset import ImageSet, training_digest
from empirical.data.sources import DataOptions, open_in, slug
from empirical.io.atomic import atomic_write, write_json
from empirical.io.errors import CheckpointError, arg
from empirical.models.evaluation import evaluate
from empirical.models.registry import build_model, model_config, non_finite_tensors
from empirical.training.checkpoint import Checkpoint, load_checkpoint
from empirical.training.presets import Preset, TrainConfig, get_preset
from empirical.training.trainer import train

log = logging.getLogger(__name__)
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


MAX_BYTES = 8 * 2**20  # shipped weights are at most 8 MiB each (the CV-Glows: 0.5 MiB for 28×28, 2.3 MiB for CIFAR-10)


CLASSIFIER = "cnn"  # the model name of classifiers in checkpoints and shipped cards (empirical.training.classifier)


BPD_TOLERANCE = 0.01  # retrained on another torch or machine: test bits/dim within this of the shipped model's


CARD_KEYS = ("dataset", "model", "preset", "model_config", "train_config", "data_digest", "data", "train_images",
             "step", "history", "sha256", "bytes", "made_by")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Shipped:
    """One shipped model: its card (the JSON) and its weights file."""

    name: str
    card: dict
    weights: Path

    def matches(self, train_set: ImageSet, test_set: ImageSet, model_name: str, preset: Preset) -> bool:
        """Whether these weights are exactly what training ``model_name`` with ``preset`` on these images gives."""
        c = self.card
        if c["model"] != model_name or c["preset"] != preset.name:
            return False
        return (model_config(model_name, c["model_config"]) == preset.model
                and _with_defaults(c["train_config"]) == preset.train.to_dict()
                and c["data_digest"] == training_digest(train_set, test_set))

    def state(self, expected: set[str]) -> dict:
        """The weights, checked: the file's SHA-256 is the recorded one, the tensor names are ``expected``, every
        weight is finite."""
        from safetensors.torch import load_file

        if not self.weights.is_file() or _sha256(self.weights) != self.card["sha256"]:
            raise CheckpointError(f"shipped weights {self.weights} are missing or damaged (SHA-256 is not the "
                                  f"recorded {self.card['sha256'][:16]}…); reinstall, or "
                                  f"{arg('train the model from scratch', 'pass --retrain')}")
        state = load_file(str(self.weights))
        if non_finite_tensors(state) or set(state) != expected:
            raise CheckpointError(f"shipped weights {self.weights} do not fit their model; "
                                  f"{arg('train the model from scratch', 'pass --retrain')}")
        return state

    def load(self) -> Checkpoint:
        """The generative model, its weights checked (``state``)."""
        if self.card["model"] == CLASSIFIER:
            raise CheckpointError(f"{self.weights.name} is a classifier (empirical.training.classifier.load_shipped), "
                                  f"not a generative model")
        model = build_model(self.card["model"], self.card["model_config"])
        model.load_state_dict(self.state(set(model.state_dict())))
        payload = {k: self.card[k] for k in CARD_KEYS if k in self.card} | {"shipped": self.name}
        return Checkpoint(model.eval(), payload, self.weights)

    def describe(self, what: str = "shipped weights") -> str:
        """One line for reports: which file, and how it was made."""
        m = self.card["made_by"]
        return (f"{what} {self.weights.name} (SHA-256 {self.card['sha256'][:16]}…), trained by "
                f"`{m['command']}` at commit {m['commit'][:12]} on {m['device']} (torch {m['torch']}, "
                f"{m['seconds']:.0f} s); --retrain trains from scratch")


def _with_defaults(train_config: dict) -> dict:
    """A recorded TrainConfig with the fields added after it was written at their defaults."""
    return {**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}, **train_config}


REQUIRED = ("model", "preset", "model_config", "train_config", "data_digest", "sha256", "made_by")


def read_card(card_path: Path) -> tuple[Shipped | None, str | None]:
    """The shipped model a card describes, or None and what is wrong with the card (unreadable JSON, not an object,
    a field missing)."""
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"{card_path.name} is not a readable card ({type(err).__name__}: {str(err)[:120]})"
    missing = [k for k in REQUIRED if not isinstance(card, dict) or k not in card]
    if missing:
        return None, f"{card_path.name} lacks {', '.join(missing)}"
    return Shipped(card_path.stem, card, card_path.with_suffix(".safetensors")), None


def available() -> list[Shipped]:
    """Every shipped model whose card is well formed (``check`` names the others; no command depends on them)."""
    found = []
    for card_path in sorted(WEIGHTS.glob("*.json")):
        shipped, problem = read_card(card_path)
        if shipped is None:
            log.warning("warning: shipped card %s", problem)
        else:
            found.append(shipped)
    return found


def find(train_set: ImageSet, test_set: ImageSet, model_name: str, preset: Preset) -> Shipped | None:
    """The shipped model for exactly this training run, if there is one."""
    return next((s for s in available() if s.matches(train_set, test_set, model_name, preset)), None)


# ----------------------------------------------------------------------------------------------- maintainers
def default_name(payload: dict) -> str:
    """A shipped model's name from what trained it: ``fashionmnist-cvglow-cpu``; a path source by its file name
    (``runs/c100.npz`` → ``c100-cvglow-cpu``)."""
    return f"{slug(payload['dataset'])}-{payload['model']}-{payload['preset']}"


def export(checkpoint: Path, name: str | None = None, folder: Path = WEIGHTS) -> Shipped:
    """Write a finished checkpoint's weights (safetensors) and card (JSON) into ``folder``."""
    from safetensors.torch import save

    payload = load_checkpoint(checkpoint)
    if payload["step"] < payload["train_config"]["steps"]:
        raise CheckpointError(f"{checkpoint} is not finished ({payload['step']} of {payload['train_config']['steps']} "
                              f"steps)")
    name = name or default_name(payload)
    weights = folder / f"{name}.safetensors"
    data = save({k: v.contiguous() for k, v in payload["model_state"].items()})
    if len(data) > MAX_BYTES:
        raise CheckpointError(f"{checkpoint}'s weights are {len(data):,} bytes, more than {MAX_BYTES:,}: too big to "
                              f"ship (nothing written)")
    atomic_write(weights, lambda f: f.write(data))
    history = payload["history"]
    card = {k: payload[k] for k in CARD_KEYS if k in payload} | {
        "sha256": _sha256(weights), "bytes": weights.stat().st_size,
        "made_by": {"command": payload["command"], "commit": payload["commit"], "device": payload["device"],
                    "torch": torch.__version__, "code_version": payload["code_version"],
                    "seconds": history[-1]["seconds"] if history else None,
                    **{k: history[-1].get(k) for k in ("test_bpd", "test_accuracy") if history and k in history[-1]}}}
    write_json(folder / f"{name}.json", card)
    return Shipped(name, card, weights)


def check() -> list[str]:
    """Every shipped file against its card: size under MAX_BYTES and the recorded SHA-256; returns the problems."""
    problems = [problem for card in sorted(WEIGHTS.glob("*.json")) if (problem := read_card(card)[1])]
    for s in available():
        if not s.weights.is_file():
            problems.append(f"{s.weights} is missing")
        elif _sha256(s.weights) != s.card["sha256"]:
            problems.append(f"{s.weights}: SHA-256 {_sha256(s.weights)[:16]}… is not the recorded "
                            f"{s.card['sha256'][:16]}…")
        elif s.weights.stat().st_size > MAX_BYTES:
            problems.append(f"{s.weights} is larger than {MAX_BYTES:,} bytes")
    return problems


def retrain(shipped: Shipped, out: Path, data_dir: str | None = None) -> dict:
    """Train again with the recorded settings on the recorded images and compare with the shipped weights: bit for
    bit, else the full test set's bits/dim within BPD_TOLERANCE."""
    if Path(out).exists() and any(Path(out).iterdir()):
        raise CheckpointError(f"{arg('out', '--out')} {out} is not empty; retrain trains from scratch into an empty "
                              f"folder, so that what it compares is a run it made")
    card = shipped.card
    if card["model"] == CLASSIFIER:
        raise CheckpointError(f"{shipped.name} is a classifier; train it again with python -m verify.adversarial "
                              f"{card['dataset']} --retrain (its report prints the accuracy)")
    train_set, test_set = open_in(card["dataset"], DataOptions(data_dir))
    if training_digest(train_set, test_set) != card["data_digest"]:
        raise CheckpointError(f"the {card['dataset']} files found are not the images {shipped.name} was trained on")
    recorded = card["train_config"]
    preset = get_preset(card["preset"], card["model"], train_set.shape, seed=recorded["seed"],
                        perturb=recorded.get("perturb", 0.0), split_prior=card["model_config"].get("split_prior"))
    if not shipped.matches(train_set, test_set, card["model"], preset):
        raise CheckpointError(f"the {card['preset']} preset has changed since {shipped.name} was trained; export new "
                              f"weights")
    t0 = time.time()
    result = train(train_set, test_set, card["model"], preset, out, resume=True, progress=True)
    fresh, ours = result.model.cpu().eval(), shipped.load().model
    state = fresh.state_dict()
    identical = all(torch.equal(state[k], v) for k, v in ours.state_dict().items())
    bpd = {name: float(evaluate(m, test_set.images, seed=0).bpd.mean()) for name, m in
           (("shipped", ours), ("retrained", fresh))}
    diff = abs(bpd["shipped"] - bpd["retrained"])
    return {"shipped": shipped.name, "bit_for_bit": identical, "test_bpd": bpd, "bpd_difference": diff,
            "within_tolerance": identical or diff <= BPD_TOLERANCE, "tolerance_bpd": BPD_TOLERANCE,
            "max_abs_weight_difference": max(float((state[k] - v).abs().max()) for k, v in ours.state_dict().items()),
            "torch": torch.__version__, "seconds": time.time() - t0, "checkpoint": str(result.checkpoint)}
