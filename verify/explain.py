"""What produces the gap: interventions on OUT measured with the same model, the entropy decomposition, and a
predictor that needs no model of OUT.

Interventions (each a transformed copy of OUT-test evaluated like any other set; its gap to IN-test beside the
original one, and the share of the gap that survives):
- moment matching: x' = μ_p + (x − μ_q)·σ_p/σ_q per dimension (μ, σ of IN-test and OUT-test), rounded, clipped;
- mean matching only: x' = x − μ_q + μ_p; variance matching only: x' = μ_q + (x − μ_q)·σ_p/σ_q;
- Gaussian surrogates: images drawn from N(μ, Σ) of each set (full covariance), quantised: the gap the first two
  moments alone produce;
- contrast scaling x_s = μ + s·(x − μ) of OUT and IN alike over ``CONTRASTS``, against the second-order curve.

Entropy decomposition (Caterini & Loaiza-Ganem 2021): for any model p, E_q[log p] = −H(q) − KL(q‖p), so
    gap = E_q[log p] − E_p*[log p] = [H(p*) − H(q)] − [KL(q‖p) − KL(p*‖p)].

Input-complexity predictor (Serrà et al. 2020 found log p tied to compressed length): log p(x) ≈ a + b·L(x), fitted on
IN-train only, applied to IN-test's and OUT-test's compressed lengths.

Every grid, sample size and fit form here is fixed in this module, before any OUT set is seen.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from empirical.models.evaluation import evaluate, mean_stderr
from empirical.models.likelihood import nats_gap_to_bpd
from empirical.ood.scores import compressed_bits

CONTRASTS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # s of the contrast-scaling curve
SURROGATE_IMAGES = 2000  # images drawn per set for the Gaussian surrogates
COMPRESSOR = "png"  # the input-complexity predictor's L(x)


# --------------------------------------------------------------------------------------------- transforms
def _round(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Rounded and clipped to 0..255 as uint8, and the fraction of sub-pixels the clipping changed."""
    r = np.rint(x)
    clipped = float(((r < 0) | (r > 255)).mean())
    return np.clip(r, 0, 255).astype(np.uint8), clipped


def moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (pixel units, 1/n), float64."""
    x = images.astype(np.float64)
    return x.mean(0), x.std(0)


def match_moments(images: np.ndarray, target: tuple[np.ndarray, np.ndarray], *, mean: bool = True,
                  variance: bool = True) -> tuple[np.ndarray, float]:
    """Each dimension mapped affinely to ``target``'s mean and/or standard deviation: x' = μ_p + (x − μ_q)·σ_p/σ_q
    (both), x − μ_q + μ_p (mean only), μ_q + (x − μ_q)·σ_p/σ_q (variance only); a dimension with σ_q = 0 takes
    the target mean when the variance is matched. Returns the rounded, clipped images and the fraction clipped."""
    mu_q, sd_q = moments(images)
    mu_p, sd_p = target
    ratio = np.divide(sd_p, sd_q, out=np.zeros_like(sd_q), where=sd_q > 0) if variance else np.ones_like(sd_q)
    centre = mu_p if mean else mu_q
    out = centre + (images.astype(np.float64) - mu_q) * ratio
    if variance:
        out = np.where(sd_q > 0, out, mu_p if mean else mu_q)
    return _round(out)


def scale_contrast(images: np.ndarray, s: float) -> tuple[np.ndarray, float]:
    """x_s = μ + s·(x − μ) with μ the set's own per-dimension mean; rounded, clipped, and the fraction clipped."""
    mu, _ = moments(images)
    return _round(mu + s * (images.astype(np.float64) - mu))


