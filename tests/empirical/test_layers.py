"""Every invertible layer through the one shared check, over random shapes, options and seeds."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empirical.models.flows.layers import ActNorm, Coupling, FlowStep, InvConv1x1, Split, Squeeze
from tests.helpers import check_transform, randomize

shapes = st.tuples(st.integers(1, 3), st.sampled_from([2, 4]), st.sampled_from([2, 4]))
FAST = settings(max_examples=8, deadline=None)


def _x(seed: int, n: int, c: int, h: int, w: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@FAST
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_actnorm(shape, seed):
    c, h, w = shape
    layer = randomize(ActNorm(c), seed).double()
    check_transform(layer.eval(), _x(seed, 3, c, h, w))


def test_actnorm_data_init_is_saved_and_not_repeated():
    x = _x(0, 64, 3, 4, 4) * 3 + 2
    layer = ActNorm(3).double().train()
    y, _ = layer(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-6)
    state = layer.state_dict()
    assert state["initialized"].item() == 1
    reloaded = ActNorm(3).double().train()
    reloaded.load_state_dict(state)
    y2, _ = reloaded(x * 10)  # a different batch must not re-initialise
    assert torch.allclose(y2, layer(x * 10)[0])


@FAST
@given(c=st.integers(1, 6), lu=st.booleans(), seed=st.integers(0, 10_000))
def test_invconv(c, lu, seed):
    layer = InvConv1x1(c, lu=lu, generator=torch.Generator().manual_seed(seed))
    layer = randomize(layer, seed, 0.05).double()
    check_transform(layer, _x(seed, 2, c, 2, 3))


@pytest.mark.parametrize("lu", [True, False])
def test_invconv_fp32_round_trip(lu):
    layer = InvConv1x1(4, lu=lu)
    check_transform(layer, _x(1, 4, 4, 4, 4, torch.float32))


@FAST
@given(c=st.integers(2, 6), kind=st.sampled_from(["affine", "additive"]), seed=st.integers(0, 10_000))
def test_coupling(c, kind, seed):
    torch.manual_seed(seed)
    layer = randomize(Coupling(c, 8, kind), seed).double()
    check_transform(layer, _x(seed, 2, c, 2, 2))


def test_additive_coupling_has_zero_logdet():
    layer = randomize(Coupling(4, 8, "additive"), 3).double()
    _, logdet = layer(_x(0, 5, 4, 4, 4))
    assert torch.equal(logdet, torch.zeros(5, dtype=torch.float64))


@FAST
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_squeeze(shape, seed):
    c, h, w = shape
    check_transform(Squeeze(), _x(seed, 2, c, h, w))


@FAST
@given(c=st.integers(2, 4), kind=st.sampled_from(["affine", "additive"]), lu=st.booleans(),
       seed=st.integers(0, 10_000))
def test_flow_step(c, kind, lu, seed):
    torch.manual_seed(seed)
    step = randomize(FlowStep(c, 8, kind, lu, torch.Generator().manual_seed(seed)), seed, 0.05).double()
    check_transform(step.eval(), _x(seed, 2, c, 2, 2))


def test_split_round_trip_and_density():
    split = randomize(Split(4), 0).double()
    x = _x(0, 3, 4, 2, 2)
    z_keep, log_pz = split(x)
    assert torch.equal(split.inverse(z_keep, x[:, 2:]), x)
    mean, log_std = split._params(z_keep)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(x[:, 2:]).flatten(1).sum(1)
    assert torch.allclose(log_pz, expected)


def test_squeeze_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        Squeeze()(torch.zeros(1, 1, 3, 4))
