"""The assumption ledger against exact answers: linear Gaussian flows, brute-force Hessians, the paper's class."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empirical.models.flows import Glow, GlowConfig
from tests.helpers import randomize
from theory import ledger
from theory.predict import closed_form, paper_coefficients
from theory.quadratic import Moments, exact_quadratic, quadratic_diagonal

FAST = settings(max_examples=6, deadline=None)
SHAPE = (1, 4, 4)
D = 16


def _glow(seed: int, *, levels: int = 2, prior_std: float = 1.0, split_prior: str = "learned",
          couplings: bool = True) -> Glow:
    cfg = GlowConfig(SHAPE, levels=levels, steps=2, hidden=4, coupling="additive", prior="fixed",
                     prior_std=prior_std, split_prior=split_prior, seed=seed)
    model = randomize(Glow(cfg), seed, 0.3).double().eval()
    if not couplings:
        for module in model.modules():
            if hasattr(module, "net"):
                module.net.off = True
    return model


def _latents(model: Glow, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([z.flatten(1) for z in model.encode(x.view(-1, *SHAPE))[0]], 1)


def _random_moments(gen: torch.Generator, *, diagonal: bool = False) -> Moments:
    mean = 0.5 + 0.1 * torch.randn(D, generator=gen, dtype=torch.float64)
    a = 0.05 * torch.randn(D, D, generator=gen, dtype=torch.float64)
    cov = a @ a.T + 1e-4 * torch.eye(D, dtype=torch.float64)
    if diagonal:
        cov = torch.diag(torch.diagonal(cov))
    return Moments(mean.numpy(), cov.numpy(), 1)


def _samples(m: Moments, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points whose empirical (1/n) mean and covariance are exactly m's."""
    w = torch.randn(n, D, generator=gen, dtype=torch.float64)
    w = w - w.mean(0)
    w = w @ torch.linalg.inv(torch.linalg.cholesky(w.T @ w / n)).T
    return torch.as_tensor(m.mean) + w @ torch.linalg.cholesky(torch.as_tensor(m.cov)).T


def _direct_gap(model: Glow, p: Moments, q: Moments, gen: torch.Generator) -> float:
    with torch.no_grad():
        return float(model.log_prob(_samples(q, 64, gen).view(-1, *SHAPE)).mean()
                     - model.log_prob(_samples(p, 64, gen).view(-1, *SHAPE)).mean())


def _rows(model: Glow, p: Moments, q: Moments) -> dict[int, dict]:
    quad = exact_quadratic(model, p.mean)
    return {r["row"]: r for r in ledger.predicted_rows(model, quad, p, q)}


@FAST
@given(seed=st.integers(0, 10_000), prior_std=st.floats(0.4, 2.0))
def test_rows_4_to_6_are_exact_for_a_linear_gaussian_flow(seed, prior_std):
    """A CV-Glow in the paper's class with its couplings off is a linear Gaussian flow: row 4 is its exact gap,
    row 5 the exact gap when the means agree, row 6 when in addition the covariances are diagonal."""
    model = _glow(seed, prior_std=prior_std, split_prior="fixed", couplings=False)
    gen = torch.Generator().manual_seed(seed)
    p, q = _random_moments(gen), _random_moments(gen)
    assert _rows(model, p, q)[4]["gap_nats"] == pytest.approx(_direct_gap(model, p, q, gen), rel=1e-7, abs=1e-7)
    q_same_mean = Moments(p.mean, q.cov, 1)
    assert _rows(model, p, q_same_mean)[5]["gap_nats"] == pytest.approx(
        _direct_gap(model, p, q_same_mean, gen), rel=1e-7, abs=1e-7)
    p_diag, q_diag = _random_moments(gen, diagonal=True), _random_moments(gen, diagonal=True)
    q_diag = Moments(p_diag.mean, q_diag.cov, 1)
    assert _rows(model, p_diag, q_diag)[6]["gap_nats"] == pytest.approx(
        _direct_gap(model, p_diag, q_diag, gen), rel=1e-7, abs=1e-7)