def gaussian_surrogate(images: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, float]:
    """n images drawn from N(μ, Σ) of ``images`` (full covariance, per-dimension; pixel units), quantised."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    mu = flat.mean(0)
    cov = np.cov(flat, rowvar=False, bias=True)
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_normal(mu, cov, size=n, method="eigh")
    out, clipped = _round(draws)
    return out.reshape(n, *images.shape[1:]), clipped


# ------------------------------------------------------------------------------------------ measurements
def gap_of(p_log_px: np.ndarray, q_log_px: np.ndarray, dims: int) -> dict:
    """E_q[log p] − E_p*[log p] in nats and bits/dim, with its standard error."""
    p, q = mean_stderr(p_log_px), mean_stderr(q_log_px)
    gap, se = q["mean"] - p["mean"], math.hypot(p["stderr"], q["stderr"])
    return {"gap_nats": gap, "stderr_nats": se, "gap_bpd": nats_gap_to_bpd(gap, dims),
            "stderr_bpd": nats_gap_to_bpd(se, dims)}


def interventions(model: nn.Module, in_test: np.ndarray, out_test: np.ndarray, in_log_px: np.ndarray,
                  out_log_px: np.ndarray, dims: int, *, seed: int, device: torch.device) -> dict:
    """Each intervention's gap to IN-test (per-image, same model and noise seed), the share of the measured gap
    that survives it, and the fraction of sub-pixels its rounding clipped."""
    measured = gap_of(in_log_px, out_log_px, dims)
    target = moments(in_test)

    def log_px(images: np.ndarray, what: str) -> np.ndarray:
        return evaluate(model, images, seed=seed, device=device, label=f"{what} images").log_px

    rows = {}
    for key, what, (images, clipped) in (
            ("moments", "OUT matched to IN-test's per-dimension mean and standard deviation",
             match_moments(out_test, target)),
            ("mean", "OUT matched to IN-test's per-dimension mean only", match_moments(out_test, target,
                                                                                       variance=False)),
            ("variance", "OUT matched to IN-test's per-dimension standard deviation only",
             match_moments(out_test, target, mean=False))):
        g = gap_of(in_log_px, log_px(images, key), dims)
        rows[key] = {"what": what, **g, "share": g["gap_nats"] / measured["gap_nats"] if measured["gap_nats"]
                     else None, "clipped": clipped, "n": len(images)}
    n = min(SURROGATE_IMAGES, len(in_test), len(out_test))
    (sp, cp), (sq, cq) = gaussian_surrogate(in_test, n, seed), gaussian_surrogate(out_test, n, seed + 1)
    g = gap_of(log_px(sp, "Gaussian surrogate IN"), log_px(sq, "Gaussian surrogate OUT"), dims)
    rows["gaussian"] = {"what": "Gaussian surrogates N(μ, Σ) of both sets, quantised", **g,
                        "share": g["gap_nats"] / measured["gap_nats"] if measured["gap_nats"] else None,
                        "clipped": max(cp, cq), "n": n}
    return {"measured": measured, "rows": rows}


def contrast_curve(model: nn.Module, sets: dict[str, np.ndarray], *, seed: int, device: torch.device,
                   quad=None) -> dict:
    """For each set and each s in CONTRASTS: the measured E[log p(x_s)] − E[log p(x)] and, given the exact quadratic
    ``quad`` at x0 (theory.quadratic), the second-order prediction from the transformed images' exact moments."""
    from theory.quadratic import Moments

    out = {"s": list(CONTRASTS), "measured": {}, "second_order": {} if quad is not None else None, "clipped": {}}
    for key, images in sets.items():
        base = float(evaluate(model, images, seed=seed, device=device).log_px.mean())
        scaled = [scale_contrast(images, s) for s in CONTRASTS]
        out["measured"][key] = [float(evaluate(model, x, seed=seed, device=device, label=f"contrast {s}").log_px
                                      .mean()) - base for (x, _), s in zip(scaled, CONTRASTS, strict=True)]
        out["clipped"][key] = [c for _, c in scaled]
        if quad is not None:
            t0 = quad.expectation(Moments.of_images(images).dequantised())
            out["second_order"][key] = [quad.expectation(Moments.of_images(x).dequantised()) - t0 for x, _ in scaled]
    return out


def complexity_prediction(train_images: np.ndarray, train_log_px: np.ndarray, in_test: np.ndarray,
                          out_test: np.ndarray, in_log_px: np.ndarray, dims: int) -> dict:
    """log p(x) ≈ a + b·L(x), L the PNG length in bits, fitted by least squares on IN-train only; the predicted gap
    mean f(L_q) − mean f(L_p*), beside the measured one."""
    lengths = {k: compressed_bits(v, COMPRESSOR) for k, v in (("train", train_images), ("in", in_test),
                                                                ("out", out_test))}
    if np.ptp(lengths["train"]) == 0:  # one length for every image: the slope is not identified
        return {"gap_nats": None, "gap_bpd": None, "n_fit": len(train_images), "compressor": COMPRESSOR,
                "reason": f"every IN-train image compresses to {lengths['train'][0]:.0f} bits: no slope to fit"}
    b, a = np.polyfit(lengths["train"], train_log_px, 1)
    fitted = a + b * lengths["train"]
    r2 = 1 - float(((train_log_px - fitted) ** 2).sum() / ((train_log_px - train_log_px.mean()) ** 2).sum())
    gap = float(b * (lengths["out"].mean() - lengths["in"].mean()))
    return {"gap_nats": gap, "gap_bpd": nats_gap_to_bpd(gap, dims), "slope_nats_per_bit": float(b),
            "intercept_nats": float(a), "r2_in_train": r2, "n_fit": len(train_images), "compressor": COMPRESSOR,
            "predicted_in_test_nats": float(a + b * lengths["in"].mean()),
            "measured_in_test_nats": float(in_log_px.mean())}


