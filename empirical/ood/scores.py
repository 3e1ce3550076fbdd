"""Out-of-distribution scores built on a generative model's likelihood: one function each, higher = more OOD.

Per-image inputs are bits/dim (``bpd``, = -log₂ p(x)/D for the 8-bit image) or log-likelihoods in nats; every
score is a NumPy array with one value per image (or per batch, for the batch typicality test).
"""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
from PIL import Image

from empirical.io.errors import DgmOodError

COMPRESSORS = ("png", "jpegxl")


def likelihood(bpd: np.ndarray) -> np.ndarray:
    """The paper's baseline (Nalisnick et al., ICLR 2019): S(x) = -log₂ p(x)/D, the bits/dim itself."""
    return np.asarray(bpd, dtype=np.float64)


def typicality(bpd: np.ndarray, entropy: float) -> np.ndarray:
    """Nalisnick, Matsukawa, Teh & Lakshminarayanan (2019), "Detecting out-of-distribution inputs to deep
    generative models using typicality", M = 1: S(x) = |-log₂ p(x)/D - Ĥ|, Ĥ the mean bits/dim of held-out
    in-distribution images (an estimate of the model's entropy rate)."""
    return np.abs(np.asarray(bpd, dtype=np.float64) - entropy)


def batches(values: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """The means of non-overlapping random batches of M values (a random partition; the remainder is dropped)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values) // m
    return values[rng.permutation(len(values))[: n * m]].reshape(n, m).mean(1)


def batch_typicality(bpd: np.ndarray, entropy: float, m: int, rng: np.random.Generator) -> np.ndarray:
    """The typicality test for a batch of M images (Nalisnick et al. 2019): S = |mean of -log₂ p(x)/D over the
    batch - Ĥ|, one score per batch of a random partition."""
    return np.abs(batches(bpd, m, rng) - entropy)


def bootstrap_threshold(heldout_bpd: np.ndarray, entropy: float, m: int, rng: np.random.Generator,
                        alpha: float = 0.99, n_boot: int = 5000) -> float:
    """The batch test's threshold ε_M (Nalisnick et al. 2019): the α-quantile of |batch mean - Ĥ| over
    ``n_boot`` batches of M drawn with replacement from held-out in-distribution bits/dim."""
    draws = rng.choice(np.asarray(heldout_bpd, dtype=np.float64), size=(n_boot, m), replace=True)
    return float(np.quantile(np.abs(draws.mean(1) - entropy), alpha))


def _hwc(image: np.ndarray) -> np.ndarray:
    """C×H×W uint8 -> H×W (grey) or H×W×3 for the codecs."""
    return image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_hwc(image)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _jpegxl(image: np.ndarray) -> bytes:
    return imagecodecs.jpegxl_encode(_hwc(image), lossless=True, effort=7)


_ENCODERS = {"png": _png, "jpegxl": _jpegxl}


def compressed_bits(images: np.ndarray, compressor: str) -> np.ndarray:
    """L(x): the length in bits of each uint8 image (N×C×H×W) losslessly compressed by ``compressor``: Pillow's
    PNG at compression level 9, or JPEG XL lossless (libjxl through imagecodecs, effort 7)."""
    if compressor not in _ENCODERS:
        raise ValueError(f"unknown compressor {compressor!r}; use one of {', '.join(COMPRESSORS)}")
    encode = _ENCODERS[compressor]
    return np.array([8 * len(encode(image)) for image in images], dtype=np.float64)


def complexity(bpd: np.ndarray, bits: np.ndarray, dims: int) -> np.ndarray:
    """Serrà et al. (ICLR 2020), "Input complexity and out-of-distribution detection with likelihood-based
    generative models": S(x) = -log₂ p(x) - L(x), here per dimension: bits/dim minus L(x)/D."""
    return np.asarray(bpd, dtype=np.float64) - np.asarray(bits, dtype=np.float64) / dims


def likelihood_ratio(bpd_model: np.ndarray, bpd_background: np.ndarray) -> np.ndarray:
    """Ren et al. (NeurIPS 2019), "Likelihood ratios for out-of-distribution detection": LLR(x) = log p_model(x)
    - log p_background(x); the score is -LLR per dimension in bits: bpd_model - bpd_background."""
    return np.asarray(bpd_model, dtype=np.float64) - np.asarray(bpd_background, dtype=np.float64)


def waic(log_px: np.ndarray) -> np.ndarray:
    """Choi, Jang & Alemi (2018), "WAIC, but why?": over K independently trained models (rows of ``log_px``,
    nats per image), WAIC(x) = E_k[log p_k(x)] - Var_k[log p_k(x)]; the score is -WAIC."""
    log_px = np.atleast_2d(np.asarray(log_px, dtype=np.float64))
    return -(log_px.mean(0) - log_px.var(0))


def ensemble_log_likelihood(log_px: np.ndarray) -> np.ndarray:
    """The ensemble's density: log (1/K) Σ_k p_k(x), from the K models' log-likelihoods (nats per image)."""
    log_px = np.atleast_2d(np.asarray(log_px, dtype=np.float64))
    top = log_px.max(0)
    return top + np.log(np.exp(log_px - top).mean(0)) if len(log_px) > 1 else log_px[0].copy()


def dose(heldout_stats: dict[str, np.ndarray], stats: dict[str, np.ndarray]) -> np.ndarray:
    """Morningstar et al. (AISTATS 2021), "Density of states estimation for out-of-distribution detection":
    S(x) = −Σ_j log KDE_j(t_j(x)), one Gaussian KDE (Scott's bandwidth) per summary statistic t_j (log p, each
    latent's log-density term and squared norm, the volume, the ELBO, …) fitted on held-out IN images; a statistic
    that is constant there (a constant-volume flow's volume) is left out."""
    from scipy.stats import gaussian_kde

    total, used = np.zeros(len(next(iter(stats.values())))), 0
    for name, ref in heldout_stats.items():
        ref = np.asarray(ref, dtype=np.float64)
        if np.ptp(ref) <= 1e-9 * max(1.0, float(np.abs(ref).max())):
            continue
        total -= gaussian_kde(ref).logpdf(np.asarray(stats[name], dtype=np.float64))
        used += 1
    if not used:
        raise DgmOodError("every summary statistic is constant on the held-out images: DoSE has no density to fit")
    return total


def level_ratio(split_terms: np.ndarray, top_term: np.ndarray) -> np.ndarray:
    """A flow's levels as a likelihood ratio of one model, in the spirit of Schirrmeister et al. (NeurIPS 2020) and
    Havtorn et al.'s LLR>k (ICML 2021): S(x) = Σ_i log p(z_i | z_keep) − log p(z_top), how much more the local
    (split) levels like x than the global (top) level, in nats."""
    return np.asarray(split_terms, dtype=np.float64) - np.asarray(top_term, dtype=np.float64)


def fisher_combination(heldout: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> np.ndarray:
    """Fisher's method over per-layer statistics (Bergamin et al. 2022; Dauncey et al.): each layer's value is
    standardised by its mean and standard deviation on held-out IN images, z → two-sided p = erfc(|z|/√2), and
    S(x) = −2 Σ_layers log p."""
    from scipy.special import log_ndtr

    total = np.zeros(len(next(iter(values.values()))))
    for name, ref in heldout.items():
        ref = np.asarray(ref, dtype=np.float64)
        sd = ref.std()
        if sd <= 0:
            continue
        z = (np.asarray(values[name], dtype=np.float64) - ref.mean()) / sd
        total -= 2 * (np.log(2.0) + log_ndtr(-np.abs(z)))  # log p = log(2·Φ(−|z|))
    return total


def pixeldefend_pvalue(heldout_bpd: np.ndarray, bpd: np.ndarray) -> np.ndarray:
    """Song et al. (ICLR 2018), PixelDefend: the p-value of each image's bits/dim among held-out clean images',
    p(x) = (1 + #{j: bpd_j ≥ bpd(x)}) / (n + 1); a small p (unusually unlikely) is flagged at p < α."""
    held = np.sort(np.asarray(heldout_bpd, dtype=np.float64))
    at_least = len(held) - np.searchsorted(held, np.asarray(bpd, dtype=np.float64), side="left")
    return (1 + at_least) / (len(held) + 1)