@FAST
@given(seed=st.integers(0, 10_000))
def test_row_4_is_the_gaussian_expectation_with_the_known_linear_map(seed):
    """E_N(μ,Σ)[log p] for z = Mx + b ~ N(0, σ²I): -(‖Mμ + b‖² + Tr MΣMᵀ)/(2σ²) + const, M from autograd."""
    sigma = 0.7
    model = _glow(seed, prior_std=sigma, split_prior="fixed", couplings=False)
    gen = torch.Generator().manual_seed(seed)
    p, q = _random_moments(gen), _random_moments(gen)
    m = torch.autograd.functional.jacobian(lambda v: _latents(model, v)[0], torch.as_tensor(p.mean))
    b = _latents(model, torch.zeros(D, dtype=torch.float64))[0].detach()

    def expected(mo: Moments) -> float:
        mu, cov = torch.as_tensor(mo.mean), torch.as_tensor(mo.cov)
        return float(-((m @ mu + b) ** 2).sum() - torch.trace(m @ cov @ m.T)) / (2 * sigma**2)

    assert _rows(model, p, q)[4]["gap_nats"] == pytest.approx(expected(q) - expected(p), rel=1e-8)


@FAST
@given(seed=st.integers(0, 10_000), prior_std=st.floats(0.4, 2.0))
def test_full_covariance_row_equals_the_brute_force_hessian_trace(seed, prior_std):
    """Row 5 = ½Tr{H_lin(Σ_q - Σ_p*)} with H_lin the autograd Hessian of the linear path (learned split priors)."""
    model = _glow(seed, prior_std=prior_std)
    lin = model.linear_path()
    hess = torch.autograd.functional.hessian(lambda v: lin.log_prob(v.view(1, *SHAPE))[0],
                                             torch.rand(D, dtype=torch.float64))
    gen = torch.Generator().manual_seed(seed)
    p, q = _random_moments(gen), _random_moments(gen)
    brute = 0.5 * float((hess.numpy() * (q.cov - p.cov)).sum())
    assert _rows(model, p, q)[5]["gap_nats"] == pytest.approx(brute, rel=1e-8, abs=1e-10)


@FAST
@given(seed=st.integers(0, 10_000), prior_std=st.floats(0.4, 2.0), split_prior=st.sampled_from(["learned", "fixed"]))
def test_linear_path_hessian_is_minus_jtj_over_sigma_squared(seed, prior_std, split_prior):
    """On the linear path every latent is N(0, σ_ψ²) with the model's own σ_ψ: H = -JᵀJ/σ_ψ²."""
    lin = _glow(seed, prior_std=prior_std, split_prior=split_prior).linear_path()
    x = torch.rand(D, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: _latents(lin, v)[0], x)
    hess = torch.autograd.functional.hessian(lambda v: lin.log_prob(v.view(1, *SHAPE))[0], x)
    assert torch.allclose(hess, -jac.T @ jac / prior_std**2, rtol=1e-9, atol=1e-9)


def test_fixed_split_prior_model_is_the_paper_class():
    model = _glow(3, prior_std=0.5, split_prior="fixed")
    assert model.config.paper_class and all(s.prior is None for s in model.splits)
    assert not any("splits" in name for name, _ in model.named_parameters())
    x = torch.rand(3, *SHAPE, dtype=torch.float64)
    z, terms, _ = model.encode(x)
    expected = torch.distributions.Normal(0.0, 0.5).log_prob(z[0]).flatten(1).sum(1)
    assert torch.allclose(terms["split1"], expected)


def test_diagonal_row_is_the_closed_form_and_paper_row_uses_the_printed_coefficient():
    model = _glow(5, levels=1)
    gen = torch.Generator().manual_seed(0)
    p, q = _random_moments(gen), _random_moments(gen)
    rows = _rows(model, p, q)
    assert rows[6]["gap_nats"] == pytest.approx(closed_form(model, p, q)["gap_nats"], rel=1e-9)
    h_paper = torch.as_tensor(quadratic_diagonal(ledger.paper_path(model)))
    squeezed, _ = model.squeeze(h_paper[None])
    per_channel = -squeezed[0].flatten(1)
    assert torch.allclose(per_channel, paper_coefficients(model)[:, None].expand_as(per_channel), rtol=1e-8)
    expected = 0.5 * float(h_paper.numpy().ravel() @ (q.var - p.var))
    assert rows[7]["gap_nats"] == pytest.approx(expected, rel=1e-9)


