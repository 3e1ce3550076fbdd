"""The assumption ledger: which step of the paper's derivation costs what, on a trained flow.

Every row is E_q[log p] − E_p*[log p] in nats per image (p* = IN-test, q = OUT-test). Going down, each row
adds assumptions of ``theory.assumptions.ASSUMPTIONS`` to the one above, from the measurement to the paper:

1. measured: the model's own per-image log-likelihoods;
2. its decomposition: the density's terms per latent (top, each split) and the volume; they sum to row 1;
3. exact second order at x0: gᵀ(μ_q−μ_p*) + ½Tr{H(Σ_q−Σ_p*)} + ½[(μ_q−x0)ᵀH(μ_q−x0) − (μ_p*−x0)ᵀH(μ_p*−x0)]
   with the exact H (theory.quadratic), a Monte Carlo estimate beside it;
4. the same for the linear path (couplings off, split latents N(0, σ_ψ²)), where log p is quadratic: the
   linear-path model's exact gap (checked by evaluating that model on the images);
5. … with equal means: ½Tr{H_lin(Σ_q−Σ_p*)};
6. … with diagonal covariances: ½Σ_d (H_lin)_dd Δσ²_d, the closed form with ‖M_:,c‖²;
7. … with the paper's printed coefficient (Π_k Σ_j u_kcj)² in place of ‖M_:,c‖² (``paper_path``).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from empirical.models.contract import describe
from empirical.models.flows import Glow
from empirical.models.flows.layers import InvConv1x1
from empirical.models.likelihood import nats_gap_to_bpd
from theory.assumptions import ASSUMPTIONS
from theory.quadratic import Moments, Quadratic, exact_quadratic, quadratic_diagonal

LABELS = {
    1: "measured gap (the model, per-image evaluation)",
    3: "exact second order at x0 (exact H, exact moments)",
    4: "linear path: full covariances, exact means",
    5: "linear path: full covariances, equal means",
    6: "linear path: diagonal covariances (the closed form)",
    7: "the paper's printed coefficient (Π_k Σ_j u_kcj)²",
}
KEYS = {1: "measured", 3: "exact_second_order", 4: "linear_path", 5: "equal_means", 6: "diagonal_covariance",
        7: "paper_coefficient"}
ADDS = {1: [], 3: ["smooth", "second_order"], 4: ["linear_path"], 5: ["equal_means"], 6: ["diagonal_covariance"],
        7: ["no_channel_mixing"]}
NOT_CONSTANT_VOLUME = ("n/a: needs a constant-volume flow with a linear path (--model cvglow); the linear path of "
                       "an affine Glow drops its x-dependent volume term")
NOT_GLOW = "n/a: the paper's printed coefficient needs Glow's actnorm-scaled 1×1 convolutions"


def _row(row: int, gap_nats: float | None, *, key: str | None = None, label: str | None = None,
         adds: list[str] | None = None, **extra) -> dict:
    return {"row": row, "key": key or KEYS[row], "label": label or LABELS[row],
            "adds": ADDS.get(row, []) if adds is None else adds, "gap_nats": gap_nats, **extra}


def paper_path(model: Glow) -> Glow:
    """The linear path with every actnorm-scaled 1×1 conv U_k = W_k·diag(e^{s_k}) replaced by diag(row sums of
    U_k): its ‖M_:,c‖² is the paper's printed (Π_k Σ_j u_kcj)², applied along each dimension's path through the
    levels (for one level exactly the paper's formula)."""
    lin = model.linear_path().double()
    for steps in lin.levels:
        for step in steps:
            u = step.invconv.matrix().double() @ torch.diag(step.actnorm.log_scale.double().exp().flatten())
            diag = InvConv1x1(u.shape[0], lu=False).double()
            with torch.no_grad():
                diag.weight.copy_(torch.diag(u.sum(1)))
                step.actnorm.log_scale.zero_()
            step.invconv = diag
    return lin


@torch.no_grad()
def mean_log_prob(model: torch.nn.Module, images: np.ndarray, batch_size: int = 1000) -> float:
    """Mean log p at the pixel centres (x+½)/256 of uint8 images, float64 (the model is not changed)."""
    m64 = copy.deepcopy(model).double().cpu().eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = (torch.from_numpy(images[start: start + batch_size]).double() + 0.5) / 256
        total += float(m64.log_prob(x).sum())
    return total / len(images)


def predicted_rows(model: torch.nn.Module, quad: Quadratic, p: Moments, q: Moments,
                   monte_carlo: dict | None = None) -> list[dict]:
    """Rows 3–7 from the exact quadratic ``quad`` of the model at x0 and the sets' moments; rows 4–6 need a
    constant-volume model with a linear path, row 7 a Glow (each is n/a with the reason otherwise)."""
    exact = quad.gap(p, q)
    rows = [_row(3, exact["gap_nats"], terms={k: v for k, v in exact.items() if k != "gap_nats"},
                 monte_carlo=monte_carlo)]
    info = describe(model)
    if not (info.constant_volume and info.linear_path):
        return rows + [_row(r, None, note=NOT_CONSTANT_VOLUME) for r in (4, 5, 6, 7)]
    lin_quad = exact_quadratic(model.linear_path(), quad.x0)
    lin_gap = lin_quad.gap(p, q)
    paper_class = isinstance(model, Glow) and model.config.split_prior == "fixed"
    adds = ["linear_path"] + ([] if paper_class else ["gaussian_latent"])
    note = "" if paper_class else (f"the learned split priors are replaced by N(0, σ_ψ²), σ_ψ = "
                                   f"{model.config.prior_std:g}" if isinstance(model, Glow) else
                                   "the model's own linear_path()")
    dvar = q.var - p.var
    row7 = _row(7, 0.5 * float(quadratic_diagonal(paper_path(model)).ravel() @ dvar)) if isinstance(model, Glow) \
        else _row(7, None, note=NOT_GLOW)
    return rows + [
        _row(4, lin_gap["gap_nats"], adds=adds, note=note, terms={k: v for k, v in lin_gap.items() if k != "gap_nats"}),
        _row(5, lin_gap["trace_term"]),
        _row(6, 0.5 * float(np.diagonal(lin_quad.hess) @ dvar)),
        row7,
    ]


def linear_path_check(model: torch.nn.Module, rows: list[dict], p_images: np.ndarray,
                      q_images: np.ndarray) -> dict | None:
    """Row 4 against the linear-path model evaluated on the images themselves (equal up to rounding)."""
    row4 = next((r for r in rows if r["row"] == 4), None)
    if row4 is None or row4["gap_nats"] is None:
        return None
    lin = model.linear_path()
    direct = mean_log_prob(lin, q_images) - mean_log_prob(lin, p_images)
    return {"from_moments_nats": row4["gap_nats"], "direct_nats": direct, "abs_diff": abs(direct - row4["gap_nats"])}


def measured_rows(gap_nats: float, stderr: float, deltas: dict[str, tuple[float, float]]) -> list[dict]:
    """Row 1 and its decomposition (row 2): ``deltas`` maps a term (``latent_top``, ``latent_split1``, …,
    ``volume``) to its mean difference OUT − IN-test and standard error, in nats."""
    rows = [_row(1, gap_nats, stderr=stderr)]
    order = sorted(deltas, key=lambda k: (k == "volume", k != "latent_top", k))  # top, splits, volume
    for name in order:
        delta, se = deltas[name]
        what = ("volume log|det ∂f/∂x|" if name == "volume" else "top latent log p(z_top)" if name == "latent_top"
                else f"split-{name.removeprefix('latent_split')} latent log p(z_{name.removeprefix('latent_split')}"
                     f" | z_keep)")
        rows.append(_row(2, delta, key=name, label=f"  term: {what}", adds=[], stderr=se,
                         share=delta / gap_nats if gap_nats else None))
    return rows


def _factor_text(a: dict, b: dict) -> str:
    f = b["gap_nats"] / a["gap_nats"]
    return f"×{abs(f):.3g}" + (" with a sign flip" if f < 0 else "")


def _largest_step(steps: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The consecutive pair of rows whose gaps differ by the largest factor, |log|b/a||."""
    return max(steps, key=lambda ab: abs(math.log(abs(ab[1]["gap_nats"] / ab[0]["gap_nats"]))))


def _step_record(a: dict, b: dict) -> dict:
    return {"from_row": a["row"], "to_row": b["row"], "adds": b["adds"], "factor": b["gap_nats"] / a["gap_nats"]}


def _step_text(a: dict, b: dict) -> str:
    return (f"row {a['row']} → {b['row']} (adds {', '.join(b['adds']) or 'nothing'}): {_factor_text(a, b)}, "
            f"from {a['gap_nats']:+,.0f} to {b['gap_nats']:+,.0f} nats/image")


def assemble(rows: list[dict], dims: int) -> dict:
    """The ledger: each row with bits/dim, ratio to the measured gap and sign agreement, the step that moves
    the number most (largest |log|factor|| between consecutive rows 1, 3–7; when that is the paper's coefficient,
    row 7, also the largest among rows 1, 3–6) and a one-paragraph summary."""
    measured_row = next((r for r in rows if r["row"] == 1), None)
    measured = measured_row and measured_row["gap_nats"]
    # a measured gap within 2 standard errors of 0 has no sign to agree with and gives meaningless ratios
    null = measured_row is not None and abs(measured) <= 2 * (measured_row.get("stderr") or 0.0)
    for r in rows:
        g = r["gap_nats"]
        r["gap_bpd"] = None if g is None else nats_gap_to_bpd(g, dims)
        if r["row"] <= 2:
            continue
        r["ratio"] = None if g is None or not measured else g / measured
        r["sign_agrees"] = None if g is None or not measured or g == 0 or null else (g > 0) == (measured > 0)
    chain = [r for r in rows if r["row"] != 2 and r["gap_nats"]]
    steps = [(a, b) for a, b in zip(chain, chain[1:], strict=False)]
    out: dict = {"rows": rows, "moves_most": None, "closest": None}
    parts = []
    if steps:
        a, b = _largest_step(steps)
        out["moves_most"] = _step_record(a, b)
        parts.append(f"The step that moves the number most is {_step_text(a, b)}.")
        # the paper's printed coefficient (row 7) shrinks with depth; the derivation's own steps are rows 1, 3–6
        derived = [ab for ab in steps if ab[1]["row"] != 7]
        if b["row"] == 7 and derived:
            a, b = _largest_step(derived)
            out["moves_most_derived"] = _step_record(a, b)
            parts.append(f"Among the derivation's own steps (rows 1, 3–6) it is {_step_text(a, b)}.")
    predicted = [r for r in chain if r["row"] >= 3]
    if null and predicted:  # ratios to a gap indistinguishable from 0 mean nothing: compare distances instead
        best = min(predicted, key=lambda r: abs(r["gap_nats"] - measured))
        out["closest"] = {"row": best["row"], "ratio": None, "distance_nats": abs(best["gap_nats"] - measured)}
        parts.append(f"The measured gap is not significantly different from 0 ({measured:+,.1f} ± "
                     f"{measured_row['stderr']:,.1f} nats), so ratios to it mean nothing; the nearest row is "
                     f"{best['row']} ({best['label']}), {abs(best['gap_nats'] - measured):,.0f} nats away.")
    elif predicted := [r for r in predicted if r.get("ratio")]:
        best = min(predicted, key=lambda r: (not r["sign_agrees"], abs(math.log(abs(r["ratio"])))))
        out["closest"] = {"row": best["row"], "ratio": best["ratio"]}
        parts.append(f"Closest to the measured gap: row {best['row']} ({best['label']}), ratio {best['ratio']:.3g}"
                     + ("" if best["sign_agrees"] else ", wrong sign") + ".")
    out["summary"] = " ".join(parts)
    return out


def markdown_table(ledger: dict) -> list[str]:
    """The ledger as a markdown table, then the assumptions it names with their statements."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    md = ["| row | value | adds | nats/image | bits/dim | ratio to measured | sign agrees |",
          "|---:|---|---|---:|---:|---:|:---:|"]
    used = []
    for r in ledger["rows"]:
        used += [a for a in r["adds"] if a not in used]
        if r["gap_nats"] is None:
            md.append(f"| {r['row']} | {r['label']} | {', '.join(r['adds'])} | {r.get('note', 'n/a')} | | | |")
            continue
        nats = f"{r['gap_nats']:+,.1f}" + (f" ± {r['stderr']:.1f}" if r.get("stderr") else "")
        if r["row"] == 2:
            share = "" if r["share"] is None else f"share {100 * r['share']:.1f}%"
            md.append(f"| | {cell(r['label'].strip())} | | {nats} | {r['gap_bpd']:+.4f} | {share} | |")
            continue
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.3g}"
        sign = {None: "", True: "yes", False: "**no**"}[r.get("sign_agrees")]
        md.append(f"| {r['row']} | {cell(r['label'])} | {', '.join(r['adds'])} | {nats} | {r['gap_bpd']:+.4f} | "
                  f"{ratio} | {sign} |")
    md.append("")
    for r in ledger["rows"]:
        if r.get("monte_carlo"):
            mc = r["monte_carlo"]
            md.append(f"Row {r['row']}'s Monte Carlo estimate ({mc['n_samples']['in_test']} + "
                      f"{mc['n_samples']['out_test']} sampled images): {mc['gap_nats']:+,.1f} ± {mc['stderr']:,.1f} "
                      f"nats/image.")
        if r.get("terms"):
            t = r["terms"]
            md.append(f"Row {r['row']} = gradient term {t['gradient_term']:+,.1f} + trace term "
                      f"{t['trace_term']:+,.1f} + mean term {t['mean_term']:+,.1f}.")
        if r.get("note") and r["gap_nats"] is not None:
            md.append(f"Row {r['row']}: {r['note']}.")
    md += ["", "Assumptions added:"] + [f"- `{a}`: {ASSUMPTIONS[a].statement}" for a in used]
    return md
