"""Predicted likelihood gaps E_q[log p] - E_p*[log p] for a trained flow:
``python -m theory.predict --checkpoint PATH fashionmnist mnist``.

All predictions are in nats per image of x̃ = (x + u)/256 (the D·log 256 term cancels in a gap).
p* is IN-test, q is OUT-test, and the expansion point x0 is the mean of IN-train (model space).

- ``closed_form``     (CV-Glow): ½ Σ_d H_dd (σ²_q,d - σ²_p*,d), H the Hessian of the model's linear path
                      (coupling networks off, split latents N(0, σ_ψ²)): the paper's closed form, derived exactly.
- ``exact_second_order`` (any flow): E_q[T] - E_p*[T] for the Taylor polynomial T at x0, with g and the full
                      Hessian H from D Hessian-vector products and the sets' exact moments (theory.quadratic);
                      a Monte Carlo estimate over sampled images is kept beside it with its standard error.
- ``averaged_curvature`` (extra): the same with the gradient and Hessian averaged over data points
                      x ~ ½(p* + q) instead of taken at x0 (Monte Carlo).
The assumption ledger (theory.ledger) goes from the exact second order to the paper's formula.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from empirical.cli import (
    SOURCE_HELP,
    add_data_arguments,
    add_shape_arguments,
    data_options,
    run_cli,
    shape_map,
    writable_file,
)
from empirical.data import sources
from empirical.io.atomic import write_json
from empirical.io.errors import TheoryError
from empirical.models.contract import describe, model_device
from empirical.models.flows import Glow
from empirical.models.likelihood import LEVELS, dequantize, nats_gap_to_bpd
from empirical.training.checkpoint import check_trained_on
from empirical.training.loading import model_from_checkpoint
from theory import ledger
from theory.quadratic import Moments, exact_quadratic, hessian_vector_products, quadratic_diagonal

GREY = 128
GREY_CENTRE = (GREY + 0.5) / LEVELS  # mid-grey in model space


def to_model_space(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Noise-free image centre in model space: (x + ½)/256, float64."""
    return (torch.as_tensor(np.asarray(pixels), dtype=torch.float64) + 0.5) / LEVELS


def _flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    n = len(v)
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0


# ------------------------------------------------------------------------- linear paths (quadratic log p)
def linear_path_curvature(model: torch.nn.Module) -> np.ndarray:
    """diag(H) of the linear path: -Σ_o M_od² λ_o, M the linear map, λ the latent precisions."""
    return quadratic_diagonal(model.linear_path())


def _single_scale_maps(model: Glow) -> list[torch.Tensor]:
    """U_k = W_k·diag(exp(s_k)) for the K steps of a one-level model, in order of application."""
    if len(model.levels) != 1 or model.config.prior != "fixed":
        raise TheoryError("the per-channel formula needs a single-level Glow (levels=1) with a fixed N(0, σ_ψ²) "
                          "prior; use the ledger or closed_form()")
    return [step.invconv.matrix().double() @ torch.diag(step.actnorm.log_scale.double().exp().flatten())
            for step in model.levels[0]]


def derived_coefficients(model: Glow) -> torch.Tensor:
    """‖M_{:,c}‖²/σ_ψ² per squeezed channel c, M = U_K⋯U_1 (derivation step "closed_form")."""
    m = torch.eye(model.top_shape[0], dtype=torch.float64)
    for u in _single_scale_maps(model):
        m = u @ m
    return (m**2).sum(0) / model.config.prior_std**2


def paper_coefficients(model: Glow) -> torch.Tensor:
    """(Π_k Σ_j u_kcj)²/σ_ψ² per squeezed channel c, as printed in the paper (derivation step "paper_form")."""
    prod = torch.ones(model.top_shape[0], dtype=torch.float64)
    for u in _single_scale_maps(model):
        prod = prod * u.sum(1)
    return prod**2 / model.config.prior_std**2


def variance_gap(h_diag: np.ndarray, var_p: np.ndarray, var_q: np.ndarray) -> float:
    """The closed form's gap ½ Σ_d H_dd (σ²_q,d − σ²_p,d) in nats/image, from per-dimension variances in model space."""
    return 0.5 * float(np.ravel(h_diag) @ (np.ravel(var_q) - np.ravel(var_p)))


