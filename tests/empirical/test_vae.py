"""VAE: discretised logistic is a distribution; IWAE_1 = ELBO sample; IWAE grows with k on average."""

import pytest
import torch

from empirical.models.likelihood import bin_centres
from empirical.models.vae import VAE, VAEConfig, discretized_logistic_log_prob


def test_discretized_logistic_sums_to_one():
    x = torch.arange(256).view(256, 1)
    for mean, log_scale in [(0.0, -3.0), (0.7, -5.0), (-0.99, -1.0)]:
        lp = discretized_logistic_log_prob(x, torch.full((256, 1), mean), torch.full((256, 1), log_scale))
        assert torch.logsumexp(lp.flatten().double(), 0).item() == pytest.approx(0.0, abs=1e-4)


def _model():
    return VAE(VAEConfig((1, 8, 8), latent=4, hidden=8, eval_samples=20)).eval()  # seeded by its config


def test_iwae_with_one_sample_equals_the_elbo_sample():
    model = _model()
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    iwae, elbo = model.iwae(x, 1, torch.Generator().manual_seed(3))
    assert torch.allclose(iwae, elbo)


def test_iwae_increases_with_k_on_average():
    model = _model()
    x = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    means = []
    for k in (1, 10, 100):
        iwae, _ = model.iwae(x, k, torch.Generator().manual_seed(k))
        means.append(iwae.mean().item())
    assert means[0] <= means[1] <= means[2]


def test_training_mode_uses_the_elbo_and_eval_the_iwae():
    model = _model()
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert set(model.train().log_prob_parts(bin_centres(x))) == {"log_px"}
    out = model.eval().log_prob_parts(bin_centres(x), torch.Generator().manual_seed(0))
    assert set(out) == {"log_px", "elbo"} and (out["log_px"] >= out["elbo"] - 1e-3).all()
    assert model.sample(3).shape == (3, 1, 8, 8)
