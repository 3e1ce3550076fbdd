"""The theory's side of a comparison: the predictions, the assumption ledger and the diagnostics for whatever the
model allows (empirical.models.contract), and a record of which parts ran and why the others did not."""

from __future__ import annotations

import logging
import math

import numpy as np
from torch import nn

from empirical.data.imageset import ImageSet
from empirical.models.contract import ModelInfo
from empirical.models.flows import Glow
from empirical.training.presets import EvalBudget
from theory import ledger
from theory.predict import predict
from theory.quadratic import EXACT_MAX_DIMS, Moments

log = logging.getLogger(__name__)

ALPHAS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # the graying experiment's x_α = α·x + (1−α)·128
EMPTY = {"x0": None, "quadratic_check": None, "graying": None, "closed": None, "ledger": None,
         "hessian_spectrum": None, "linear_path_check": None, "quadratic": None}


def not_smooth_reason(info: ModelInfo) -> str:
    """Why a model has no second-order predictions, from what it declares."""
    if info.discrete:
        return (f"{info.name} is a discrete model (log p is constant on each 1/256 bin), so log p(x̃) has no gradient "
                f"or curvature in x̃")
    if info.stochastic:
        return f"{info.name}'s log_prob is a random estimate (e.g. of a bound), not a differentiable log p(x̃)"
    return f"{info.name} declares smooth = False (log p(x̃) is not twice differentiable)"


def model_class(model: nn.Module, info: ModelInfo) -> str:
    """Which model class the theory is compared on, in words."""
    if isinstance(model, Glow):
        cfg = model.config
        kind = "CV-Glow (additive couplings, constant volume)" if model.constant_volume else "Glow (affine couplings)"
        if cfg.paper_class:
            return f"{kind}, every latent N(0, σ_ψ²) with σ_ψ = {cfg.prior_std:g}: the paper's model class"
        top = f"fixed N(0, {cfg.prior_std:g}²) top prior" if cfg.prior == "fixed" else "learned top prior"
        split = "fixed N(0, σ_ψ²) split priors" if cfg.split_prior == "fixed" else "learned conditional split priors"
        return f"{kind}, {top}, {split}: not the paper's class (its Hessian is not −JᵀJ/σ_ψ²)"
    said = [k for k in ("discrete", "stochastic", "constant_volume") if getattr(info, k)]
    said += [] if info.exact else ["a bound or estimate of log p"]
    said += ["smooth"] if info.smooth else []
    said += ["with a linear path"] if info.linear_path else []
    return f"{info.name}" + (f" ({', '.join(said)})" if said else "") + ("" if info.smooth else " (not a flow)")


