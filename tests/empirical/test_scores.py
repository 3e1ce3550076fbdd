"""Each OOD score and detection metric against a case with a known answer."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empirical import scores
from empirical.flows import Glow, GlowConfig
from empirical.likelihood import bits_per_dim
from empirical.train import perturb_subpixels
from tests.helpers import randomize
from verify.detect import auprc, auroc, fpr_at_tpr, metrics


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
