"""Per-dimension means and variances (and, when asked, the covariance) of a dataset, float64, streamed.

Pixel units (0..255); theory.quadratic.Moments carries them to the model's space x̃ = (x + u)/256.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DatasetStats:
    """mean and var per dimension (C×H×W, pixel units); cov is D×D when asked for."""

    mean: np.ndarray
    var: np.ndarray
    n: int
    cov: np.ndarray | None = None


def compute_stats(images: np.ndarray, batch_size: int = 4096, full_cov: bool = False, ddof: int = 1) -> DatasetStats:
    """Streamed float64 moments (Chan et al. pairwise merge), so 73k images never sit in float64 at once.

    ``ddof=1``: unbiased estimates; ``ddof=0``: the moments of the empirical distribution (1/n).
    """
    n_total, mean, m2 = 0, None, None
    cov_acc = None
    for start in range(0, len(images), batch_size):
        batch = images[start: start + batch_size].astype(np.float64)
        nb = len(batch)
        b_mean = batch.mean(axis=0)
        b_m2 = ((batch - b_mean) ** 2).sum(axis=0)
        if mean is None:
            mean, m2 = b_mean, b_m2
        else:
            d = b_mean - mean
            tot = n_total + nb
            mean = mean + d * nb / tot
            m2 = m2 + b_m2 + d**2 * n_total * nb / tot
        n_total += nb
        if full_cov:
            flat = batch.reshape(nb, -1)
            cov_acc = flat.T @ flat if cov_acc is None else cov_acc + flat.T @ flat
    if mean is None:
        raise ValueError("no images to compute statistics from")
    var = m2 / max(n_total - ddof, 1)
    cov = None
    if full_cov:
        flat_mean = mean.reshape(-1)
        cov = (cov_acc - n_total * np.outer(flat_mean, flat_mean)) / max(n_total - ddof, 1)
    return DatasetStats(mean, var, n_total, cov)


def mean_difference(q: DatasetStats, p: DatasetStats) -> dict:
    """How far apart the means are (pixel units), per channel and overall, next to the spread."""
    diff = q.mean - p.mean
    rms_diff, rms_std = float(np.sqrt((diff**2).mean())), float(np.sqrt(p.var.mean()))
    return {"per_channel_mean_diff": diff.mean(axis=(1, 2)).tolist(), "rms_diff": rms_diff, "rms_std_p": rms_std,
            "relative": rms_diff / rms_std if rms_std > 0 else None}