def closed_form(model: torch.nn.Module, p: Moments, q: Moments, alphas: list[float] | None = None) -> dict:
    """The constant-volume closed form ½ Σ_d H_dd Δσ²_d (nats/image), and its graying curve
    ½(α²-1) Σ_d H_dd σ²_p*,d (x_α = α·x + (1-α)·grey changes the variances by α², means ignored)."""
    info = describe(model)
    if not (info.constant_volume and info.linear_path):
        raise TheoryError("the closed form needs a constant-volume flow with a linear path (additive couplings, "
                          "--model cvglow); use the exact second-order prediction for other models")
    h_diag = linear_path_curvature(model)
    gap = variance_gap(h_diag, p.var, q.var)
    out = {"gap_nats": gap, "gap_bpd": nats_gap_to_bpd(gap, info.dims),
           # -H_dd of the linear path averaged over the pixels of each image channel (all levels pooled); for a
           # one-level model it is ‖M_:,c‖²/σ_ψ² of the squeezed channels (derived_coefficients), averaged
           "neg_hessian_diag_pixel_mean": (-h_diag).mean(axis=(1, 2)).tolist(),
           "sum_var_diff_pixels": float((q.var - p.var).sum()) * LEVELS**2}
    if alphas is not None:
        out["graying"] = [0.5 * (a * a - 1.0) * float(h_diag.ravel() @ p.var) for a in alphas]
    return out


