"""The second-order Taylor polynomial of log p at x0, exactly, and its expectation under exact moments.

T(x) = log p(x0) + gᵀ(x−x0) + ½(x−x0)ᵀH(x−x0), with g and the full Hessian H of a flow from D
Hessian-vector products in float64 (no Monte Carlo), and (derivation step "expectation")
    E_r[T] = log p(x0) + gᵀ(μ_r−x0) + ½Tr{HΣ_r} + ½(μ_r−x0)ᵀH(μ_r−x0).
Moments are those of the noise-free pixel centres x̃ = (x+½)/256 in the model's space, 1/n normalised
(the empirical distribution of the evaluated images), so E_r[T] is exact for that finite set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from empirical.io.errors import TheoryError
from empirical.models.contract import image_shape, model_device, model_dtype
from empirical.models.likelihood import LEVELS
from theory.statistics import DatasetStats, compute_stats

EXACT_MAX_DIMS = 3072  # every registered dataset; H, Σ_p* and Σ_q are D×D float64 (75 MB each at D = 3072)
DEQUANTISATION_VAR = 1.0 / (12 * LEVELS**2)  # Var[u/256] for u ~ U[0, 1)


@dataclass(frozen=True)
class Moments:
    """Mean (D) and covariance (D×D) of a set in model space, float64."""

    mean: np.ndarray
    cov: np.ndarray
    n: int

    @classmethod
    def of_images(cls, images: np.ndarray) -> Moments:
        """Moments of the pixel centres (x+½)/256 of uint8 images N×C×H×W (1/n normalised)."""
        return cls.from_stats(compute_stats(images, full_cov=True, ddof=0))

    @classmethod
    def from_stats(cls, stats: DatasetStats) -> Moments:
        """From pixel-unit statistics computed with ``full_cov=True``."""
        if stats.cov is None:
            raise ValueError("Moments need the full covariance: compute_stats(..., full_cov=True)")
        return cls((stats.mean.ravel() + 0.5) / LEVELS, stats.cov / LEVELS**2, stats.n)

    def blend(self, alpha: float, centre: float) -> Moments:
        """Moments of α·x + (1−α)·centre (the graying experiment)."""
        return Moments(alpha * self.mean + (1 - alpha) * centre, alpha**2 * self.cov, self.n)

    def dequantised(self) -> Moments:
        """Moments of x̃ = (x+u)/256: the noise adds I/(12·256²) to the covariance, nothing to the mean."""
        return Moments(self.mean, self.cov + DEQUANTISATION_VAR * np.eye(len(self.mean)), self.n)

    @property
    def var(self) -> np.ndarray:
        return np.diagonal(self.cov)


@dataclass(frozen=True)
class Quadratic:
    """T(x) = log p(x0) + gᵀ(x−x0) + ½(x−x0)ᵀH(x−x0), flattened over the D dimensions, float64."""

    x0: np.ndarray
    log_p0: float
    grad: np.ndarray
    hess: np.ndarray

    def expectation(self, m: Moments) -> float:
        """E_r[T] = log p(x0) + gᵀ(μ−x0) + ½Tr{HΣ} + ½(μ−x0)ᵀH(μ−x0)."""
        d = m.mean - self.x0
        return float(self.log_p0 + self.grad @ d + 0.5 * np.einsum("ij,ij->", self.hess, m.cov)
                     + 0.5 * d @ self.hess @ d)

    def gap(self, p: Moments, q: Moments) -> dict:
        """E_q[T] − E_p*[T] and its three terms: gᵀ(μ_q−μ_p*), ½Tr{H(Σ_q−Σ_p*)} and the means' quadratic terms."""
        dp, dq = p.mean - self.x0, q.mean - self.x0
        terms = {"gradient_term": float(self.grad @ (q.mean - p.mean)),
                 "trace_term": 0.5 * float(np.einsum("ij,ij->", self.hess, q.cov - p.cov)),
                 "mean_term": 0.5 * float(dq @ self.hess @ dq - dp @ self.hess @ dp)}
        return {"gap_nats": sum(terms.values()), **terms}

    def spectrum(self) -> dict:
        """How far H is from the paper's −JᵀJ/σ_ψ² (negative semi-definite): its positive eigenvalues."""
        eig = np.linalg.eigvalsh(self.hess)
        tol = 1e-9 * float(np.abs(eig).max())
        return {"dims": len(eig), "positive": int((eig > tol).sum()), "max": float(eig.max()),
                "min": float(eig.min())}


