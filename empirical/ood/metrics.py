"""How well a score separates OUT from IN, OUT the positive class: AUROC with a bootstrap interval, AUPRC and the
false-positive rate at a true-positive rate (scikit-learn's curves)."""

from __future__ import annotations

import numpy as np

BOOTSTRAP = 1000  # resamples of the AUROC's interval


def _labelled(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    return y, np.concatenate([in_scores, out_scores])


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve, OUT as the positive class (sklearn.metrics.roc_auc_score); 0.5 is chance."""
    from sklearn.metrics import roc_auc_score  # imported when needed: it costs a CLI's start almost a second

    return float(roc_auc_score(*_labelled(in_scores, out_scores)))


def auprc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Average precision, OUT as the positive class (sklearn.metrics.average_precision_score)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(*_labelled(in_scores, out_scores)))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """The false-positive rate at the first ROC threshold whose true-positive rate reaches ``tpr_level``
    (sklearn.metrics.roc_curve with every threshold: dropping collinear ones could skip the first that reaches it)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(*_labelled(in_scores, out_scores), drop_intermediate=False)  # every threshold kept
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def auroc_interval(in_scores: np.ndarray, out_scores: np.ndarray, *, n_boot: int = BOOTSTRAP, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of the AUROC: IN and OUT resampled with replacement ``n_boot`` times (seeded);
    each resample's AUROC = Σ_j w_j (#IN below s_j + ½ #IN equal to s_j)/(n_in·n_out), counted with the resampled
    multiplicities over one sort, so a thousand resamples of 20,000 images take a fraction of a second."""
    s_in, s_out = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    order = np.argsort(s_in, kind="stable")
    sorted_in = s_in[order]
    below, upto = np.searchsorted(sorted_in, s_out, "left"), np.searchsorted(sorted_in, s_out, "right")
    rng = np.random.default_rng(seed)
    n_in, n_out = len(s_in), len(s_out)
    values = np.empty(n_boot)
    for b in range(n_boot):
        w_in = np.bincount(rng.integers(0, n_in, n_in), minlength=n_in)[order]
        w_out = np.bincount(rng.integers(0, n_out, n_out), minlength=n_out)
        cum = np.concatenate([[0], np.cumsum(w_in)])
        values[b] = float(w_out @ (cum[below] + 0.5 * (cum[upto] - cum[below]))) / (n_in * n_out)
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict:
    """AUROC with its bootstrap 95% interval, AUPRC, FPR at 95% and at 80% TPR of one score, and the sample sizes."""
    return {"auroc": auroc(in_scores, out_scores), "auroc_ci95": list(auroc_interval(in_scores, out_scores)),
            "auprc": auprc(in_scores, out_scores), "fpr95": fpr_at_tpr(in_scores, out_scores),
            "fpr80": fpr_at_tpr(in_scores, out_scores, 0.80), "n_in": len(in_scores), "n_out": len(out_scores)}
