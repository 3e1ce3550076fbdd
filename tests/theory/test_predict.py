"""Predictions against exact answers: linear Gaussian flows, brute-force Hessians, signs."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empirical.io.errors import TheoryError
from empirical.models.flows import Glow, GlowConfig
from tests.helpers import randomize
from theory.predict import (
    averaged_curvature,
    closed_form,
    derived_coefficients,
    linear_path_curvature,
    monte_carlo,
    paper_coefficients,
    predict,
    taylor_gap,
)
from theory.quadratic import Moments, exact_quadratic


class LinearGaussianFlow(torch.nn.Module):
    """z = A x + b, p_z = N(0, σ²I): a constant-volume flow whose log p is exactly quadratic."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, sigma: float, shape):
        super().__init__()
        self.a, self.b, self.sigma, self.shape = torch.nn.Parameter(a), b, sigma, shape
        self.config = SimpleNamespace(shape=shape)

    def log_prob(self, x):
        z = x.flatten(1) @ self.a.T + self.b
        d = z.shape[1]
        return (-0.5 * (z**2).sum(1) / self.sigma**2 - 0.5 * d * math.log(2 * math.pi * self.sigma**2)
                + torch.linalg.slogdet(self.a)[1])

    def expected_log_p(self, mu, cov):
        """E_{N(μ, Σ)}[log p] in closed form, in latent space."""
        a = self.a.detach()
        m = a @ mu + self.b
        d = len(mu)
        return float(-0.5 * (m @ m + torch.trace(a @ cov @ a.T)) / self.sigma**2
                     - 0.5 * d * math.log(2 * math.pi * self.sigma**2) + torch.linalg.slogdet(a)[1])


def _exact_moment_samples(mu, chol, n, gen):
    """Samples whose empirical mean is exactly μ and empirical (1/n) covariance exactly LLᵀ."""
    w = torch.randn(n, len(mu), generator=gen, dtype=torch.float64)
    w = w - w.mean(0)
    w = w @ torch.linalg.inv(torch.linalg.cholesky(w.T @ w / n)).T
    return mu + w @ chol.T


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), sigma=st.floats(0.3, 3.0))
def test_linear_gaussian_flow_second_order_is_exact(seed, sigma):
    gen = torch.Generator().manual_seed(seed)
    shape, d = (1, 2, 3), 6
    a = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=gen, dtype=torch.float64)
    flow = LinearGaussianFlow(a, 0.1 * torch.randn(d, generator=gen, dtype=torch.float64), sigma, shape)
    mu_p, mu_q = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))
    l_p, l_q = (torch.tril(torch.randn(d, d, generator=gen, dtype=torch.float64)) for _ in range(2))
    exact = (flow.expected_log_p(mu_q, l_q @ l_q.T) - flow.expected_log_p(mu_p, l_p @ l_p.T))
    x0 = mu_p.view(1, *shape)

    # with samples of exactly the right moments the prediction is the exact gap
    xp, xq = (_exact_moment_samples(m, chol, 64, gen) for m, chol in ((mu_p, l_p), (mu_q, l_q)))
    pred = taylor_gap(flow, x0, xp.view(-1, *shape) - x0, xq.view(-1, *shape) - x0, mu_p, mu_q)
    assert pred["gap_nats"] == pytest.approx(exact, rel=1e-8, abs=1e-8)

    # with plain Monte Carlo samples it is within its standard error
    xp = mu_p + torch.randn(400, d, generator=gen, dtype=torch.float64) @ l_p.T
    xq = mu_q + torch.randn(400, d, generator=gen, dtype=torch.float64) @ l_q.T
    mc = taylor_gap(flow, x0, xp.view(-1, *shape) - x0, xq.view(-1, *shape) - x0, mu_p, mu_q)
    assert abs(mc["gap_nats"] - exact) < 5 * mc["stderr"] + 1e-9

    # the exact Hessian with the exact moments needs no samples at all
    quad = exact_quadratic(flow, x0.numpy())
    gap = quad.gap(Moments(mu_p.numpy(), (l_p @ l_p.T).numpy(), 1), Moments(mu_q.numpy(), (l_q @ l_q.T).numpy(), 1))
    assert gap["gap_nats"] == pytest.approx(exact, rel=1e-9, abs=1e-9)


