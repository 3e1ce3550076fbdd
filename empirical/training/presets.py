"""Named presets: the exact hyperparameters of every model, for every image shape.

Models: ``glow`` (affine couplings, learned top prior), ``cvglow`` (constant-volume Glow: additive
couplings, fixed N(0, 1) top prior, as the paper's analysis needs), ``pixelcnn`` and ``vae``. Presets:
``smoke`` (tests, seconds), ``cpu`` (minutes on 2 cores), ``gpu`` (paper-sized; for Glow the paper's
"smaller Glow": 3 levels × 8 steps, 400 channels).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from empirical.io.errors import DgmOodError, arg
from empirical.models.registry import FAMILIES, FLOWS, MODELS, VARIANTS, family_of


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run."""

    steps: int
    batch_size: int
    lr: float = 1e-3
    warmup: int = 200  # linear learning-rate warm-up, in steps
    decay: str = "none"  # after the warm-up: "none" (constant) or "cosine" (to 0 at the last step)
    max_grad_norm: float = 50.0
    optimizer: str = "adam"  # or "adamax"
    eval_every: int = 500
    eval_images: int = 1000  # test images for the periodic test bpd
    checkpoint_every: int = 250
    seed: int = 0
    holdout: int = 0  # the last N training images are never trained on (typicality's Ĥ, thresholds)
    perturb: float = 0.0  # μ > 0: each sub-pixel replaced by a uniform random value w.p. μ (a background model)
    amp: bool = True  # bf16 coupling networks on CUDA (log-dets and priors stay fp32)
    compile: bool = False  # torch.compile the flow on CUDA
    hflip: bool = False  # mirror each training image with probability ½, on mirror-symmetric datasets only (CIFAR)

    def __post_init__(self) -> None:
        positive_ints = ("steps", "batch_size", "warmup", "eval_every", "eval_images", "checkpoint_every")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DgmOodError(f"{name} must be a whole number ≥ 1 (--{name.replace('_', '-')}), got {value!r}")
        for name in ("lr", "max_grad_norm"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise DgmOodError(f"{name} must be a finite number > 0 (--{name.replace('_', '-')}), got {value!r}")
        for name in ("holdout", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DgmOodError(f"{name} must be a whole number ≥ 0 (--{name}), got {value!r}")
        if not 0.0 <= self.perturb < 1.0:
            raise DgmOodError(f"perturb (μ) must be in [0, 1), got {self.perturb!r}")
        if self.decay not in ("none", "cosine"):
            raise DgmOodError(f"unknown learning-rate decay {self.decay!r}; use none or cosine")
        if self.optimizer not in ("adam", "adamax"):
            raise DgmOodError(f"unknown optimizer {self.optimizer!r}; use adam or adamax")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EvalBudget:
    """How many images ``verify.compare`` evaluates (None = the whole split); always printed."""

    in_train: int | None
    in_test: int | None
    out_test: int | None
    hvp_samples: int  # per dataset, for the second-order predictions
    gray_images: int  # IN-test images per α of the graying experiment
    heldout: int | None = None  # held-out IN-train images evaluated (typicality's Ĥ and thresholds)


@dataclass(frozen=True)
class Preset:
    name: str
    model: Any  # GlowConfig, PixelCNNConfig or VAEConfig
    train: TrainConfig
    budget: EvalBudget


# (architecture, training steps[, schedule overrides]) per (model, preset, image size). cpu: sized for ≤15 min of
# verify.compare on 2 cores; each cpu recipe had the lowest IN-test bits/dim, within that time, of the recipes
# measured side by side with torch 2.15 (time-to-bits/dim curves: results/cpu-presets/). A CPU PixelCNN on
# CIFAR-10 (about 100 img/s) learns little in that time: use gpu. Steady-state rates: bench/throughput.py.
_COSINE = dict(decay="cosine")
_ARCH: dict[str, dict[str, dict[int, tuple]]] = {
    "glow": {
        "smoke": {28: (dict(levels=2, steps=2, hidden=16), 40), 32: (dict(levels=2, steps=2, hidden=16), 40)},
        "cpu": {28: (dict(levels=2, steps=8, hidden=64), 6000, _COSINE),
                32: (dict(levels=3, steps=8, hidden=64), 4000, _COSINE)},
        "gpu": {28: (dict(levels=2, steps=8, hidden=400), 20_000),
                32: (dict(levels=3, steps=8, hidden=400), 30_000)},
    },
    "pixelcnn": {
        "smoke": {28: (dict(hidden=12, blocks=2), 40), 32: (dict(hidden=12, blocks=2), 40)},
        "cpu": {28: (dict(hidden=32, blocks=4), 2000, _COSINE), 32: (dict(hidden=24, blocks=4), 900, _COSINE)},
        "gpu": {28: (dict(hidden=120, blocks=12), 20_000), 32: (dict(hidden=192, blocks=15), 30_000)},
    },
    "vae": {
        "smoke": {28: (dict(latent=8, hidden=16, eval_samples=10), 40),
                  32: (dict(latent=8, hidden=16, eval_samples=10), 40)},
        "cpu": {28: (dict(latent=64, hidden=64), 12_000, _COSINE), 32: (dict(latent=64, hidden=64), 8000, _COSINE)},
        "gpu": {28: (dict(latent=64, hidden=128), 20_000), 32: (dict(latent=128, hidden=128), 30_000)},
    },
}
# CV-Glow shares Glow's smoke and gpu architectures; its cpu preset is its own (8 steps per level).
_ARCH["cvglow"] = {**_ARCH["glow"], "cpu": {28: (dict(levels=2, steps=8, hidden=64), 8000, _COSINE),
                                            32: (dict(levels=3, steps=8, hidden=64), 4000, _COSINE)}}
_TRAIN = {
    "smoke": dict(batch_size=32, lr=2e-3, warmup=10, eval_every=20, eval_images=200, checkpoint_every=20, holdout=16),
    "cpu": dict(batch_size=64, lr=2e-3, warmup=100, eval_every=500, eval_images=1000, holdout=2000),
    "gpu": dict(batch_size=256, lr=1e-3, warmup=1000, eval_every=2000, eval_images=10_000, checkpoint_every=1000,
                holdout=5000, hflip=True),
}
_BUDGET = {
    "smoke": EvalBudget(in_train=200, in_test=200, out_test=200, hvp_samples=8, gray_images=50),
    "cpu": EvalBudget(in_train=2000, in_test=None, out_test=None, hvp_samples=96, gray_images=500),
    "gpu": EvalBudget(in_train=10_000, in_test=None, out_test=None, hvp_samples=512, gray_images=2000),
}
# Families that evaluate slowly on a CPU evaluate fewer images there (always printed): IWAE with k = 100 costs
# 100 decoder passes per image (about 25 img/s on 2 cores); a PixelCNN about 270 img/s at 28×28.
_FAMILY_BUDGET = {
    "vae": {"cpu": EvalBudget(in_train=1000, in_test=2000, out_test=2000, hvp_samples=0, gray_images=200,
                              heldout=500),
            "gpu": EvalBudget(in_train=5000, in_test=None, out_test=None, hvp_samples=0, gray_images=1000)},
    "pixelcnn": {"cpu": EvalBudget(in_train=1000, in_test=5000, out_test=5000, hvp_samples=0, gray_images=200,
                                   heldout=1000)},
}
# The periodic test bpd of a VAE is an IWAE estimate (k = 100): fewer images, less often, keep training time for
# training (on 2 cores 200 images every 500 steps took 8 of every 26 s).
_MODEL_TRAIN = {"vae": {"cpu": dict(eval_images=200, eval_every=1000), "gpu": dict(eval_images=2000)}}
PRESETS = ("smoke", "cpu", "gpu")


def default_budget(name: str = "cpu") -> EvalBudget:
    """The evaluation budget of preset ``name`` for a model without a preset of its own (an outside model)."""
    if name not in PRESETS:
        raise DgmOodError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return _BUDGET[name]


def get_preset(name: str, model: str, shape: tuple[int, int, int], *, split_prior: str | None = None,
               arch: dict[str, Any] | None = None, **train_overrides) -> Preset:
    """The preset ``name`` for ``model`` on images of ``shape``; overrides replace TrainConfig fields.

    ``split_prior="fixed"`` gives a flow the paper's exact model class (every split latent N(0, σ_ψ²)).
    ``arch`` replaces fields of the model's config (e.g. ``{"hidden": 128}``), for experiments on shape.
    """
    if model not in MODELS:
        raise DgmOodError(f"unknown model {model!r}; models: {', '.join(MODELS)}")
    if name not in PRESETS:
        raise DgmOodError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    size = shape[1]
    if size not in _ARCH[model][name]:
        raise DgmOodError(f"preset {name!r} has no {model} architecture for {size}×{size} images")
    preset_arch, train_steps, *size_schedule = _ARCH[model][name][size]
    overrides = arch or {}
    fixed = VARIANTS.get(model, ("", {}))[1]  # what makes a variant (cvglow: additive couplings, fixed prior)
    arch = {**preset_arch, **fixed}
    config_class = FAMILIES[family_of(model)][0]
    known = {f.name for f in fields(config_class)} - {"shape", "seed", "split_prior"}  # these have their own options
    if sorted(set(overrides) & set(fixed)):
        raise DgmOodError(f"{model} fixes {', '.join(sorted(set(overrides) & set(fixed)))}; use another model "
                          f"(e.g. glow) to change it")
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise DgmOodError(f"{model} has no architecture field {', '.join(map(repr, unknown))}; "
                          f"fields: {', '.join(sorted(known - set(fixed)))}")
    arch = {**arch, **overrides}
    if split_prior is not None:
        if model not in FLOWS:
            raise DgmOodError(f"{arg('split_prior', '--split-prior')} applies to flows (glow, cvglow), not to {model}")
        if split_prior not in ("learned", "fixed"):
            raise DgmOodError(f"unknown split prior {split_prior!r}; use learned or fixed")
        arch = {**arch, "split_prior": split_prior}
    if train_overrides.get("seed") is not None:  # an independently seeded model: its initialisation too
        arch = {**arch, "seed": train_overrides["seed"]}
    try:
        config = config_class(shape=tuple(shape), **arch)
    except (TypeError, ValueError) as err:
        raise DgmOodError(f"invalid {model} architecture: {err}") from None
    schedule = {**_TRAIN[name], **_MODEL_TRAIN.get(model, {}).get(name, {}), **dict(*size_schedule)}
    train = replace(TrainConfig(steps=train_steps, **schedule),
                    **{k: v for k, v in train_overrides.items() if v is not None})
    budget = _FAMILY_BUDGET.get(model, {}).get(name, _BUDGET[name])
    return Preset(name, config, train, budget)
