"""Model or data? Across the models of a shift sweep (families trained on IN, and a model trained on another set),
the per-image rank agreement of log p on the same shifted images (Spearman ρ), and how much of the per-image
bits/dim the input complexity explains (ρ² of the ranks of bits/dim and L(x)/D). The rule that names a shift
data-driven is fixed here, before any measurement: its smallest pairwise ρ, averaged over severities, is at least
``RANK_AGREEMENT``."""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.stats import spearmanr

from verify.sweep import Shifted, Sweep

RANK_AGREEMENT = 0.7  # min pairwise Spearman ρ at which the models are said to rank a shift's images alike
IN_TEST = "(IN-test)"  # the row of unshifted images, for reference


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation ρ of two per-image values (Pearson's r of their ranks)."""
    return float(spearmanr(a, b).statistic)


def rank_r_squared(x: np.ndarray, y: np.ndarray) -> float:
    """The share of y's rank variance that x's ranks explain: ρ², Spearman's ρ squared (R² of the least-squares line
    between the ranks). Ranks, because a flow gives a few images of another set astronomically many bits/dim
    (10⁸), which would decide a Pearson R² alone."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return spearman(x, y) ** 2


def _by_shift(keys) -> dict[str, list]:
    out: dict[str, list] = {}
    for key in keys:
        out.setdefault(key[0], []).append(key)
    return out


def rank_agreement(sweeps: list[Sweep]) -> dict[str, dict[str, float]]:
    """For each shift (and IN-test): every pair of models' Spearman ρ of per-image bits/dim on the same images,
    averaged over the shift's severities; keys ``"A ~ B"``."""
    table: dict[str, dict[str, float]] = {}
    for a, b in combinations(sweeps, 2):
        pair = f"{a.label} ~ {b.label}"
        table.setdefault(IN_TEST, {})[pair] = spearman(a.in_bpd, b.in_bpd)
        for shift, keys in _by_shift(a.bpd).items():
            table.setdefault(shift, {})[pair] = float(np.mean([spearman(a.bpd[k], b.bpd[k]) for k in keys]))
    return table


def complexity_r2(sweep: Sweep, shifted: Shifted) -> dict[str, float]:
    """For each shift (and IN-test): the rank R² (ρ²) of per-image bits/dim against the compressed length L(x)/D,
    the shift's severities pooled."""
    table = {IN_TEST: rank_r_squared(shifted.bits[("", 0)], sweep.in_bpd)}
    for shift, keys in _by_shift(sweep.bpd).items():
        table[shift] = rank_r_squared(np.concatenate([shifted.bits[k] for k in keys]),
                                 np.concatenate([sweep.bpd[k] for k in keys]))
    return table


def verdicts(sweeps: list[Sweep]) -> dict[str, dict]:
    """Per shift: in how many models it inverts at some severity, the smallest pairwise ρ and whether that makes it
    data-driven (``RANK_AGREEMENT``); with one model, no verdict on the driver."""
    agreement = rank_agreement(sweeps) if len(sweeps) > 1 else {}
    out = {}
    for shift in dict.fromkeys(c.shift for c in sweeps[0].cells):
        inverting = [s.label for s in sweeps if any(c.inverts for c in s.cells if c.shift == shift)]
        rho = min(agreement[shift].values()) if shift in agreement else None
        out[shift] = {"family": next(c.family for c in sweeps[0].cells if c.shift == shift),
                      "inverts_in": inverting, "models": len(sweeps), "min_rank_agreement": rho,
                      "driver": None if rho is None else "data" if rho >= RANK_AGREEMENT else "model"}
    return out