def _cvglow(seed, levels=2, prior_std=1.0, couplings_off=True):
    cfg = GlowConfig((1, 4, 4), levels=levels, steps=2, hidden=4, coupling="additive", prior="fixed",
                     prior_std=prior_std, seed=seed)
    model = randomize(Glow(cfg), seed, 0.3).double().eval()
    if couplings_off:
        for module in model.modules():
            if hasattr(module, "net"):
                torch.nn.init.zeros_(module.net.out.conv.weight)
                torch.nn.init.zeros_(module.net.out.conv.bias)
        for split in model.splits:
            split.fix_prior(prior_std)  # the paper's class: every latent N(0, σ_ψ²)
    return model


def _moments(var_pixels, seed):
    """Moments (model space) with random means and the given per-dimension pixel variances, diagonal covariance."""
    rng = np.random.default_rng(seed)
    mean = (rng.uniform(0, 255, var_pixels.size) + 0.5) / 256
    return Moments(mean, np.diag(np.ravel(var_pixels)) / 256**2, 100)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), prior_std=st.floats(0.3, 2.0))
def test_closed_form_equals_brute_force_hessian(seed, prior_std):
    model = _cvglow(seed, prior_std=prior_std)
    rng = np.random.default_rng(seed)
    var_p, var_q = rng.uniform(100, 5000, (2, 1, 4, 4))
    hess = torch.autograd.functional.hessian(lambda v: model.log_prob(v.view(1, 1, 4, 4))[0],
                                             torch.rand(16, dtype=torch.float64))
    brute = 0.5 * float((torch.diagonal(hess).numpy() * (var_q - var_p).ravel() / 256**2).sum())
    got = closed_form(model, _moments(var_p, 2), _moments(var_q, 1))["gap_nats"]
    assert got == pytest.approx(brute, rel=1e-7, abs=1e-9)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), prior_std=st.floats(0.3, 2.0))
def test_closed_form_from_conv_weights_matches_linear_path(seed, prior_std):
    """Single level: -H_dd = ‖M_{:,c}‖²/σ² from the 1×1 conv weights and actnorm scales (derivation step)."""
    model = _cvglow(seed, levels=1, prior_std=prior_std)
    h_diag = torch.as_tensor(linear_path_curvature(model))
    squeezed, _ = model.squeeze(h_diag[None])
    per_channel = -squeezed[0].flatten(1)
    assert torch.allclose(per_channel, derived_coefficients(model)[:, None].expand_as(per_channel), rtol=1e-8)


def test_paper_coefficients_agree_without_channel_mixing():
    model = _cvglow(0, levels=1)
    assert not torch.allclose(paper_coefficients(model), derived_coefficients(model), rtol=1e-3)
    with torch.no_grad():
        for step in model.levels[0]:
            step.invconv.lower.zero_()
            step.invconv.upper.zero_()
            step.invconv.perm.copy_(torch.eye(4))
    assert torch.allclose(paper_coefficients(model), derived_coefficients(model), rtol=1e-10)


def test_diagonal_maps_are_sufficient_not_necessary_permutations_also_agree():
    """Pure permutations move channels, yet both coefficients are 1 for every channel."""
    model = _cvglow(1, levels=1)
    perms = [torch.eye(4)[[1, 0, 3, 2]], torch.eye(4)[[2, 3, 1, 0]]]
    with torch.no_grad():
        for step, perm in zip(model.levels[0], perms, strict=True):
            step.invconv.lower.zero_()
            step.invconv.upper.zero_()
            step.invconv.log_s.zero_()
            step.invconv.sign_s.fill_(1.0)
            step.invconv.perm.copy_(perm)
            step.actnorm.log_scale.zero_()
    assert not torch.allclose(model.levels[0][0].invconv.matrix(), torch.eye(4, dtype=torch.float64))
    ones = torch.ones(4, dtype=torch.float64)
    assert torch.allclose(paper_coefficients(model), ones) and torch.allclose(derived_coefficients(model), ones)


def test_signs_lower_variance_wins_and_swapping_flips():
    model = _cvglow(5)
    high, low = np.full((1, 4, 4), 3000.0), np.full((1, 4, 4), 1000.0)
    s_high, s_low = _moments(high, 0), _moments(low, 1)
    lower_q = closed_form(model, s_high, s_low)["gap_nats"]
    assert lower_q > 0  # q has lower variance -> higher predicted likelihood
    assert closed_form(model, s_low, s_high)["gap_nats"] == pytest.approx(-lower_q)


