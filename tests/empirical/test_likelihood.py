"""The 8-bit discretisation term and the nats <-> bits/dim conversions."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from empirical.models.evaluation import evaluate
from empirical.models.likelihood import (
    bits_per_dim,
    bpd_to_nats,
    dequantize,
    discrete_log_likelihood,
    discrete_to_density_nats,
    discretisation_nats,
    nats_gap_to_bpd,
)


class UniformDensity(torch.nn.Module):
    """p(x̃) = 1 on [0,1)^D: log p = 0 (the density-model contract at its smallest: no parameters at all)."""

    image_shape = (3, 4, 4)

    def log_prob(self, x):
        return torch.zeros(len(x))


def test_discrete_model_conversion_is_exact():
    # a discrete model with P(x) = 256^-D is the uniform density: exactly 8 bpd, no noise involved
    dims = 12
    log_p = torch.full((3,), -dims * math.log(256))
    assert bits_per_dim(discrete_to_density_nats(log_p, dims), dims).tolist() == pytest.approx([8.0] * 3)


def test_uniform_density_gives_exactly_8_bpd():
    images = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8)
    result = evaluate(UniformDensity(), images)
    assert result.bpd.tolist() == pytest.approx([8.0] * 7, abs=1e-12)


@given(st.floats(-1e5, 1e5), st.integers(1, 10_000))
def test_bpd_nats_round_trip(log_px, dims):
    assert bpd_to_nats(bits_per_dim(log_px, dims), dims) == pytest.approx(log_px, rel=1e-9, abs=1e-6)


def test_discretisation_term():
    assert discretisation_nats(3072) == pytest.approx(3072 * 8 * math.log(2))
    assert discrete_log_likelihood(0.0, 10) == pytest.approx(-10 * math.log(256))


def test_gap_conversion_sign_convention():
    # q gets 100 nats more per image -> bpd(p) - bpd(q) is positive and equals the bpd difference
    dims = 784
    p_bpd, q_bpd = bits_per_dim(1000.0, dims), bits_per_dim(1100.0, dims)
    assert nats_gap_to_bpd(100.0, dims) == pytest.approx(p_bpd - q_bpd)


def test_dequantize_range_and_input_untouched():
    x = torch.tensor([[0, 255, 128]], dtype=torch.uint8)
    before = x.clone()
    y = dequantize(x, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
    assert ((y >= x / 256) & (y < (x.float() + 1) / 256)).all()
    with pytest.raises(TypeError, match="uint8"):
        dequantize(x.float())