def test_affine_glow_gets_rows_4_to_7_as_not_applicable():
    cfg = GlowConfig(SHAPE, levels=1, steps=1, hidden=4, coupling="affine")
    model = randomize(Glow(cfg), 0, 0.1).double().eval()
    gen = torch.Generator().manual_seed(1)
    p, q = _random_moments(gen), _random_moments(gen)
    rows = ledger.predicted_rows(model, exact_quadratic(model, p.mean), p, q)
    assert [r["row"] for r in rows] == [3, 4, 5, 6, 7]
    assert rows[0]["gap_nats"] is not None and all(r["gap_nats"] is None and "constant-volume" in r["note"]
                                                   for r in rows[1:])


def test_linear_path_check_evaluates_the_model_on_the_images():
    model = _glow(7)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, *SHAPE), dtype=np.uint8)
    b = rng.integers(60, 200, (40, *SHAPE), dtype=np.uint8)
    p, q = Moments.of_images(a), Moments.of_images(b)
    rows = ledger.predicted_rows(model, exact_quadratic(model, p.mean), p, q)
    check = ledger.linear_path_check(model, rows, a, b)
    assert check["abs_diff"] < 1e-8 * max(1.0, abs(check["direct_nats"]))


def test_assemble_ratios_signs_and_the_biggest_move():
    rows = ledger.measured_rows(100.0, 2.0, {"latent_top": (-50.0, 1.0), "latent_split1": (150.0, 1.0),
                                             "volume": (0.0, 0.0)})
    rows += [ledger._row(3, 250.0), ledger._row(4, -20.0), ledger._row(5, -10.0), ledger._row(6, 900.0),
             ledger._row(7, 300.0)]
    book = ledger.assemble(rows, dims=784)
    by_key = {r["key"]: r for r in book["rows"]}
    assert sum(r["share"] for r in book["rows"] if r["row"] == 2) == pytest.approx(1.0)
    assert by_key["exact_second_order"]["ratio"] == pytest.approx(2.5)
    assert by_key["linear_path"]["sign_agrees"] is False and by_key["diagonal_covariance"]["sign_agrees"] is True
    assert book["moves_most"]["from_row"] == 5 and book["moves_most"]["to_row"] == 6  # ×90 with a sign flip
    assert book["moves_most"]["adds"] == ["diagonal_covariance"] and "sign flip" in book["summary"]
    assert "moves_most_derived" not in book  # the largest step is already one of the derivation's own
    assert book["closest"]["row"] == 3
    table = "\n".join(ledger.markdown_table(book))
    assert "`diagonal_covariance`" in table and "share 150.0%" in table


def test_when_the_paper_coefficient_moves_most_the_derivations_largest_step_is_named_too():
    rows = ledger.measured_rows(100.0, 2.0, {"latent_top": (100.0, 2.0)})
    rows += [ledger._row(3, 150.0), ledger._row(4, 5.0), ledger._row(5, 6.0), ledger._row(6, -60.0),
             ledger._row(7, 1e-4)]  # 6 → 7: ×1.7e-6; among rows 1, 3–6 the largest is 3 → 4 (×1/30; 5 → 6 is ×-10)
    book = ledger.assemble(rows, dims=784)
    assert (book["moves_most"]["from_row"], book["moves_most"]["to_row"]) == (6, 7)
    derived = book["moves_most_derived"]
    assert (derived["from_row"], derived["to_row"]) == (3, 4) and derived["factor"] == pytest.approx(5 / 150)
    assert "Among the derivation's own steps (rows 1, 3–6) it is row 3 → 4 (adds linear_path)" in book["summary"]


def test_a_measured_gap_indistinguishable_from_zero_is_not_used_for_ratios():
    rows = ledger.measured_rows(-7.0, 14.0, {"latent_top": (-7.0, 14.0)})
    rows += [ledger._row(3, 400.0), ledger._row(4, -3800.0), ledger._row(5, 2400.0), ledger._row(6, 169_000.0),
             ledger._row(7, 27_000.0)]
    book = ledger.assemble(rows, dims=3072)
    assert book["closest"] == {"row": 3, "ratio": None, "distance_nats": 407.0}
    assert "not significantly different from 0" in book["summary"] and "the nearest row is 3" in book["summary"]
    assert all(r.get("sign_agrees") is None for r in book["rows"])
