"""Each OOD score and detection metric against a case with a known answer."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empirical.io.errors import DgmOodError
from empirical.models.flows import Glow, GlowConfig
from empirical.models.likelihood import bits_per_dim
from empirical.ood import scores
from empirical.ood.analysis import ensemble_gap
from empirical.ood.metrics import auprc, auroc, auroc_interval, fpr_at_tpr, metrics
from empirical.training.steps import perturb_subpixels
from tests.helpers import randomize


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 50), seed=st.integers(0, 10_000))
def test_auroc_is_1_for_a_perfect_separator_and_0_reversed(n, seed):
    rng = np.random.default_rng(seed)
    low, high = rng.uniform(0, 1, n), rng.uniform(2, 3, n + 1)
    m = metrics(low, high)  # the report's code path
    assert m["auroc"] == 1.0 and m["auprc"] == pytest.approx(1.0) and m["fpr95"] == 0.0
    assert auroc(high, low) == 0.0 and fpr_at_tpr(high, low) == 1.0


def test_chance_and_a_known_roc():
    assert auroc(np.arange(4.0), np.arange(4.0)) == 0.5
    # scores OUT: 3, 1; IN: 2, 0 -> one of the four pairs is mis-ordered
    assert auroc(np.array([2.0, 0.0]), np.array([3.0, 1.0])) == 0.75
    assert auprc(np.array([2.0, 0.0]), np.array([3.0, 1.0])) == pytest.approx((1 + 2 / 3) / 2)
    assert fpr_at_tpr(np.array([2.0, 0.0]), np.array([3.0, 1.0])) == 0.5  # catching both OUT flags one IN


def test_typicality_of_the_models_own_samples_is_centred_on_zero():
    """Samples from a flow's own latent have E[-log p] = the entropy: the signed deviation from Ĥ (estimated on other
    samples of the model) averages to about zero, within its standard error."""
    cfg = GlowConfig((1, 8, 8), levels=2, steps=2, hidden=8, coupling="additive", prior="fixed", seed=3)
    model = randomize(Glow(cfg), 3, 0.1).double().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        bpd = bits_per_dim(model.log_prob(model.sample(4000)), cfg.dims).numpy()
    heldout, test = bpd[:2000], bpd[2000:]
    entropy = float(heldout.mean())
    signed = test - entropy
    assert abs(signed.mean()) < 4 * signed.std() / np.sqrt(len(signed)) + 4 * heldout.std() / np.sqrt(len(heldout))
    assert np.array_equal(scores.typicality(test, entropy), np.abs(signed))


@pytest.mark.parametrize("compressor", scores.COMPRESSORS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_a_constant_image_compresses_far_better_than_noise(compressor, shape):
    rng = np.random.default_rng(0)
    constant = np.full((3, *shape), 117, dtype=np.uint8)
    noise = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    bits_c, bits_n = scores.compressed_bits(constant, compressor), scores.compressed_bits(noise, compressor)
    assert (bits_c > 0).all() and (bits_n > 10 * bits_c).all()
    assert (bits_n > 0.9 * 8 * np.prod(shape)).all()  # uniform noise cannot be compressed below ~8 bits/dim


def test_unknown_compressor():
    with pytest.raises(ValueError, match="unknown compressor"):
        scores.compressed_bits(np.zeros((1, 1, 4, 4), np.uint8), "gif")


def test_complexity_subtracts_the_compressed_bits_per_dimension():
    assert np.allclose(scores.complexity(np.array([5.0]), np.array([784.0 * 2]), 784), [3.0])


def test_likelihood_ratio_of_a_model_against_itself_is_zero():
    bpd = np.random.default_rng(1).uniform(2, 8, 100)
    assert np.array_equal(scores.likelihood_ratio(bpd, bpd), np.zeros(100))


def test_waic_with_one_model_is_the_log_likelihood():
    log_px = np.random.default_rng(2).normal(1000, 50, 30)
    assert np.allclose(scores.waic(log_px[None]), -log_px)
    assert np.allclose(scores.ensemble_log_likelihood(log_px[None]), log_px)
    two = np.stack([log_px, log_px + 2.0])
    assert np.allclose(scores.waic(two), -(log_px + 1.0 - 1.0))  # mean +1, variance 1
    assert np.allclose(scores.ensemble_log_likelihood(two), log_px + np.log((1 + np.exp(2.0)) / 2))


def test_ensemble_summary_gives_waic_parts_and_the_gap_of_members_that_agree():
    dims = 784
    log_in, log_out = np.full(50, -800.0), np.full(40, -300.0)
    offsets = np.array([[-1.0], [0.0], [1.0]])  # three members: the same up to -1, 0, +1 nats (variance 2/3)
    ens = ensemble_gap(log_in + offsets, log_out + 2 * offsets, dims)
    assert ens["k"] == 3
    assert np.allclose(ens["member_gaps_bpd"], [(500 + d) / (dims * np.log(2)) for d in (-1, 0, 1)])
    parts = ens["waic_parts_nats"]
    assert np.isclose(parts["in_test"]["mean_log_px"], -800) and np.isclose(parts["out_test"]["mean_log_px"], -300)
    assert np.isclose(parts["in_test"]["var_log_px"], 2 / 3) and np.isclose(parts["out_test"]["var_log_px"], 8 / 3)


def test_waic_parts_median_is_not_carried_by_one_image_the_members_disagree_about():
    log_out = np.tile(np.full(5, -300.0), (2, 1))  # two members agreeing on five images...
    log_out[:, 0] = [-300.0, -2300.0]  # ...but for one: means -300 and -1300, variances 0 and 1000² = 1e6
    out = ensemble_gap(np.full((2, 3), -800.0), log_out, 784)["waic_parts_nats"]["out_test"]
    assert np.isclose(out["var_log_px"], 1e6 / 5) and out["median_var_log_px"] == 0.0
    assert np.isclose(out["mean_log_px"], -500.0) and out["median_log_px"] == -300.0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.sampled_from([2, 5, 10]))
def test_bootstrap_threshold_flags_about_one_percent_of_in_distribution_batches(seed, m):
    rng = np.random.default_rng(seed)
    heldout, fresh = rng.normal(4.0, 0.3, 2000), rng.normal(4.0, 0.3, 20_000)
    entropy = heldout.mean()
    eps = scores.bootstrap_threshold(heldout, entropy, m, rng, alpha=0.99)
    flagged = (scores.batch_typicality(fresh, entropy, m, rng) > eps).mean()
    assert flagged < 0.05


def test_batches_partition_without_overlap():
    rng = np.random.default_rng(0)
    values = np.arange(23.0)
    means = scores.batches(values, 5, rng)
    assert means.shape == (4,) and len(set(np.round(means * 5).tolist())) == 4


def test_perturbation_replaces_about_mu_of_the_subpixels():
    x = torch.full((64, 3, 32, 32), 7, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    y = perturb_subpixels(x, 0.2, gen)
    changed = (y != x).float().mean().item()
    assert 0.2 * 254 / 256 - 0.01 < changed < 0.2 + 0.01  # a replacement may draw the same value (1/256)
    assert torch.equal(perturb_subpixels(x, 0.0, gen), x) and x.eq(7).all()


# ------------------------------------------------------------------------------- the field's stronger scores
def test_dose_ranks_an_image_with_outlying_statistics_above_one_inside():
    rng = np.random.default_rng(0)
    heldout = {"log_px": rng.normal(500, 10, 400), "latent_top": rng.normal(-300, 5, 400),
               "volume": np.full(400, 12.0)}  # a constant statistic (CV-Glow's volume) is left out
    inside = {"log_px": np.array([500.0]), "latent_top": np.array([-300.0]), "volume": np.array([12.0])}
    outside = {"log_px": np.array([560.0]), "latent_top": np.array([-300.0]), "volume": np.array([99.0])}
    assert scores.dose(heldout, outside)[0] > scores.dose(heldout, inside)[0] + 10
    assert np.isfinite(scores.dose(heldout, {k: v * 1e6 for k, v in outside.items()})).all()


def test_dose_with_nothing_but_constant_statistics_is_refused_not_zero():
    heldout = {"log_px": np.full(5, 500.0), "volume": np.full(5, 12.0)}
    with pytest.raises(DgmOodError, match="every summary statistic is constant"):
        scores.dose(heldout, {"log_px": np.array([1.0]), "volume": np.array([2.0])})


def test_fisher_combination_is_zero_at_the_heldout_mean_and_grows_both_ways():
    rng = np.random.default_rng(1)
    held = {k: (v - v.mean()) / v.std() * sd + mu for (k, mu, sd), v in
            zip((("a", 0, 1), ("b", 5, 2)), (rng.normal(size=10_000), rng.normal(size=10_000)), strict=True)}
    at_mean = scores.fisher_combination(held, {"a": np.array([held["a"].mean()]), "b": np.array([held["b"].mean()])})
    assert at_mean[0] == pytest.approx(0.0, abs=1e-12)
    far = scores.fisher_combination(held, {"a": np.array([4.0, -4.0]), "b": np.array([5.0, 5.0])})
    assert far[0] == pytest.approx(far[1]) and far[0] == pytest.approx(-2 * np.log(2 * 3.1671e-5), rel=1e-4)


def test_level_ratio_and_per_latent_scores():
    assert scores.level_ratio(np.array([-10.0, 5.0]), np.array([-2.0, -2.0])).tolist() == [-8.0, 7.0]


def test_fpr_at_80_and_the_bootstrap_interval_of_the_auroc():
    in_s, out_s = np.arange(10.0), np.arange(10.0) + 5  # OUT 5..14 against IN 0..9
    m = metrics(in_s, out_s)
    assert m["fpr80"] == pytest.approx(0.3) and m["fpr95"] == pytest.approx(0.5)  # thresholds 7 and 5
    lo, hi = m["auroc_ci95"]
    assert lo < m["auroc"] < hi
    assert auroc_interval(np.zeros(20), np.ones(20)) == (1.0, 1.0)  # perfect separation stays perfect
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.7, 1, 3000)
    lo, hi = auroc_interval(a, b)
    assert lo < auroc(a, b) < hi and 0.01 < hi - lo < 0.05  # about ±1.96·s.e. of an AUROC near 0.69


def test_the_gradient_norm_vanishes_at_a_stationary_point_of_the_images_log_likelihood():
    from empirical.ood.model_scores import gradient_norms

    class Centred(torch.nn.Module):
        """log p = Σ log N(x̃; μ, 0.1²) on bin centres (discrete): ∇_μ log p = (x̃ − μ)/σ² is 0 at μ = x̃."""

        image_shape, discrete = (1, 2, 2), True

        def __init__(self, mu):
            super().__init__()
            self.mu = torch.nn.Parameter(mu)

        def log_prob(self, x):
            return (-0.5 * ((x - self.mu) / 0.1) ** 2).flatten(1).sum(1)

    images = np.array([[[[10, 20], [30, 40]]], [[[50, 60], [70, 80]]]], dtype=np.uint8)
    model = Centred((torch.from_numpy(images[0]).float() + 0.5) / 256)
    norms = gradient_norms(model, images)["mu"]
    assert norms[0] == pytest.approx(np.log(1e-300)) and norms[1] > -50


def test_gradient_norms_of_every_parameter_tensor_match_their_closed_form_across_batches():
    from empirical.ood.model_scores import gradient_norms

    class Tilted(torch.nn.Module):
        """log p = Σ log N(x̃; μ, 0.1²) + c·Σ x̃, c a 0-d tensor: ‖∇_μ‖² = Σ (x̃ − μ)²/0.1⁴, ‖∇_c‖² = (Σ x̃)²."""

        image_shape, discrete = (1, 2, 2), True

        def __init__(self):
            super().__init__()
            self.mu, self.c = torch.nn.Parameter(torch.full((1, 2, 2), 0.25)), torch.nn.Parameter(torch.tensor(2.0))

        def log_prob(self, x):
            return (-0.5 * ((x - self.mu) / 0.1) ** 2).flatten(1).sum(1) + self.c * x.flatten(1).sum(1)

    images = np.random.default_rng(0).integers(0, 256, (5, 1, 2, 2), dtype=np.uint8)
    x = (images.astype(np.float64) + 0.5) / 256  # bin centres
    norms = gradient_norms(Tilted(), images, batch_size=2)  # three batches, the last one short
    assert set(norms) == {"mu", "c"}
    assert np.allclose(norms["mu"], np.log((((x - 0.25) / 0.01) ** 2).reshape(5, -1).sum(1)), rtol=1e-5)
    assert np.allclose(norms["c"], np.log(x.reshape(5, -1).sum(1) ** 2), rtol=1e-5)


def test_likelihood_regret_is_zero_where_the_encoder_is_already_optimal_and_positive_where_it_is_not():
    from empirical.models.vae import VAE, VAEConfig
    from empirical.ood.model_scores import likelihood_regret

    vae = VAE(VAEConfig((1, 8, 8), latent=4, hidden=8, eval_samples=10)).eval()
    with torch.no_grad():  # a decoder that ignores z and an encoder that outputs the prior: q = p(z) is optimal
        vae.from_z.weight.zero_()
        vae.to_q.weight.zero_()
        vae.to_q.bias.zero_()
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert np.allclose(likelihood_regret(vae, images.numpy()), 0.0, atol=1e-5)
    with torch.no_grad():
        vae.to_q.bias[:4].fill_(3.0)  # μ = 3: the KL term is 4.5 nats per latent too high
    regret = likelihood_regret(vae, images.numpy())
    assert (regret > 1.0).all()
    assert all(p.requires_grad for p in vae.parameters())  # the model is left as it was