def entropy_decomposition(in_bpd: float, out_bpd: float, out_own_bpd: float, in_train_bpd: float | None = None) -> dict:
    """gap = [H(p*) − H(q)] − [KL(q‖p) − KL(p*‖p)] in bits/dim, with Ĥ(q) = OUT-test's bits/dim under a model of the
    same family and preset trained on OUT-train (an upper bound on H(q), so KL̂(q‖p) = E_q[bpd under p] − Ĥ(q) is a
    lower bound) and Ĥ(p*) = IN-test's bits/dim under p itself (so KL̂(p*‖p) = 0, a lower bound)."""
    h_p, h_q = in_bpd, out_own_bpd
    kl_q, kl_p = out_bpd - out_own_bpd, 0.0
    entropy, distance = h_p - h_q, kl_q - kl_p
    return {"gap_bpd": in_bpd - out_bpd, "entropy_difference_bpd": entropy, "kl_difference_bpd": distance,
            "h_in_bpd": h_p, "h_out_bpd": h_q, "kl_out_bpd": kl_q, "kl_in_bpd": kl_p,
            "in_train_bpd": in_train_bpd, "dominant": "entropy" if abs(entropy) >= abs(distance) else "distance",
            "bounds": "Ĥ(q) and Ĥ(p*) are cross-entropies of models, so each is an upper bound on its entropy, and "
                      "KL̂(q‖p) and KL̂(p*‖p) = 0 are lower bounds on theirs; the two terms sum to the measured gap "
                      "exactly, but each may be off by as much as OUT's own model falls short of q"}


def explain_for(model: nn.Module, sets: dict, m, quad, dims: int, *, seed: int, device: torch.device,
                out_model: nn.Module | None = None) -> dict:
    """results.json's ``explain``: the interventions, the contrast curve, the complexity predictor and (given a model
    of OUT trained on OUT-train) the entropy decomposition; ``m`` is verify.api's Measurement, ``quad`` the exact
    quadratic at x0 or None."""
    ev = m.evals
    out = {"interventions": interventions(model, sets["in_test"].images, sets["out_test"].images,
                                          ev["in_test"].log_px, ev["out_test"].log_px, dims, seed=seed,
                                          device=device),
           "contrast": contrast_curve(model, {k: sets[k].images[: m.gray_images] for k in ("in_test", "out_test")},
                                      seed=seed, device=device, quad=quad),
           "complexity": complexity_prediction(sets["in_train"].images, ev["in_train"].log_px,
                                               sets["in_test"].images, sets["out_test"].images,
                                               ev["in_test"].log_px, dims),
           "entropy": None}
    if out_model is not None:
        own = float(evaluate(out_model, sets["out_test"].images, seed=seed, device=device,
                             label="OUT-test images under OUT's own model").bpd.mean())
        bpd = {k: float(e.bpd.mean()) for k, e in ev.items()}
        out["entropy"] = entropy_decomposition(bpd["in_test"], bpd["out_test"], own, bpd["in_train"])
    out["summary"] = summary(out)
    return out


def summary(ex: dict) -> str:
    """One paragraph, computed from the numbers: how much of the gap survives moment matching, what the first two
    moments alone give, and which term of the entropy decomposition dominates."""
    rows, measured = ex["interventions"]["rows"], ex["interventions"]["measured"]

    def share(key: str) -> str:
        v = rows[key]["share"]
        return "n/a" if v is None else f"{100 * v:.0f}%"

    parts = [f"Matching OUT's per-dimension means and standard deviations to IN-test's turns the gap of "
             f"{measured['gap_bpd']:+.3f} bits/dim into {rows['moments']['gap_bpd']:+.3f} ({share('moments')} of it; "
             f"matching the means alone {share('mean')}, the standard deviations alone {share('variance')}); Gaussian "
             f"surrogates with each set's first two moments give {rows['gaussian']['gap_bpd']:+.3f} bits/dim."]
    c = ex["complexity"]
    parts.append(f"No input-complexity prediction: {c['reason']}." if c["gap_nats"] is None else
                 f"Compressed length alone (log p ≈ a + b·L fitted on IN-train, R² {c['r2_in_train']:.2f}) predicts "
                 f"{c['gap_bpd']:+.3f} bits/dim.")
    e = ex["entropy"]
    if e:
        parts.append(f"OUT is {e['entropy_difference_bpd']:+.3f} bits/dim simpler than IN (entropy difference) and "
                     f"{e['kl_difference_bpd']:+.3f} bits/dim farther from the model (KL difference): the "
                     f"{'entropy difference' if e['dominant'] == 'entropy' else 'distance'} dominates"
                     + (", so the inversion happens" if e["entropy_difference_bpd"] > e["kl_difference_bpd"] else "")
                     + ".")
    return " ".join(parts)
