"""Streamed float64 moments equal numpy's; caching; mean-difference diagnostic."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.statistics import cached_stats, compute_stats, mean_difference


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 60), batch=st.integers(1, 25), seed=st.integers(0, 1000))
def test_streamed_moments_equal_numpy(n, batch, seed):
    x = np.random.default_rng(seed).integers(0, 256, (n, 2, 3, 3), dtype=np.uint8)
    s = compute_stats(x, batch_size=batch, full_cov=True)
    assert np.allclose(s.mean, x.mean(0)) and np.allclose(s.var, x.var(0, ddof=1))
    assert np.allclose(s.cov, np.cov(x.reshape(n, -1).T.astype(np.float64)))
    assert np.allclose(s.channel_sums()["var"], x.var(0, ddof=1).sum(axis=(1, 2)))


def test_model_space_adds_dequantisation_variance():
    x = np.random.default_rng(0).integers(0, 256, (30, 1, 2, 2), dtype=np.uint8)
    mean, var = compute_stats(x).model_space()
    assert np.allclose(mean, (x.mean(0) + 0.5) / 256) and np.allclose(var, (x.var(0, ddof=1) + 1 / 12) / 256**2)


def test_cache_round_trip(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (10, 1, 2, 2), dtype=np.uint8)
    a = cached_stats(x, "t", tmp_path)
    b = cached_stats(x, "t", tmp_path)
    assert len(list(tmp_path.glob("stats-t-*.npz"))) == 1 and np.array_equal(a.var, b.var)


def test_mean_difference_per_channel():
    p = compute_stats(np.zeros((4, 3, 2, 2), dtype=np.uint8) + np.array([10, 20, 30], np.uint8)[:, None, None])
    q = compute_stats(np.zeros((4, 3, 2, 2), dtype=np.uint8) + np.array([12, 20, 27], np.uint8)[:, None, None])
    assert np.allclose(mean_difference(q, p)["per_channel_mean_diff"], [2, 0, -3])
