"""Predicted likelihood gaps E_q[log p] - E_p*[log p] for a trained flow:
``python -m theory.predict --checkpoint PATH cifar10 svhn``.

All predictions are in nats per image of x̃ = (x + u)/256 (the D·log 256 term cancels in a gap).
p* is IN-test, q is OUT-test, and the expansion point x0 is the mean of IN-train (model space).

- ``closed_form``     (CV-Glow): ½ Σ_d H_dd (σ²_q,d - σ²_p*,d), H the Hessian of the model's linear path
                      (coupling networks and split priors off): the paper's closed form, derived exactly.
- ``exact_second_order`` (any flow): E_q[T] - E_p*[T] for the Taylor polynomial T at x0, with
                      g = ∇log p(x0) and H = ∇²log p(x0) from autograd (Hessian-vector products),
                      E[(x-x0)ᵀH(x-x0)] by Monte Carlo over data samples (with its standard error).
- ``averaged_curvature`` (extra): the same with the gradient and Hessian averaged over data points
                      x ~ ½(p* + q) instead of taken at x0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from empirical import data
from empirical.checkpoint import model_from_checkpoint
from empirical.cli import run_cli
from empirical.errors import TheoryError
from empirical.flows import Glow
from empirical.likelihood import dequantize, nats_gap_to_bpd
from theory.statistics import DatasetStats, compute_stats, mean_difference

GREY = 128


def to_model_space(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Noise-free image centre in model space: (x + ½)/256, float64."""
    return (torch.as_tensor(np.asarray(pixels), dtype=torch.float64) + 0.5) / 256.0