def hessian_vector_products(model: torch.nn.Module, points: torch.Tensor, vectors: list[torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """log p, ∇log p and H v at each row of ``points`` for each row-aligned set of ``vectors``.

    One double-backward per set: rows are independent images, so Σ_i (∇log p(x_i)·v_i) differentiated
    w.r.t. the batch gives H(x_i) v_i in row i. Needs the model in eval mode.
    """
    dtype = model_dtype(model)
    pts = points.to(dtype).detach().requires_grad_(True)
    log_p = model.log_prob(pts)
    (grad,) = torch.autograd.grad(log_p.sum(), pts, create_graph=True)
    hvs = []
    for i, v in enumerate(vectors):
        (hv,) = torch.autograd.grad((grad * v.to(dtype)).sum(), pts, retain_graph=i < len(vectors) - 1)
        hvs.append(hv.detach().double())
    return log_p.detach().double(), grad.detach().double(), hvs


def exact_quadratic(model: torch.nn.Module, x0: np.ndarray, batch_size: int = 64) -> Quadratic:
    """log p(x0), g and H of a flow at x0 (model space, C×H×W or flat) from D Hessian-vector products in float64.

    Column block H[:, i:j] is the double-backward of ∇log p against basis vectors e_i…e_j, one per row of a
    batch of copies of x0. Works on the model's device; the model is copied, never changed.
    """
    shape = image_shape(model)
    dims = int(np.prod(shape))
    if dims > EXACT_MAX_DIMS:
        raise TheoryError(f"the exact Hessian needs D ≤ {EXACT_MAX_DIMS}; this model has D = {dims}")
    m64 = copy.deepcopy(model).to(torch.float64).eval()
    device = model_device(m64)
    point = torch.as_tensor(np.asarray(x0, dtype=np.float64).reshape(1, *shape), device=device)
    hess = np.empty((dims, dims))
    log_p0, grad = 0.0, None
    for start in range(0, dims, batch_size):
        idx = torch.arange(start, min(start + batch_size, dims), device=device)
        basis = torch.zeros(len(idx), dims, dtype=torch.float64, device=device)
        basis[torch.arange(len(idx), device=device), idx] = 1.0
        lp, g, (hv,) = hessian_vector_products(m64, point.expand(len(idx), *shape), [basis.view(-1, *shape)])
        hess[:, start: start + len(idx)] = hv.flatten(1).cpu().numpy().T
        log_p0, grad = float(lp[0]), g[0].flatten().cpu().numpy()
    return Quadratic(point.flatten().cpu().numpy(), log_p0, grad, 0.5 * (hess + hess.T))


def quadratic_diagonal(model: torch.nn.Module, chunk: int = 256) -> np.ndarray:
    """diag(H) (C×H×W) of a model whose log p is quadratic in x̃, by central differences in float64.

    H_dd = log p(x0 + e_d) + log p(x0 - e_d) - 2 log p(x0) is exact for a quadratic.
    """
    quad = copy.deepcopy(model).double().cpu().eval()
    shape = image_shape(model)
    dims = int(np.prod(shape))
    base = torch.full((1, *shape), 0.5, dtype=torch.float64)
    diag = torch.empty(dims, dtype=torch.float64)
    with torch.no_grad():
        lp0 = quad.log_prob(base)[0]
        for start in range(0, dims, chunk):
            idx = torch.arange(start, min(start + chunk, dims))
            eye = torch.zeros(len(idx), dims, dtype=torch.float64)
            eye[torch.arange(len(idx)), idx] = 1.0
            eye = eye.view(-1, *shape)
            diag[idx] = quad.log_prob(base + eye) + quad.log_prob(base - eye) - 2 * lp0
    return diag.view(shape).numpy()
