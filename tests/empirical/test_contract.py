"""The density-model contract: declarations and their defaults, clear errors for models that miss it, the four
families' declarations, the shared dequantisation step, and constructors that leave the caller's RNG alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from empirical.io.errors import CheckpointError
from empirical.models.contract import ModelContractError, describe
from empirical.models.evaluation import NonFiniteLikelihood, evaluate
from empirical.models.likelihood import log_likelihood
from empirical.models.registry import build_model
from empirical.training.presets import get_preset


class Gaussian(nn.Module):
    """log p(x̃) = Σ_d log N(x̃_d; μ, σ²): an outside model with a known answer; quadratic, so its own linear path."""

    constant_volume = True

    def __init__(self, shape=(1, 4, 4), mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        self.image_shape = shape
        self.mean = nn.Parameter(torch.full(shape, mean))
        self.log_std = nn.Parameter(torch.full(shape, math.log(std)))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    def linear_path(self) -> Gaussian:
        return self


def test_declarations_and_their_defaults():
    info = describe(Gaussian(), "gauss")
    assert (info.name, info.shape, info.dims) == ("gauss", (1, 4, 4), 16)
    assert info.exact and info.smooth and info.constant_volume and info.linear_path
    assert not (info.discrete or info.stochastic or info.parts or info.shardable)


@pytest.mark.parametrize("model,flags", [
    ("cvglow", dict(discrete=False, exact=True, stochastic=False, smooth=True, constant_volume=True, parts=True)),
    ("glow", dict(discrete=False, exact=True, smooth=True, constant_volume=False, parts=True, linear_path=True)),
    ("pixelcnn", dict(discrete=True, exact=True, stochastic=False, smooth=False, parts=False)),
    ("vae", dict(discrete=True, exact=False, stochastic=True, smooth=False, parts=True, shardable=True)),
])
def test_the_four_families_declare_themselves(model, flags):
    info = describe(build_model(model, get_preset("smoke", model, (1, 28, 28)).model))
    assert {k: getattr(info, k) for k in flags} == flags


class _NoShape(nn.Module):
    def log_prob(self, x):
        return x.sum((1, 2, 3))


class _BadFlag(Gaussian):
    discrete = "yes"


@pytest.mark.parametrize("model,message", [
    (object(), "is not a torch.nn.Module"),
    (nn.Linear(2, 2), "has no log_prob"),
    (_NoShape(), "declares no image shape"),
    (_BadFlag(), "discrete must be True or False"),
])
def test_models_that_miss_the_contract_get_a_clear_error(model, message):
    with pytest.raises(ModelContractError, match=message):
        describe(model)


def test_an_outside_gaussian_evaluates_to_its_known_bits_per_dim():
    model = Gaussian(mean=0.5, std=0.25)
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ev = evaluate(model, images, seed=1)
    x = (images.double() + torch.rand(images.shape, generator=torch.Generator().manual_seed(1)).double()) / 256
    expected = torch.distributions.Normal(0.5, 0.25).log_prob(x).flatten(1).sum(1).numpy()
    np.testing.assert_allclose(ev.log_px, expected, rtol=1e-5)


def test_evaluate_refuses_images_of_another_shape_and_non_finite_values():
    with pytest.raises(Exception, match="are 1×5×5 but the model takes 1×4×4"):
        evaluate(Gaussian(), torch.zeros(2, 1, 5, 5, dtype=torch.uint8))
    model = Gaussian()
    with torch.no_grad():
        model.log_std.fill_(-1e4)  # every density overflows
    with pytest.raises(NonFiniteLikelihood, match="non-finite log-likelihood to 2 of 2"):
        evaluate(model, torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_a_discrete_model_gets_bin_centres_and_no_noise():
    seen = []

    class Discrete(Gaussian):
        discrete = True

        def log_prob(self, x):
            seen.append(x.clone())
            return super().log_prob(x)

    x = torch.tensor([[[[0, 255, 7, 8]] * 4]], dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    log_likelihood(Discrete(), x, gen)
    assert torch.equal(seen[0], (x.float() + 0.5) / 256) and torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("model", ["glow", "cvglow", "pixelcnn", "vae"])
def test_constructors_leave_the_callers_random_generator_alone(model):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(model, get_preset("smoke", model, (1, 28, 28)).model)
    assert torch.equal(torch.rand(3), expected)


def test_the_same_config_builds_the_same_weights():
    cfg = get_preset("smoke", "cvglow", (1, 28, 28)).model
    a, b = build_model("cvglow", cfg), build_model("cvglow", cfg)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_cvglow_is_a_configuration_that_cannot_be_built_affine():
    cfg = get_preset("smoke", "glow", (1, 28, 28)).model  # affine couplings
    with pytest.raises(CheckpointError, match="cvglow means"):
        build_model("cvglow", cfg)
    with pytest.raises(Exception, match="cvglow fixes coupling"):
        get_preset("smoke", "cvglow", (1, 28, 28), arch={"coupling": "affine"})
