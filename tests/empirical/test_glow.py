"""Whole Glow / CV-Glow models: invertibility, exact log-det, constant volume, sampling, shape errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empirical.io.errors import DataError
from empirical.models.flows import Glow, GlowConfig
from tests.helpers import autograd_logdet, randomize


def _model(c, size, levels, coupling, lu, seed, prior="learned"):
    cfg = GlowConfig((c, size, size), levels=levels, steps=2, hidden=8, coupling=coupling, lu=lu, prior=prior,
                     seed=seed)
    return randomize(Glow(cfg), seed, 0.05).double().eval()


@settings(max_examples=6, deadline=None)
@given(c=st.integers(1, 3), levels=st.integers(1, 2), coupling=st.sampled_from(["affine", "additive"]),
       lu=st.booleans(), seed=st.integers(0, 1000))
def test_glow_round_trip_and_exact_logdet(c, levels, coupling, lu, seed):
    model = _model(c, 4, levels, coupling, lu, seed)
    x = torch.rand(2, c, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    zs, terms, volume = model.encode(x)
    density = sum(terms.values())
    assert set(terms) == {*(f"split{i}" for i in range(1, levels)), "top"}
    assert (model.decode(zs) - x).abs().max() < 1e-10
    # log p = density + volume; volume must be log|det| of the map x -> all latents
    def flat_latents(v):
        return torch.cat([z.flatten(1) for z in model.encode(v)[0]], 1)
    assert torch.allclose(volume, autograd_logdet(flat_latents, x), atol=1e-8)
    assert torch.allclose(model.log_prob(x), density + volume)


def test_glow_fp32_round_trip():
    model = _model(3, 8, 2, "affine", True, 0).float()
    x = torch.rand(4, 3, 8, 8)
    zs, _, _ = model.encode(x)
    assert (model.decode(zs) - x).abs().max() < 1e-5


def test_cvglow_volume_is_the_same_for_all_inputs():
    model = _model(1, 8, 2, "additive", True, 1)
    _, _, volume = model.encode(torch.rand(16, 1, 8, 8, dtype=torch.float64))
    assert torch.allclose(volume, volume[:1].expand(16), rtol=0, atol=1e-12)


def test_affine_glow_volume_depends_on_input():
    model = _model(1, 8, 2, "affine", True, 1)
    _, _, volume = model.encode(torch.rand(16, 1, 8, 8, dtype=torch.float64))
    assert volume.std() > 1e-6


def test_fixed_prior_is_exactly_the_given_normal_in_any_precision():
    cfg = GlowConfig((1, 8, 8), 2, 1, 8, coupling="additive", prior="fixed", prior_std=0.3)
    model = Glow(cfg).double()
    assert not any("prior" in name for name, _ in model.named_parameters() if not name.startswith("splits"))
    z = torch.randn(4, *model.top_shape, dtype=torch.float64)
    mean, log_std = model.top_prior(z)
    assert log_std.item() == math.log(0.3) and mean.item() == 0.0


def test_sample_shape_and_inverse_consistency():
    model = _model(3, 8, 2, "affine", False, 2)
    torch.manual_seed(0)
    x = model.sample(5, temperature=0.7)
    assert x.shape == (5, 3, 8, 8) and torch.isfinite(x).all()
    zs, _, _ = model.encode(x)
    assert (model.decode(zs) - x).abs().max() < 1e-9


def test_linear_path_is_quadratic_log_density():
    model = _model(1, 4, 2, "additive", True, 3)
    lin = model.linear_path()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(lambda v: lin.log_prob(v.view(1, 1, 4, 4))[0], x.flatten())
    hess2 = torch.autograd.functional.hessian(lambda v: lin.log_prob(v.view(1, 1, 4, 4))[0],
                                              torch.rand(16, dtype=torch.float64))
    assert torch.allclose(hess, hess2, atol=1e-9)  # constant Hessian: log p is quadratic
    assert torch.linalg.eigvalsh(hess).max() < 0  # and concave (Gaussian)
    assert not model.levels[0][0].coupling.net.off  # the original is untouched


def test_wrong_image_shape_is_a_clear_error():
    model = _model(1, 4, 1, "affine", True, 0)
    with pytest.raises(DataError, match="wrong image shape"):
        model.log_prob(torch.rand(2, 3, 4, 4, dtype=torch.float64))


def test_config_rejects_unsqueezable_sizes():
    with pytest.raises(ValueError, match="cannot be squeezed"):
        GlowConfig((1, 28, 28), levels=3, steps=1, hidden=8)


@settings(max_examples=6, deadline=None)
@given(c=st.integers(1, 3), coupling=st.sampled_from(["affine", "additive"]), seed=st.integers(0, 1000))
def test_split_prior_stats_bound_the_split_term(c, coupling, seed):
    """log p(z_out | z_keep) = Σ −½log 2π − log σ − ½r² ≤ −n(½log 2π + min log σ) − ½ max r², with equality in
    each piece for a one-dimensional z_out; both statistics are attained by some dimension."""
    model = _model(c, 4, 2, coupling, True, seed)
    x = torch.rand(3, c, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    stats: dict = {}
    zs, terms, _ = model.encode(x, stats)
    assert set(stats) == {"split1_min_log_std", "split1_max_residual_sq"}
    n_out = zs[0][0].numel()
    bound = -n_out * (0.5 * math.log(2 * math.pi) + stats["split1_min_log_std"]) - 0.5 * stats["split1_max_residual_sq"]
    assert (terms["split1"] <= bound + 1e-9).all()
    assert (stats["split1_max_residual_sq"] >= 0).all()


def test_split_prior_stats_of_a_fixed_prior_are_exact():
    cfg = GlowConfig((1, 8, 8), levels=2, steps=2, hidden=8, coupling="additive", prior="fixed", split_prior="fixed",
                     prior_std=0.5)
    model = randomize(Glow(cfg), 3, 0.05).double().eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    stats: dict = {}
    zs, _, _ = model.encode(x, stats)
    assert torch.allclose(stats["split1_min_log_std"], torch.full((4,), math.log(0.5), dtype=torch.float64))
    assert torch.allclose(stats["split1_max_residual_sq"], (zs[0] / 0.5).square().flatten(1).amax(1))
