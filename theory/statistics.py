"""Per-dimension means and variances of a dataset, float64, streamed in batches and cached.

Pixel units (0..255). In the model's space x̃ = (x + u)/256 the mean is (μ + ½)/256 and the variance
(σ² + 1/12)/256²; the dequantisation variance 1/12 is the same for every dataset and cancels in gaps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from empirical import data


@dataclass(frozen=True)
class DatasetStats:
    """mean and var per dimension (C×H×W, pixel units); cov is D×D when asked for."""

    mean: np.ndarray
    var: np.ndarray
    n: int
    cov: np.ndarray | None = None

    def channel_sums(self) -> dict[str, np.ndarray]:
        """Σ_{h,w} of mean and var for each channel (the closed form's per-channel sums)."""
        return {"mean": self.mean.sum(axis=(1, 2)), "var": self.var.sum(axis=(1, 2))}

    def channel_means(self) -> np.ndarray:
        return self.mean.mean(axis=(1, 2))

    def model_space(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, var) of x̃ = (x + u)/256, dequantisation variance included."""
        return (self.mean + 0.5) / 256.0, (self.var + 1.0 / 12.0) / 256.0**2


def compute_stats(images: np.ndarray, batch_size: int = 4096, full_cov: bool = False) -> DatasetStats:
    """Streamed float64 moments (Chan et al. pairwise merge), so 73k images never sit in float64 at once."""
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
    var = m2 / max(n_total - 1, 1)
    cov = None
    if full_cov:
        flat_mean = mean.reshape(-1)
        cov = (cov_acc - n_total * np.outer(flat_mean, flat_mean)) / max(n_total - 1, 1)
    return DatasetStats(mean, var, n_total, cov)


def cached_stats(images: np.ndarray, tag: str, cache: Path | None = None) -> DatasetStats:
    """compute_stats, cached under the data cache by a hash of the images' bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()[:16]
    path = (cache or data.cache_dir()) / f"stats-{tag}-{digest}.npz"
    if path.is_file():
        with np.load(path) as z:
            return DatasetStats(z["mean"], z["var"], int(z["n"]))
    stats = compute_stats(images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mean=stats.mean, var=stats.var, n=stats.n)
    except OSError:
        pass
    return stats


def mean_difference(q: DatasetStats, p: DatasetStats) -> dict:
    """How far apart the means are (pixel units), per channel and overall, next to the spread."""
    diff = q.mean - p.mean
    rms_diff, rms_std = float(np.sqrt((diff**2).mean())), float(np.sqrt(p.var.mean()))
    return {"per_channel_mean_diff": diff.mean(axis=(1, 2)).tolist(), "rms_diff": rms_diff, "rms_std_p": rms_std,
            "relative": rms_diff / rms_std if rms_std > 0 else None}