def all_finite(obj: object) -> bool:
    """True when every number inside (nested dicts, lists) is finite."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(all_finite(v) for v in obj)
    return True


def _without_non_finite(th: dict) -> dict:
    """A prediction, ledger row or diagnostic holding NaN/inf is reported as n/a with a note, never as a number."""
    dropped = [k for k, v in th["prediction"].items() if k != "note" and not all_finite(v)]
    for k in dropped:
        th["prediction"][k] = None
    for key in ("quadratic_check", "graying", "closed", "hessian_spectrum", "linear_path_check"):
        if not all_finite(th[key]):
            th[key], dropped = None, [*dropped, key]
    if dropped:
        note = f"non-finite (numerical overflow), not reported: {', '.join(dropped)}"
        th["prediction"]["note"] = "; ".join(filter(None, [th["prediction"].get("note"), note]))
    return th


def theory_for(model: nn.Module, info: ModelInfo, x0: np.ndarray, sets: dict[str, ImageSet], m, budget: EvalBudget,
               seed: int) -> dict:
    """The predictions, the ledger and the diagnostics (``m`` is the api's Measurement), and the exact quadratic at x0
    (``quadratic``, not JSON); for a model without a differentiable log-density every prediction is None and the
    note says why."""
    if not info.smooth:
        return {"prediction": {"closed_form": None, "exact_second_order": None, "averaged_curvature": None,
                               "note": "the second-order theory does not apply: " + not_smooth_reason(info)}, **EMPTY}
    log.info("second-order predictions: exact Hessian at x0 (D = %d) and a Monte Carlo estimate from %d images per "
             "set; the assumption ledger", info.dims, budget.hvp_samples)
    p, q = Moments.from_stats(m.stats["in_test"]), Moments.from_stats(m.stats["out_test"])
    pr = predict(model, x0, sets["in_test"].images, sets["out_test"].images,
                 gray_images=sets["in_test"].images[: budget.gray_images], alphas=ALPHAS,
                 n_samples=budget.hvp_samples, seed=seed, p=p, q=q)
    prediction = {"closed_form": pr["closed_form"], "exact_second_order": pr["exact_second_order"],
                  "averaged_curvature": pr["averaged_curvature"]}
    if pr["closed_form"] is None:
        prediction["note"] = ("closed form: n/a without a constant volume and a linear path (e.g. affine couplings); "
                              "use --model cvglow")
    quadratic_check = pr["taylor_mean"] and {
        k: {"taylor_at_x0": pr["taylor_mean"][k], "measured_log_p": m.summary[k]["log_px_nats"]["mean"]}
        for k in ("in_test", "out_test")}
    book = None
    for row in pr["ledger_rows"] or []:
        if not all_finite(row):
            row.update(gap_nats=None, terms=None, note="non-finite (numerical overflow)")
    if pr["ledger_rows"] is not None:
        s_in, s_out = m.summary["in_test"], m.summary["out_test"]
        deltas = {k.removesuffix("_nats"): (s_out[k]["mean"] - s_in[k]["mean"],
                                            float(np.hypot(s_out[k]["stderr"], s_in[k]["stderr"])))
                  for k in s_in if k.startswith("latent_") or (k == "volume_nats" and "latent_top_nats" in s_in)}
        se_nats = float(np.hypot(s_in["log_px_nats"]["stderr"], s_out["log_px_nats"]["stderr"]))
        book = ledger.assemble(ledger.measured_rows(m.gap_nats, se_nats, deltas) + pr["ledger_rows"], info.dims)
    return _without_non_finite({
        "prediction": prediction, "x0": pr["x0"], "quadratic_check": quadratic_check, "graying": pr["graying"],
        "closed": pr["graying_closed_form"], "ledger": book, "hessian_spectrum": pr["hessian_spectrum"],
        "linear_path_check": pr["linear_path_check"], "quadratic": pr["quadratic"]})


def applicability(info: ModelInfo, model: nn.Module, th: dict, decomposition: bool, det: dict | None) -> list[dict]:
    """Each part of a report: whether it ran, and why not when it did not (computed from the model's declarations
    and what was given)."""
    smooth = info.smooth and th["prediction"]["exact_second_order"] is not None
    exact = smooth and th["hessian_spectrum"] is not None
    cv = info.constant_volume and info.linear_path
    scores = (det or {}).get("scores", {})

    def part(name: str, ran: bool, why: str) -> dict:
        return {"part": name, "ran": bool(ran), "why": "" if ran else why}

    return [
        part("measurement: per-image log-likelihood and bits/dim", True, ""),
        part("density and volume terms", decomposition,
             "the model reports no density/volume parts (log_prob_parts with density and volume)"),
        part("exact second order at x0, averaged curvature", smooth, not_smooth_reason(info)),
        part("Hessian spectrum, quadratic check, graying prediction, ledger row 3", exact,
             not_smooth_reason(info) if not info.smooth else f"needs D ≤ {EXACT_MAX_DIMS} for the exact Hessian"),
        part("closed form, ledger rows 4–6", smooth and cv,
             "needs a constant-volume model with a linear_path() (e.g. cvglow)" if info.smooth
             else not_smooth_reason(info)),
        part("ledger row 7 (the paper's printed coefficient)", smooth and cv and isinstance(model, Glow),
             "needs a constant-volume Glow (actnorm-scaled 1×1 convolutions)"),
        part("detection: likelihood, input complexity", bool(scores), "detection was switched off"),
        part("detection: typicality and the batch test", "typicality" in scores,
             "no held-out IN images (images of IN the model never trained on)" if det else
             "detection was switched off"),
        part("detection: likelihood ratio", "likelihood_ratio" in scores, "no background model (--scores all)"),
        part("detection: WAIC and the ensemble's gap", "waic" in scores, "no ensemble (--scores all)"),
    ]
