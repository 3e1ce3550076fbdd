"""Detection beyond one score per image: the typicality test on batches of M images (with its bootstrap threshold)
and what an ensemble does to the inversion (its density's gap and WAIC's two parts)."""

from __future__ import annotations

import numpy as np

from empirical.models.likelihood import nats_gap_to_bpd
from empirical.ood import scores
from empirical.ood.metrics import metrics

BATCH_SIZES = (2, 5, 10, 25)  # M of the batch typicality test
ALPHA = 0.99  # the bootstrap threshold's quantile


def batch_test(in_bpd: np.ndarray, out_bpd: np.ndarray, heldout_bpd: np.ndarray, entropy: float,
               seed: int = 0) -> list[dict]:
    """The typicality test on batches of M images, for each M: AUROC/AUPRC/FPR95 over batches, the bootstrap
    threshold ε_M from the held-out IN images, and the share of OUT-test and IN-test batches beyond it."""
    rows = []
    for m in BATCH_SIZES:
        if min(len(in_bpd), len(out_bpd)) < 2 * m:  # fewer than 2 batches a side: no test
            rows.append({"m": m, "note": "too few images for two batches a side"})
            continue
        rng = np.random.default_rng(seed + m)
        s_in, s_out = (scores.batch_typicality(b, entropy, m, rng) for b in (in_bpd, out_bpd))
        eps = scores.bootstrap_threshold(heldout_bpd, entropy, m, rng, alpha=ALPHA)
        rows.append({"m": m, **metrics(s_in, s_out), "epsilon_bpd": eps,
                     "out_flagged": float((s_out > eps).mean()), "in_flagged": float((s_in > eps).mean())})
    return rows


def ensemble_gap(in_log_px: np.ndarray, out_log_px: np.ndarray, dims: int) -> dict:
    """Does ensembling fix the inversion? From K×N log-likelihoods (nats) of IN-test and OUT-test: the gap
    bpd(IN-test) − bpd(OUT-test) of the ensemble's density log (1/K) Σ p_k and of each member; and WAIC's two parts
    per set, the mean and the median over images of E_k log p_k and of Var_k log p_k (nats): WAIC detects only where
    OUT's extra variance outweighs its higher mean, and a few images the members disagree about wildly can carry
    the mean of Var_k, not the median."""
    sets = {"in_test": in_log_px, "out_test": out_log_px}
    mean = {k: scores.ensemble_log_likelihood(v).mean() for k, v in sets.items()}
    members = [nats_gap_to_bpd(float(o.mean() - i.mean()), dims) for i, o in zip(in_log_px, out_log_px, strict=True)]
    return {"k": len(in_log_px), "ensemble_gap_bpd": nats_gap_to_bpd(mean["out_test"] - mean["in_test"], dims),
            "member_gaps_bpd": members, "waic_parts_nats": {k: waic_parts(v) for k, v in sets.items()}}


def waic_parts(log_px: np.ndarray) -> dict[str, float]:
    """Mean and median over images of E_k log p_k and Var_k log p_k, from log p of shape (K, N) in nats."""
    mean, var = log_px.mean(0), log_px.var(0)
    return {"mean_log_px": float(mean.mean()), "median_log_px": float(np.median(mean)),
            "var_log_px": float(var.mean()), "median_var_log_px": float(np.median(var))}
