"""The assumptions of the paper's second-order argument, as data: each step of ``theory.derivation`` and each row of
``theory.ledger`` names the ones it adds (kept apart from the sympy derivation so that reading them costs nothing)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Assumption:
    key: str
    statement: str


ASSUMPTIONS: dict[str, Assumption] = {a.key: a for a in [
    Assumption("smooth", "log p is twice differentiable; the expansion point x0 is the mean of p*"),
    Assumption("second_order", "terms of third and higher order in (x - x0) are dropped"),
    Assumption("equal_means", "E_q[x] = E_p*[x]: the first-order term (and the mean's quadratic term) vanish"),
    Assumption("flow", "p(x) = p_z(f(x))·|det ∂f/∂x| for an invertible, differentiable f"),
    Assumption("constant_volume", "log|det ∂f/∂x| does not depend on x: actnorm, 1×1 convs and additive "
               "couplings only (CV-Glow)"),
    Assumption("gaussian_latent", "p_z = N(0, σ_ψ² I)"),
    Assumption("linear_path", "the coupling networks contribute nothing to the Hessian: f is the linear "
               "map x ↦ M x + b of the actnorm-scaled 1×1 convolutions, M = U_K⋯U_1 at every pixel"),
    Assumption("diagonal_covariance", "Σ_q and Σ_p* are diagonal (per-dimension variances σ²_{h,w,c})"),
    Assumption("no_channel_mixing", "the paper's (Π_k Σ_j u_kcj)² stands for ‖M_:,c‖²: true when every U_k is "
               "diagonal (sufficient, not necessary: pure permutations also give equality), false in general"),
]}
