"""Streamed float64 moments equal numpy's (both normalisations); model-space moments; mean differences."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.quadratic import Moments
from theory.statistics import compute_stats, mean_difference


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 60), batch=st.integers(1, 25), seed=st.integers(0, 1000))
def test_streamed_moments_equal_numpy(n, batch, seed):
    x = np.random.default_rng(seed).integers(0, 256, (n, 2, 3, 3), dtype=np.uint8)
    s = compute_stats(x, batch_size=batch, full_cov=True)
    assert np.allclose(s.mean, x.mean(0)) and np.allclose(s.var, x.var(0, ddof=1))
    assert np.allclose(s.cov, np.cov(x.reshape(n, -1).T.astype(np.float64)))
    s0 = compute_stats(x, batch_size=batch, full_cov=True, ddof=0)
    assert np.allclose(s0.var, x.var(0)) and np.allclose(s0.cov, np.cov(x.reshape(n, -1).T.astype(np.float64),
                                                                         bias=True))


def test_model_space_moments_and_dequantisation_variance():
    x = np.random.default_rng(0).integers(0, 256, (30, 1, 2, 2), dtype=np.uint8)
    m = Moments.of_images(x)
    centres = (x.reshape(30, -1).astype(np.float64) + 0.5) / 256
    assert np.allclose(m.mean, centres.mean(0)) and np.allclose(m.cov, np.cov(centres.T, bias=True))
    assert np.allclose(m.dequantised().var, x.reshape(30, -1).var(0) / 256**2 + 1 / (12 * 256**2))
    gray = m.blend(0.25, 0.5)
    assert np.allclose(gray.mean, 0.25 * m.mean + 0.375) and np.allclose(gray.cov, m.cov / 16)


def test_mean_difference_per_channel():
    p = compute_stats(np.zeros((4, 3, 2, 2), dtype=np.uint8) + np.array([10, 20, 30], np.uint8)[:, None, None])
    q = compute_stats(np.zeros((4, 3, 2, 2), dtype=np.uint8) + np.array([12, 20, 27], np.uint8)[:, None, None])
    assert np.allclose(mean_difference(q, p)["per_channel_mean_diff"], [2, 0, -3])
