"""PixelCNN: autoregressive masking checked with autograd, and exact normalisation."""

import itertools

import pytest
import torch

from empirical.io.errors import DataError
from empirical.models.likelihood import bin_centres, log_likelihood
from empirical.models.pixelcnn import PixelCNN, PixelCNNConfig
from tests.helpers import randomize


@pytest.mark.parametrize("channels", [1, 3])
def test_output_depends_only_on_earlier_subpixels(channels):
    model = randomize(PixelCNN(PixelCNNConfig((channels, 5, 5), hidden=6, blocks=2)), 0, 0.3).double()
    n_sub, seen = channels * 25, 0

    def order(c, i, j):  # raster order, colour channels R→G→B within a pixel
        return (i * 5 + j) * channels + c

    x = (torch.rand(1, channels, 5, 5, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    logits = model.network(x)
    for c, i, j in itertools.product(range(channels), range(5), range(5)):
        (grad,) = torch.autograd.grad(logits[0, :, c, i, j].sum(), x, retain_graph=True)
        for c2, i2, j2 in itertools.product(range(channels), range(5), range(5)):
            if order(c2, i2, j2) >= order(c, i, j):
                assert grad[0, c2, i2, j2] == 0, f"output {(c, i, j)} sees input {(c2, i2, j2)}"
            else:
                seen += bool(grad[0, c2, i2, j2] != 0)
    assert seen > n_sub  # and it does see earlier sub-pixels


def test_probabilities_sum_to_one_over_all_images():
    """Σ_x P(x) = 1 over all 256² images of a 1×1×2 image (the joint, not just each softmax)."""
    model = randomize(PixelCNN(PixelCNNConfig((1, 1, 2), hidden=4, blocks=1)), 1, 0.5).double().eval()
    values = torch.arange(256)
    grid = torch.cartesian_prod(values, values).to(torch.uint8).view(-1, 1, 1, 2)
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob_discrete(grid), 0)
    assert total.item() == pytest.approx(0.0, abs=1e-9)


def test_log_prob_is_exact_and_constant_on_each_bin_and_sample_runs():
    model = PixelCNN(PixelCNNConfig((1, 4, 4), hidden=4, blocks=1)).eval()
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    exact = model.log_prob_discrete(x)
    for u in (0.0, 0.5, 0.999):  # any point of the bin [x, x+1)/256 gives log P(x) + D·log 256
        x_tilde = (x.float() + u) / 256
        assert torch.allclose(model.log_prob(x_tilde) - 16 * torch.log(torch.tensor(256.0)), exact)
    assert torch.equal(log_likelihood(model, x)["log_px"], model.log_prob(bin_centres(x)))  # no noise drawn
    torch.manual_seed(0)
    s = model.sample(2)
    assert s.shape == (2, 1, 4, 4) and s.dtype == torch.uint8
    with pytest.raises(DataError, match="wrong image shape"):
        model.log_prob(torch.zeros(1, 3, 4, 4))
