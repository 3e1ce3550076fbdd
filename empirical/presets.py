"""Named presets: the exact hyperparameters of every model, for every image shape.

Models: ``glow`` (affine couplings, learned top prior) and ``cvglow`` (constant-volume Glow: additive
couplings, fixed N(0, 1) top prior, as the paper's analysis needs). Presets: ``smoke`` (tests, seconds),
``cpu`` (minutes on 2 cores), ``gpu`` (the paper's "smaller Glow": 3 levels × 8 steps, 400 channels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from empirical.errors import DgmOodError
from empirical.flows import GlowConfig

MODELS = ("glow", "cvglow")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run."""

    steps: int
    batch_size: int
    lr: float = 1e-3
    warmup: int = 200  # linear learning-rate warm-up, in steps
    max_grad_norm: float = 50.0
    optimizer: str = "adam"  # or "adamax"
    eval_every: int = 500
    eval_images: int = 1000  # test images for the periodic test bpd
    checkpoint_every: int = 250
    seed: int = 0
    amp: bool = True  # bf16 coupling networks on CUDA (log-dets and priors stay fp32)
    compile: bool = False  # torch.compile the flow on CUDA

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


@dataclass(frozen=True)
class Preset:
    name: str
    model: GlowConfig
    train: TrainConfig
    budget: EvalBudget


# (levels, steps per level, hidden channels, training steps) by image size; the rest of the schedule by preset.
# cpu: sized for ≤15 min of verify.compare on 2 cores (train img/s there: CIFAR Glow 250, CV-Glow 345;
# FashionMNIST Glow 345, CV-Glow 505; see bench/throughput.py).
_ARCH = {
    "smoke": {28: (2, 2, 16, 40), 32: (2, 2, 16, 40)},
    "cpu": {28: (2, 4, 64, 5000), 32: (3, 4, 64, 3000)},
    "gpu": {28: (2, 8, 400, 20_000), 32: (3, 8, 400, 30_000)},
}
_TRAIN = {
    "smoke": dict(batch_size=32, lr=2e-3, warmup=10, eval_every=20, eval_images=200, checkpoint_every=20),
    "cpu": dict(batch_size=64, lr=2e-3, warmup=100, eval_every=500, eval_images=1000),
    "gpu": dict(batch_size=256, lr=1e-3, warmup=1000, eval_every=2000, eval_images=10_000, checkpoint_every=1000),
}
_BUDGET = {
    "smoke": EvalBudget(in_train=200, in_test=200, out_test=200, hvp_samples=8, gray_images=50),
    "cpu": EvalBudget(in_train=2000, in_test=None, out_test=None, hvp_samples=96, gray_images=500),
    "gpu": EvalBudget(in_train=10_000, in_test=None, out_test=None, hvp_samples=512, gray_images=2000),
}
PRESETS = tuple(_ARCH)


def get_preset(name: str, model: str, shape: tuple[int, int, int], **train_overrides) -> Preset:
    """The preset ``name`` for ``model`` on images of ``shape``; overrides replace TrainConfig fields."""
    if model not in MODELS:
        raise DgmOodError(f"unknown model {model!r}; models: {', '.join(MODELS)}")
    if name not in _ARCH:
        raise DgmOodError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    size = shape[1]
    if size not in _ARCH[name]:
        raise DgmOodError(f"preset {name!r} has no architecture for {size}×{size} images")
    levels, steps, hidden, train_steps = _ARCH[name][size]
    additive = model == "cvglow"
    config = GlowConfig(shape=tuple(shape), levels=levels, steps=steps, hidden=hidden,
                        coupling="additive" if additive else "affine",
                        prior="fixed" if additive else "learned")
    train = replace(TrainConfig(steps=train_steps, **_TRAIN[name]),
                    **{k: v for k, v in train_overrides.items() if v is not None})
    return Preset(name, config, train, _BUDGET[name])