def test_exact_second_order_swaps_sign():
    model = _cvglow(7, couplings_off=False)
    rng = np.random.default_rng(0)
    a = rng.integers(60, 200, (50, 1, 4, 4), dtype=np.uint8)
    b = rng.integers(100, 156, (50, 1, 4, 4), dtype=np.uint8)
    x0 = np.full((1, 4, 4), 128.0)
    fwd = predict(model, x0, a, b, n_samples=50)["exact_second_order"]
    rev = predict(model, x0, b, a, n_samples=50)["exact_second_order"]
    assert rev["gap_nats"] == pytest.approx(-fwd["gap_nats"], rel=1e-9)
    assert fwd["gap_nats"] > 0  # b has lower variance around the same centre
    mc_fwd, mc_rev = fwd["monte_carlo"], rev["monte_carlo"]  # all 50 images: the same swap, same sign
    assert mc_rev["gap_nats"] == pytest.approx(-mc_fwd["gap_nats"], rel=1e-9) and mc_fwd["gap_nats"] > 0


def test_closed_form_refuses_affine_glow():
    cfg = GlowConfig((1, 4, 4), levels=1, steps=1, hidden=4, coupling="affine")
    with pytest.raises(TheoryError, match="constant-volume"):
        closed_form(Glow(cfg), _moments(np.ones((1, 4, 4)), 0), _moments(np.ones((1, 4, 4)), 1))


def test_graying_prediction_is_exact_for_a_quadratic_model():
    """For the linear path (log p quadratic) the graying curve equals a direct evaluation."""
    model = _cvglow(3).linear_path()
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    x0 = imgs.mean(0)
    alphas = [0.0, 0.5, 1.0]
    curve = predict(model, x0, imgs, imgs, gray_images=imgs, n_samples=40, alphas=alphas)["graying"]
    with torch.no_grad():
        base = model.log_prob((torch.from_numpy(imgs).double() + 0.5) / 256).mean()
        for a, pred in zip(alphas, curve, strict=True):
            blend = (a * torch.from_numpy(imgs).double() + (1 - a) * 128 + 0.5) / 256
            assert pred == pytest.approx(float(model.log_prob(blend).mean() - base), rel=1e-6, abs=1e-6)


def test_averaged_curvature_matches_autograd_on_a_quadratic_model():
    model = _cvglow(4).linear_path()
    gen = torch.Generator().manual_seed(0)
    pts, v_p, v_q = (torch.rand(6, 1, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    mu_p, mu_q = (torch.rand(1, 1, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    got = averaged_curvature(model, pts, v_p - 0.5, v_q - 0.5, mu_p, mu_q, batch_size=4)

    def f(v):
        return model.log_prob(v.view(1, 1, 4, 4))[0]

    hess = torch.autograd.functional.hessian(f, pts[0].flatten())
    g_bar = torch.stack([torch.autograd.functional.jacobian(f, p.flatten()) for p in pts]).mean(0)
    vq, vp = (v_q - 0.5).flatten(1), (v_p - 0.5).flatten(1)
    quad_q, quad_p = (torch.einsum("bi,ij,bj->b", v, hess, v) for v in (vq, vp))
    expected = float(g_bar @ (mu_q - mu_p).flatten() + 0.5 * (quad_q - quad_p).mean())
    assert got["gap_nats"] == pytest.approx(expected, rel=1e-9)


def test_monte_carlo_over_every_image_is_the_exact_second_order():
    """Sampling all N images (without replacement) makes the Monte Carlo mean the exact finite-set value."""
    model = _cvglow(11, couplings_off=False)
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (30, 1, 4, 4), dtype=np.uint8)
    b = rng.integers(40, 200, (30, 1, 4, 4), dtype=np.uint8)
    x0 = a.mean(0)
    exact = predict(model, x0, a, b, n_samples=30)["exact_second_order"]
    assert exact["monte_carlo"]["gap_nats"] == pytest.approx(exact["gap_nats"], rel=1e-9)
    sub = monte_carlo(model, a, b, x0, n_samples=12, seed=3)["monte_carlo"]
    assert abs(sub["gap_nats"] - exact["gap_nats"]) < 4 * sub["stderr"]