def hessian_vector_products(model: Glow, points: torch.Tensor, vectors: list[torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """log p, ∇log p and H v at each row of ``points`` for each row-aligned set of ``vectors``.

    One double-backward per set: rows are independent images, so Σ_i (∇log p(x_i)·v_i) differentiated
    w.r.t. the batch gives H(x_i) v_i in row i. Needs the model in eval mode.
    """
    dtype = next(model.parameters()).dtype
    pts = points.to(dtype).detach().requires_grad_(True)
    log_p = model.log_prob(pts)
    (grad,) = torch.autograd.grad(log_p.sum(), pts, create_graph=True)
    hvs = []
    for i, v in enumerate(vectors):
        (hv,) = torch.autograd.grad((grad * v.to(dtype)).sum(), pts, retain_graph=i < len(vectors) - 1)
        hvs.append(hv.detach().double())
    return log_p.detach().double(), grad.detach().double(), hvs


def _flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    n = len(v)
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0


def linear_path_curvature(model: Glow, chunk: int = 256) -> np.ndarray:
    """diag(H) of the linear path's log-density (C×H×W), by exact central differences of a quadratic.

    H_dd = log p(x0 + e_d) + log p(x0 - e_d) - 2 log p(x0) is exact for a quadratic, in float64.
    """
    lin = model.linear_path().double().cpu()
    shape, dims = model.config.shape, model.config.dims
    base = torch.full((1, *shape), 0.5, dtype=torch.float64)
    diag = torch.empty(dims, dtype=torch.float64)
    with torch.no_grad():
        lp0 = lin.log_prob(base)[0]
        for start in range(0, dims, chunk):
            idx = torch.arange(start, min(start + chunk, dims))
            eye = torch.zeros(len(idx), dims, dtype=torch.float64)
            eye[torch.arange(len(idx)), idx] = 1.0
            eye = eye.view(-1, *shape)
            diag[idx] = lin.log_prob(base + eye) + lin.log_prob(base - eye) - 2 * lp0
    return diag.view(shape).numpy()


def _single_scale_maps(model: Glow) -> list[torch.Tensor]:
    """U_k = W_k·diag(exp(s_k)) for the K steps of a one-level model, in order of application."""
    if len(model.levels) != 1:
        raise TheoryError("the per-channel formula needs a single-level Glow (levels=1); use closed_form()")
    return [step.invconv.matrix().double() @ torch.diag(step.actnorm.log_scale.double().exp().flatten())
            for step in model.levels[0]]


def derived_coefficients(model: Glow) -> torch.Tensor:
    """‖M_{:,c}‖²/σ_ψ² per squeezed channel c, M = U_K⋯U_1 (derivation step "closed_form")."""
    m = torch.eye(model.top_shape[0], dtype=torch.float64)
    for u in _single_scale_maps(model):
        m = u @ m
    return (m**2).sum(0) / model.prior_log_std.double().exp().flatten()[0] ** 2


def paper_coefficients(model: Glow) -> torch.Tensor:
    """(Π_k Σ_j u_kcj)²/σ_ψ² per squeezed channel c, as printed in the paper (derivation step "paper_form")."""
    prod = torch.ones(model.top_shape[0], dtype=torch.float64)
    for u in _single_scale_maps(model):
        prod = prod * u.sum(1)
    return prod**2 / model.prior_log_std.double().exp().flatten()[0] ** 2


def closed_form(model: Glow, stats_q: DatasetStats, stats_p: DatasetStats,
                alphas: list[float] | None = None) -> dict:
    """The constant-volume closed form ½ Σ_d H_dd Δσ²_d (nats/image), and its graying curve."""
    if not model.constant_volume:
        raise TheoryError("the closed form needs a constant-volume flow (additive couplings, --model cvglow); "
                          "use the exact second-order prediction for affine Glow")
    h_diag = linear_path_curvature(model)
    dvar = (stats_q.var - stats_p.var) / 256.0**2
    gap = 0.5 * float((h_diag * dvar).sum())
    dims = model.config.dims
    out = {"gap_nats": gap, "gap_bpd": nats_gap_to_bpd(gap, dims),
           "coefficient_per_channel": (-h_diag).mean(axis=(1, 2)).tolist(),
           "sum_var_diff_pixels": float((stats_q.var - stats_p.var).sum())}
    if alphas is not None:
        var_p = stats_p.var / 256.0**2
        out["graying"] = [0.5 * (a * a - 1.0) * float((h_diag * var_p).sum()) for a in alphas]
    return out


def _samples(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return images[rng.choice(len(images), size=min(n, len(images)), replace=False)]


def taylor_gap(model: Glow, x0: torch.Tensor, v_p: torch.Tensor, v_q: torch.Tensor, mu_p: torch.Tensor,
               mu_q: torch.Tensor, extra: torch.Tensor | None = None, batch_size: int = 32) -> dict:
    """E_q[T] - E_p*[T] for the Taylor polynomial T of log p at x0 (1×C×H×W, model space).

    v_p, v_q: sampled deviations x - x0 (rows); mu_p, mu_q: exact means. The gradient term g·(μ_q - μ_p) is
    exact; the curvature term ½(E_q[vᵀHv] - E_p*[vᵀHv]) (which holds ½Tr{H(Σ_q - Σ_p*)} and the mean's
    quadratic term) is a Monte Carlo mean with its standard error. ``extra`` rows get H·v returned too.
    """
    device = next(model.parameters()).device
    mu_p, mu_q = mu_p.reshape(x0.shape), mu_q.reshape(x0.shape)
    rows = [v_p, v_q] + ([extra] if extra is not None else [])
    vecs = torch.cat(rows)
    hv_parts, lp_x0, g = [], 0.0, None
    for s in range(0, len(vecs), batch_size):
        chunk = vecs[s: s + batch_size]
        points = x0.expand(len(chunk), *x0.shape[1:]).to(device)
        lp, grad, (hv,) = hessian_vector_products(model, points, [chunk.to(device)])
        hv_parts.append(hv.cpu())
        lp_x0, g = float(lp[0]), grad[:1].cpu()
    hv = torch.cat(hv_parts)
    quad = _flat_dot(vecs, hv)
    n_p, n_q = len(v_p), len(v_q)
    curv_p, se_p = _mean_se(0.5 * quad[:n_p])
    curv_q, se_q = _mean_se(0.5 * quad[n_p: n_p + n_q])
    grad_term = float(_flat_dot(g, mu_q - mu_p)[0])
    return {"gap_nats": grad_term + curv_q - curv_p, "stderr": math.hypot(se_q, se_p), "gradient_term": grad_term,
            "curvature_term": curv_q - curv_p, "log_p_x0": lp_x0, "grad": g, "quad": quad, "hv": hv,
            "taylor_mean": {"p": lp_x0 + float(_flat_dot(g, mu_p - x0)[0]) + curv_p,
                            "q": lp_x0 + float(_flat_dot(g, mu_q - x0)[0]) + curv_q}}


def averaged_curvature(model: Glow, points: torch.Tensor, v_p: torch.Tensor, v_q: torch.Tensor,
                       mu_p: torch.Tensor, mu_q: torch.Tensor, batch_size: int = 32) -> dict:
    """Like ``taylor_gap`` but with g and H averaged over ``points`` (row j pairs H(x_j) with v_p,j and v_q,j)."""
    device = next(model.parameters()).device
    lps, grads, diffs = [], [], []
    for s in range(0, len(points), batch_size):
        sl = slice(s, s + batch_size)
        lp, grad, (hq, hp) = hessian_vector_products(model, points[sl].to(device),
                                                     [v_q[sl].to(device), v_p[sl].to(device)])
        lps.append(lp.cpu())
        grads.append(grad.cpu())
        diffs.append(0.5 * (_flat_dot(v_q[sl], hq.cpu()) - _flat_dot(v_p[sl], hp.cpu())))
    g_bar = torch.cat(grads).mean(0, keepdim=True)
    curv, se = _mean_se(torch.cat(diffs))
    grad_term = float(_flat_dot(g_bar, (mu_q - mu_p).reshape(g_bar.shape))[0])
    return {"gap_nats": grad_term + curv, "stderr": se, "gradient_term": grad_term, "curvature_term": curv,
            "n_points": len(points), "log_p": torch.cat(lps)}


def second_order(model: Glow, p_images: np.ndarray, q_images: np.ndarray, x0_pixels: np.ndarray, *,
                 n_samples: int = 128, seed: int = 0, batch_size: int = 32,
                 alphas: list[float] | None = None) -> dict:
    """Exact second-order prediction at x0, the averaged-curvature extra, the quadratic diagnostic and the
    graying curve, from uint8 images of p* (IN-test) and q (OUT-test)."""
    model.eval()
    dims = model.config.dims
    rng = np.random.default_rng(seed)
    ps, qs = _samples(p_images, n_samples, rng), _samples(q_images, n_samples, rng)
    x0 = to_model_space(x0_pixels)[None]
    v_p, v_q = to_model_space(ps) - x0, to_model_space(qs) - x0
    d_grey = to_model_space(np.full_like(x0_pixels, GREY))[None] - x0
    mu_p = to_model_space(p_images.mean(0, dtype=np.float64))
    mu_q = to_model_space(q_images.mean(0, dtype=np.float64))

    exact = taylor_gap(model, x0, v_p, v_q, mu_p, mu_q, extra=d_grey, batch_size=batch_size)
    g, quad, hd_grey = exact.pop("grad"), exact.pop("quad"), exact.pop("hv")[-1:]
    taylor_mean = exact.pop("taylor_mean")
    log_p_x0 = exact.pop("log_p_x0")
    exact["gap_bpd"] = nats_gap_to_bpd(exact["gap_nats"], dims)
    exact["n_samples"] = {"in_test": len(v_p), "out_test": len(v_q)}

    # averaged curvature at dequantised data points from ½(p* + q), paired with the same deviations
    gen = torch.Generator().manual_seed(seed)
    m = min(len(v_p), len(v_q))
    points = torch.cat([dequantize(torch.from_numpy(ps[:m]), gen, torch.float64),
                        dequantize(torch.from_numpy(qs[:m]), gen, torch.float64)])
    order = torch.randperm(2 * m, generator=gen)
    pair = torch.arange(2 * m) % m
    avg = averaged_curvature(model, points[order], v_p[pair], v_q[pair], mu_p, mu_q, batch_size)
    log_p_pts = avg.pop("log_p")
    avg["gap_bpd"] = nats_gap_to_bpd(avg["gap_nats"], dims)
    from_p = order < m

    out = {"x0": "mean of IN-train", "log_p_x0": log_p_x0, "exact_second_order": exact, "averaged_curvature": avg,
           "quadratic_check": {"in_test": {"taylor_at_x0": taylor_mean["p"],
                                           "sampled_log_p": float(log_p_pts[from_p].mean())},
                               "out_test": {"taylor_at_x0": taylor_mean["q"],
                                            "sampled_log_p": float(log_p_pts[~from_p].mean())}}}
    if alphas is not None:
        # x_α - x0 = α·v + (1-α)·d_grey, so E[T(x_α)] - E[T(x)] needs only g, vᵀHv, vᵀH d and dᵀH d
        quad_p, quad_grey = quad[: len(v_p)], float(quad[-1])
        g_ev = float(_flat_dot(g, v_p.mean(0, keepdim=True))[0])
        g_grey = float(_flat_dot(g, d_grey)[0])
        e_vhd = float(_flat_dot(v_p, hd_grey.expand_as(v_p)).mean())
        e_vhv = float(quad_p.mean())
        out["graying"] = [(a - 1) * g_ev + (1 - a) * g_grey
                          + 0.5 * ((a * a - 1) * e_vhv + 2 * a * (1 - a) * e_vhd + (1 - a) ** 2 * quad_grey)
                          for a in alphas]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m theory.predict", description=__doc__.splitlines()[0])
    p.add_argument("in_dataset", metavar="IN", help="the dataset the model was trained on (p*)")
    p.add_argument("out_dataset", metavar="OUT", help="the other dataset (q)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--match", action="store_true", help="map OUT to IN's shape explicitly")
    p.add_argument("--samples", type=int, default=128, help="data samples per dataset for the Hessian terms")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the predictions here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model, payload = model_from_checkpoint(args.checkpoint)
    shape = model.config.shape
    in_train = data.load_as(args.in_dataset, "train", shape, match=False, data_dir=args.data_dir)
    p_imgs = data.load_as(args.in_dataset, "test", shape, match=False, data_dir=args.data_dir)
    q_imgs = data.load_as(args.out_dataset, "test", shape, match=args.match, data_dir=args.data_dir,
                          seed=args.seed)
    stats_p, stats_q = compute_stats(p_imgs), compute_stats(q_imgs)
    result = {"in": args.in_dataset, "out": args.out_dataset, "checkpoint": str(args.checkpoint),
              "mean_difference": mean_difference(stats_q, stats_p)}
    result["closed_form"] = closed_form(model, stats_q, stats_p) if model.constant_volume else None
    result.update(second_order(model, p_imgs, q_imgs, in_train.mean(0, dtype=np.float64),
                               n_samples=args.samples, seed=args.seed))
    dims = model.config.dims
    print(f"predicted E_q[log p] - E_p*[log p] for q = {args.out_dataset} test, p* = {args.in_dataset} test "
          f"(model {payload['model']} on {payload['dataset']}):")
    if result["closed_form"]:
        cf = result["closed_form"]["gap_nats"]
        print(f"  closed form (CV-Glow linear path): {cf:+.1f} nats/image ({nats_gap_to_bpd(cf, dims):+.4f} bpd)")
    else:
        print("  closed form: n/a (needs a constant-volume flow, --model cvglow)")
    for key in ("exact_second_order", "averaged_curvature"):
        r = result[key]
        print(f"  {key.replace('_', ' ')}: {r['gap_nats']:+.1f} ± {r['stderr']:.1f} nats/image "
              f"({r['gap_bpd']:+.4f} bpd; gradient term {r['gradient_term']:+.1f}, "
              f"curvature term {r['curvature_term']:+.1f})")
    md = result["mean_difference"]
    print(f"  means differ by {md['rms_diff']:.1f} (RMS, pixel units); IN-test's RMS std is {md['rms_std_p']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