# ----------------------------------------------------------------------------------- Monte Carlo
def _samples(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return images[rng.choice(len(images), size=min(n, len(images)), replace=False)]


def taylor_gap(model: torch.nn.Module, x0: torch.Tensor, v_p: torch.Tensor, v_q: torch.Tensor, mu_p: torch.Tensor,
               mu_q: torch.Tensor, batch_size: int = 32) -> dict:
    """Monte Carlo E_q[T] - E_p*[T] for the Taylor polynomial T of log p at x0 (1×C×H×W, model space).

    v_p, v_q: sampled deviations x - x0 (rows); mu_p, mu_q: exact means. The gradient term g·(μ_q - μ_p) is
    exact; the curvature term ½(E_q[vᵀHv] - E_p*[vᵀHv]) is a sample mean with its standard error.
    """
    device = model_device(model)
    mu_p, mu_q = mu_p.reshape(x0.shape), mu_q.reshape(x0.shape)
    vecs = torch.cat([v_p, v_q])
    hv_parts, g = [], None
    for s in range(0, len(vecs), batch_size):
        chunk = vecs[s: s + batch_size]
        points = x0.expand(len(chunk), *x0.shape[1:]).to(device)
        _, grad, (hv,) = hessian_vector_products(model, points, [chunk.to(device)])
        hv_parts.append(hv.cpu())
        g = grad[:1].cpu()
    quad = _flat_dot(vecs, torch.cat(hv_parts))
    n_p = len(v_p)
    curv_p, se_p = _mean_se(0.5 * quad[:n_p])
    curv_q, se_q = _mean_se(0.5 * quad[n_p:])
    grad_term = float(_flat_dot(g, mu_q - mu_p)[0])
    return {"gap_nats": grad_term + curv_q - curv_p, "stderr": math.hypot(se_q, se_p), "gradient_term": grad_term,
            "curvature_term": curv_q - curv_p, "n_samples": {"in_test": n_p, "out_test": len(v_q)}}


def averaged_curvature(model: torch.nn.Module, points: torch.Tensor, v_p: torch.Tensor, v_q: torch.Tensor,
                       mu_p: torch.Tensor, mu_q: torch.Tensor, batch_size: int = 32) -> dict:
    """Like ``taylor_gap`` but with g and H averaged over ``points`` (row j pairs H(x_j) with v_p,j and v_q,j)."""
    device = model_device(model)
    grads, diffs = [], []
    for s in range(0, len(points), batch_size):
        sl = slice(s, s + batch_size)
        _, grad, (hq, hp) = hessian_vector_products(model, points[sl].to(device),
                                                    [v_q[sl].to(device), v_p[sl].to(device)])
        grads.append(grad.cpu())
        diffs.append(0.5 * (_flat_dot(v_q[sl], hq.cpu()) - _flat_dot(v_p[sl], hp.cpu())))
    g_bar = torch.cat(grads).mean(0, keepdim=True)
    curv, se = _mean_se(torch.cat(diffs))
    grad_term = float(_flat_dot(g_bar, (mu_q - mu_p).reshape(g_bar.shape))[0])
    return {"gap_nats": grad_term + curv, "stderr": se, "gradient_term": grad_term, "curvature_term": curv,
            "n_points": len(points)}


def monte_carlo(model: torch.nn.Module, p_images: np.ndarray, q_images: np.ndarray, x0_pixels: np.ndarray, *,
                n_samples: int = 128, seed: int = 0, batch_size: int = 32) -> dict:
    """The Monte Carlo estimates from ``n_samples`` images per set: the second order at x0 and the
    averaged-curvature extra (H at dequantised data points from ½(p* + q), paired with the same deviations)."""
    model.eval()
    dims = describe(model).dims
    rng = np.random.default_rng(seed)
    ps, qs = _samples(p_images, n_samples, rng), _samples(q_images, n_samples, rng)
    x0 = to_model_space(x0_pixels)[None]
    v_p, v_q = to_model_space(ps) - x0, to_model_space(qs) - x0
    mu_p = to_model_space(p_images.mean(0, dtype=np.float64))
    mu_q = to_model_space(q_images.mean(0, dtype=np.float64))
    mc = taylor_gap(model, x0, v_p, v_q, mu_p, mu_q, batch_size=batch_size)

    gen = torch.Generator().manual_seed(seed)
    m = min(len(v_p), len(v_q))
    points = torch.cat([dequantize(torch.from_numpy(ps[:m]), gen, torch.float64),
                        dequantize(torch.from_numpy(qs[:m]), gen, torch.float64)])
    order = torch.randperm(2 * m, generator=gen)
    pair = torch.arange(2 * m) % m
    avg = averaged_curvature(model, points[order], v_p[pair], v_q[pair], mu_p, mu_q, batch_size)
    for r in (mc, avg):
        r["gap_bpd"] = nats_gap_to_bpd(r["gap_nats"], dims)
    return {"monte_carlo": mc, "averaged_curvature": avg}


# --------------------------------------------------------------------------------- all together
def predict(model: torch.nn.Module, x0_pixels: np.ndarray, p_images: np.ndarray, q_images: np.ndarray, *,
            gray_images: np.ndarray | None = None, alphas: list[float] | None = None, n_samples: int = 128,
            seed: int = 0, p: Moments | None = None, q: Moments | None = None) -> dict:
    """Every prediction for a flow from uint8 images of p* (IN-test) and q (OUT-test) and x0 (pixel units).

    Returns the closed form (constant-volume flows), the exact second order with its Monte Carlo estimate
    beside it, the averaged-curvature extra, E[T] per set for the quadratic check, the graying curves, the
    Hessian's spectrum at x0, the ledger's predicted rows (theory.ledger) and the quadratic itself
    (``quadratic``, a theory.quadratic.Quadratic, not JSON). With D > EXACT_MAX_DIMS the
    Monte Carlo estimate stands in for the exact second order and the exact-only parts are None.
    """
    model.eval()
    info = describe(model)
    if not info.smooth:
        raise TheoryError(f"the second-order predictions need a twice-differentiable log p(x̃); {info.name} declares "
                          f"smooth = False")
    dims = info.dims
    p = p or Moments.of_images(p_images)
    q = q or Moments.of_images(q_images)
    x0 = to_model_space(x0_pixels).numpy().ravel()
    mc = monte_carlo(model, p_images, q_images, x0_pixels, n_samples=n_samples, seed=seed)
    out = {"x0": "mean of IN-train", "averaged_curvature": mc["averaged_curvature"], "closed_form": None,
           "graying": None, "graying_closed_form": None, "taylor_mean": None, "hessian_spectrum": None,
           "ledger_rows": None, "linear_path_check": None, "quadratic": None}
    if info.constant_volume and info.linear_path:
        cf = closed_form(model, p, q, alphas)
        out["graying_closed_form"] = cf.pop("graying", None)
        out["closed_form"] = cf
    try:
        quad = exact_quadratic(model, x0)
    except TheoryError as err:
        out["exact_second_order"] = {**mc["monte_carlo"], "method": f"Monte Carlo ({err})"}
        return out
    exact = quad.gap(p, q)
    out["quadratic"] = quad  # the Quadratic itself (not JSON): the explanation's contrast curve uses it
    out["exact_second_order"] = {**exact, "gap_bpd": nats_gap_to_bpd(exact["gap_nats"], dims),
                                 "method": f"exact: H from {dims} Hessian-vector products, exact moments",
                                 "monte_carlo": mc["monte_carlo"]}
    out["taylor_mean"] = {"in_test": quad.expectation(p.dequantised()), "out_test": quad.expectation(q.dequantised())}
    if gray_images is not None and alphas is not None:
        g = Moments.of_images(gray_images)
        base = quad.expectation(g)
        out["graying"] = [quad.expectation(g.blend(a, GREY_CENTRE)) - base for a in alphas]
    out["hessian_spectrum"] = quad.spectrum()
    out["ledger_rows"] = ledger.predicted_rows(model, quad, p, q, mc["monte_carlo"])
    out["linear_path_check"] = ledger.linear_path_check(model, out["ledger_rows"], p_images, q_images)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m theory.predict", description=__doc__.splitlines()[0],
                                epilog=SOURCE_HELP)
    p.add_argument("in_dataset", metavar="IN", help="the data the model was trained on (p*): a registry name or a path")
    p.add_argument("out_dataset", metavar="OUT", help="the other data (q): a registry name, constant, noise, or a path")
    p.add_argument("--checkpoint", type=Path, required=True)
    add_shape_arguments(p)
    p.add_argument("--samples", type=int, default=128, help="images per set for the Monte Carlo estimates")
    add_data_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the predictions here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 1:
        raise TheoryError(f"--samples must be ≥ 1, got {args.samples}")
    if args.seed < 0:
        raise TheoryError(f"--seed must be a whole number ≥ 0, got {args.seed}")
    for name in (args.in_dataset, args.out_dataset):
        sources.check_name(name)
    if args.json:
        writable_file(args.json, "--json")
    model, payload, path = model_from_checkpoint(args.checkpoint)
    info = describe(model, payload["model"])
    if not info.smooth:  # before reading any data
        raise TheoryError(f"{args.checkpoint} is a {payload['model']}: {info.name} has no differentiable log p(x̃) "
                          f"(discrete or a bound), so the second-order theory does not apply")
    in_train, in_test = sources.open_in(args.in_dataset, data_options(args))
    check_trained_on(payload, path, in_train, in_test)
    out = sources.open_out(args.out_dataset, info.shape, shape_map(args), data_options(args),
                           n_synthetic=len(in_test), seed=args.seed, in_test=in_test)
    result = predict(model, in_train.images.mean(0, dtype=np.float64), in_test.images, out.images,
                     n_samples=args.samples, seed=args.seed)
    print(f"predicted E_q[log p] - E_p*[log p] for q = {out.name}, p* = {in_test.name} "
          f"(model {payload['model']} on {payload['dataset']}), nats/image:")
    if result["ledger_rows"]:
        rows = ledger.assemble(result["ledger_rows"], info.dims)
        print("\n".join("  " + line for line in ledger.markdown_table(rows)))
        print("  " + rows["summary"])
    else:
        ex = result["exact_second_order"]
        print(f"  exact second order: {ex['gap_nats']:+.1f} ({ex['method']})")
    avg = result["averaged_curvature"]
    print(f"  averaged curvature (extra): {avg['gap_nats']:+.1f} ± {avg['stderr']:.1f}")
    if args.json:
        result.pop("quadratic")
        write_json(args.json, {**result, "data": {"in_test": in_test.provenance(), "out_test": out.provenance()}})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
