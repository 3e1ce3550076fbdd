"""The second-order explanation of Nalisnick et al. (ICLR 2019, §5), derived step by step in sympy.

``STEPS`` is a list of named steps; each holds a sympy equation a user can inspect (``step.expr``), the
assumptions it uses (keys of ``ASSUMPTIONS``) and a ``check`` that substitutes random numbers into a
concrete small instance and compares with an independent computation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp

from theory.assumptions import ASSUMPTIONS, Assumption


@dataclass
class Step:
    name: str
    title: str
    expr: sp.Basic
    uses: tuple[str, ...]
    check: Callable[[random.Random], bool]
    note: str = ""
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------- symbols for display
D = sp.Symbol("D", integer=True, positive=True)
x, x0, mu_q, mu_p, g = (sp.MatrixSymbol(n, D, 1) for n in ("x", "x_0", "mu_q", "mu_p*", "g"))
H, S_q, S_p, S_r = (sp.MatrixSymbol(n, D, D) for n in ("H", "Sigma_q", "Sigma_p*", "Sigma_r"))
mu_r = sp.MatrixSymbol("mu_r", D, 1)
L0 = sp.Symbol("log p(x0)")
sigma = sp.Symbol("sigma_psi", positive=True)
T = sp.Function("T")
E_q, E_p, E_r = (sp.Function(n) for n in ("E_q", "E_p*", "E_r"))


def _scalar(m: sp.MatrixExpr) -> sp.Expr:
    """A 1×1 matrix expression as a scalar that still prints as matrix algebra: tr(gᵀ(x - x0))."""
    return sp.Trace(m)


def instantiate(expr: sp.Basic, values: dict) -> sp.Basic:
    """Substitute concrete matrices (and scalars) into a step's symbolic expression; D is set from them."""
    n = next(v.shape[0] for v in values.values() if isinstance(v, sp.MatrixBase))
    mapping = {(k.subs(D, n) if isinstance(k, sp.MatrixSymbol) else k):
               (sp.ImmutableMatrix(v) if isinstance(v, sp.MatrixBase) else v) for k, v in values.items()}
    return expr.subs(D, n).subs(mapping).doit()


def _num(expr: sp.Basic, values: dict) -> float:
    return float(sp.N(instantiate(expr, values)))


def _close(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def _rand_matrix(rng: random.Random, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Float(rng.uniform(-1.5, 1.5)))


def _rand_spd(rng: random.Random, n: int) -> sp.Matrix:
    a = _rand_matrix(rng, n, n)
    return a * a.T + sp.eye(n) * sp.Float(0.1)


# ---------------------------------------------------------------------------------- the steps
TAYLOR_RHS = L0 + _scalar(g.T * (x - x0)) + sp.Rational(1, 2) * _scalar((x - x0).T * H * (x - x0))


def _check_taylor(rng: random.Random) -> bool:
    """T matches log p in value, gradient and Hessian at x0 for a non-quadratic 2-D log-density."""
    x1, x2 = sp.symbols("x1 x2")
    logp = -sp.log(sp.cosh(x1)) - sp.Rational(3, 10) * x1 * x2**2 + sp.sin(x2)
    pt = {x1: rng.uniform(-1, 1), x2: rng.uniform(-1, 1)}
    grad = sp.Matrix([logp.diff(v) for v in (x1, x2)]).subs(pt)
    hess = sp.hessian(logp, (x1, x2)).subs(pt)
    t = instantiate(TAYLOR_RHS, {L0: logp.subs(pt), g: grad, H: hess, x0: sp.Matrix([pt[x1], pt[x2]]),
                                 x: sp.Matrix([x1, x2])})
    ok = _close(float(t.subs(pt)), float(logp.subs(pt)))
    for v in (x1, x2):
        ok &= _close(float(t.diff(v).subs(pt)), float(logp.diff(v).subs(pt)))
    ok &= all(_close(float(a), float(b)) for a, b in zip(sp.hessian(t, (x1, x2)).subs(pt), hess, strict=True))
    return ok


EXPECT_RHS = (L0 + _scalar(g.T * (mu_r - x0))
              + sp.Rational(1, 2) * sp.Trace(H * (S_r + (mu_r - x0) * (mu_r - x0).T)))


def _gaussian_moment_expectation(poly: sp.Expr, eps: list[sp.Symbol]) -> sp.Expr:
    """E over ε with E[ε_i] = 0, E[ε_i ε_j] = δ_ij of a polynomial of degree ≤ 2 in ε."""
    p = sp.Poly(sp.expand(poly), *eps)
    total = sp.Integer(0)
    for powers, coeff in p.terms():
        if sum(powers) == 0:
            total += coeff
        elif sum(powers) == 2 and max(powers) == 2:
            total += coeff
    return total


def _check_expectation(rng: random.Random) -> bool:
    """E[T(x)] for x = μ + Aε (Σ = AAᵀ), expanded monomial by monomial, equals the formula."""
    n = 3
    eps = list(sp.symbols(f"e0:{n}"))
    a, mu, xz = _rand_matrix(rng, n, n), _rand_matrix(rng, n, 1), _rand_matrix(rng, n, 1)
    gv, hv = _rand_matrix(rng, n, 1), _rand_spd(rng, n)
    l0 = sp.Float(rng.uniform(-5, 5))
    sample = mu + a * sp.Matrix(eps)
    t = instantiate(TAYLOR_RHS, {L0: l0, g: gv, H: hv, x0: xz, x: sample})
    brute = _gaussian_moment_expectation(t, eps)
    formula = instantiate(EXPECT_RHS, {L0: l0, g: gv, H: hv, x0: xz, mu_r: mu, S_r: a * a.T})
    return _close(float(brute), float(formula))


delta = mu_q - mu_p
GAP_RHS = (_scalar(g.T * delta) + sp.Rational(1, 2) * sp.Trace(H * (S_q - S_p))
           + sp.Rational(1, 2) * _scalar(delta.T * H * delta))


def _random_moments(rng: random.Random, n: int) -> dict:
    return {g: _rand_matrix(rng, n, 1), H: -_rand_spd(rng, n), mu_q: _rand_matrix(rng, n, 1),
            mu_p: _rand_matrix(rng, n, 1), S_q: _rand_spd(rng, n), S_p: _rand_spd(rng, n),
            L0: sp.Float(rng.uniform(-5, 5))}


def _check_gap(rng: random.Random) -> bool:
    """Step 2 applied to q and to p*, expanded at x0 = μ_p*, then subtracted."""
    v = _random_moments(rng, 3)
    common = {L0: v[L0], g: v[g], H: v[H], x0: v[mu_p]}
    e_q = instantiate(EXPECT_RHS, {**common, mu_r: v[mu_q], S_r: v[S_q]})
    e_p = instantiate(EXPECT_RHS, {**common, mu_r: v[mu_p], S_r: v[S_p]})
    return _close(float(e_q - e_p), _num(GAP_RHS, v))


EQUAL_MEANS_RHS = sp.Rational(1, 2) * sp.Trace(H * (S_q - S_p))


def _check_equal_means(rng: random.Random) -> bool:
    v = _random_moments(rng, 3)
    v[mu_q] = v[mu_p]
    return _close(_num(GAP_RHS, v), _num(EQUAL_MEANS_RHS, v))


# change of variables --------------------------------------------------------------------------
xs = sp.symbols("x1 x2")
f_fun, pz_fun = sp.Function("f"), sp.Function("p_z")
CHANGE_OF_VARIABLES = sp.Eq(sp.Function("log_p")(x),
                            sp.log(pz_fun(f_fun(x))) + sp.log(sp.Abs(sp.Function("det_J_f")(x))))


def _check_change_of_variables(rng: random.Random) -> bool:
    """For an affine-coupling flow in 2-D and a standard normal p_z, p(x) integrates to 1."""
    import numpy as np
    from scipy import integrate

    a, b = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)
    x1, x2 = xs
    f = sp.Matrix([x1, x2 * sp.exp(a * sp.tanh(x1)) + b * x1**2])
    logdet = sp.log(sp.Abs(f.jacobian([x1, x2]).det()))
    logp = -(f[0] ** 2 + f[1] ** 2) / 2 - sp.log(2 * sp.pi) + logdet
    dens = sp.lambdify((x1, x2), sp.exp(logp), "numpy")
    total, _ = integrate.dblquad(lambda y, z: dens(z, y), -9, 9, lambda _: -12, lambda _: 12,
                                 epsabs=1e-9)
    return bool(np.isclose(total, 1.0, atol=1e-5))


# constant volume ------------------------------------------------------------------------------
def _cv_flow_logdet() -> tuple[sp.Expr, tuple[sp.Symbol, ...]]:
    """log|det J| of actnorm → 1×1 conv → additive coupling in 2-D, derived by sympy."""
    x1, x2 = xs
    s1, s2, b1, b2 = sp.symbols("s1 s2 b1 b2", real=True)
    w = sp.Matrix(2, 2, sp.symbols("w11 w12 w21 w22", real=True))
    t = sp.Function("t")
    h = w * sp.Matrix([(x1 + b1) * sp.exp(s1), (x2 + b2) * sp.exp(s2)])
    y = sp.Matrix([h[0], h[1] + t(h[0])])
    return sp.simplify(sp.log(sp.Abs(y.jacobian([x1, x2]).det()))), (x1, x2)


CV_LOGDET, _ = _cv_flow_logdet()
CONSTANT_VOLUME = sp.Eq(sp.Function("log_abs_det_J")(x), CV_LOGDET)


def _check_constant_volume(rng: random.Random) -> bool:
    """The derived log|det J| has zero gradient (so zero Hessian) in x, for any coupling function t."""
    logdet, (x1, x2) = _cv_flow_logdet()
    return all(sp.simplify(logdet.diff(v)) == 0 for v in (x1, x2))


# Gaussian latent ------------------------------------------------------------------------------
J = sp.MatrixSymbol("J_f", D, D)
GAUSSIAN_HESSIAN = sp.Eq(sp.Function("nabla2_log_p")(x),
                         -(J.T * J + sp.MatrixSymbol("Sum_o_f_o_nabla2_f_o", D, D)) / sigma**2)


def _check_gaussian_latent(rng: random.Random) -> bool:
    """∇²[-|f(x)|²/2σ²] = -(JᵀJ + Σ_o f_o ∇²f_o)/σ² for a nonlinear 2-D f at a random point."""
    x1, x2 = xs
    a = rng.uniform(-1, 1)
    f = sp.Matrix([x1 + a * x2**2, x2 + sp.sin(x1)])
    s = rng.uniform(0.5, 2)
    direct = sp.hessian(-(f.T * f)[0] / (2 * s**2), (x1, x2))
    jac = f.jacobian([x1, x2])
    formula = -(jac.T * jac + sum((f[o] * sp.hessian(f[o], (x1, x2)) for o in range(2)), sp.zeros(2))) / s**2
    pt = {x1: rng.uniform(-1, 1), x2: rng.uniform(-1, 1)}
    return all(_close(float(u), float(v)) for u, v in zip(direct.subs(pt), formula.subs(pt), strict=True))


# linear path ----------------------------------------------------------------------------------
C_DEMO, K_DEMO = 2, 2
U = [sp.Matrix(C_DEMO, C_DEMO, lambda c, j, k=k: sp.Symbol(f"u_{k + 1}{c + 1}{j + 1}", real=True))
     for k in range(K_DEMO)]
M_DEMO = U[1] * U[0]
xc = sp.Matrix(sp.symbols(f"x_c1:{C_DEMO + 1}", real=True))


def _linear_hessian() -> sp.Matrix:
    z = M_DEMO * xc
    return sp.hessian(-(z.T * z)[0] / (2 * sigma**2), list(xc))


LINEAR_PATH = sp.Eq(sp.MatrixSymbol("H", C_DEMO, C_DEMO), -M_DEMO.T * M_DEMO / sigma**2)


def _check_linear_path(rng: random.Random) -> bool:
    """sympy's Hessian of log N(M x; 0, σ²I) is exactly -MᵀM/σ² (symbolically)."""
    return sp.simplify(_linear_hessian() - LINEAR_PATH.rhs) == sp.zeros(C_DEMO, C_DEMO)


# diagonal covariance --------------------------------------------------------------------------
P_DEMO = 2  # pixels
dvar = sp.Matrix(P_DEMO, C_DEMO, lambda p, c: sp.Symbol(f"Delta_sigma2_{p + 1}{c + 1}", real=True))
DERIVED_COEFF = [sum(M_DEMO[o, c] ** 2 for o in range(C_DEMO)) for c in range(C_DEMO)]
CLOSED_FORM = sp.Eq(sp.Symbol("E_q[log p] - E_p*[log p]"),
                    -1 / (2 * sigma**2) * sum(DERIVED_COEFF[c] * sum(dvar[p, c] for p in range(P_DEMO))
                                              for c in range(C_DEMO)))


def _check_closed_form(rng: random.Random) -> bool:
    """½Tr{(I_P ⊗ H) diag(Δσ²)} with H = -MᵀM/σ² equals the per-channel closed form."""
    subs = {s: rng.uniform(-1.5, 1.5) for s in M_DEMO.free_symbols}
    subs.update({s: rng.uniform(-1, 1) for s in dvar})
    subs[sigma] = rng.uniform(0.5, 2)
    h = LINEAR_PATH.rhs.subs(subs)
    full_h = sp.diag(*([h] * P_DEMO))
    delta_cov = sp.diag(*[dvar[p, c].subs(subs) for p in range(P_DEMO) for c in range(C_DEMO)])
    return _close(float((full_h * delta_cov).trace() / 2), float(CLOSED_FORM.rhs.subs(subs)))


# the paper's printed form ---------------------------------------------------------------------
PAPER_COEFF = [sp.prod([sum(U[k][c, j] for j in range(C_DEMO)) for k in range(K_DEMO)]) ** 2
               for c in range(C_DEMO)]
PAPER_FORM = sp.Eq(sp.MatrixSymbol("c_paper", C_DEMO, 1), sp.Matrix(PAPER_COEFF))


def _check_paper_form(rng: random.Random) -> bool:
    """The paper's coefficient equals the derived ‖M_{:,c}‖² with diagonal U_k (no channel mixing), and also
    with pure permutation matrices (which do move channels): diagonal is sufficient, not necessary."""
    diag = {U[k][c, j]: 0 for k in range(K_DEMO) for c in range(C_DEMO) for j in range(C_DEMO) if c != j}
    diagonal_ok = all(sp.simplify((PAPER_COEFF[c] - DERIVED_COEFF[c]).subs(diag)) == 0 for c in range(C_DEMO))
    swap = {U[k][c, j]: int(c != j) for k in range(K_DEMO) for c in range(C_DEMO) for j in range(C_DEMO)}
    permutation_ok = all(PAPER_COEFF[c].subs(swap) == DERIVED_COEFF[c].subs(swap) == 1 for c in range(C_DEMO))
    return diagonal_ok and permutation_ok


def paper_discrepancy(seed: int = 0) -> dict:
    """A concrete instance with channel mixing where the paper's and the derived coefficients differ."""
    rng = random.Random(seed)
    subs = {s: round(rng.uniform(-1, 1), 3) for s in M_DEMO.free_symbols}
    return {"u": {str(k): v for k, v in sorted(subs.items(), key=lambda kv: str(kv[0]))},
            "paper": [float(c.subs(subs)) for c in PAPER_COEFF],
            "derived": [float(c.subs(subs)) for c in DERIVED_COEFF]}


STEPS: list[Step] = [
    Step("taylor", "Second-order Taylor expansion of log p around x0 (g = ∇log p(x0), H = ∇²log p(x0))",
         sp.Eq(T(x), TAYLOR_RHS), ("smooth", "second_order"), _check_taylor),
    Step("expectation", "Expected value under a distribution r with mean μ_r and covariance Σ_r",
         sp.Eq(E_r(T(x)), EXPECT_RHS), ("second_order",), _check_expectation,
         note="E[(x-x0)ᵀH(x-x0)] = Tr{HΣ_r} + (μ_r-x0)ᵀH(μ_r-x0)"),
    Step("gap", "Difference of expectations, expanded at x0 = μ_p*",
         sp.Eq(E_q(T(x)) - E_p(T(x)), GAP_RHS), ("smooth", "second_order"), _check_gap,
         note="the mean's quadratic term ½δᵀHδ is second order and is kept by the exact predictor"),
    Step("equal_means", "With equal means only the curvature term is left",
         sp.Eq(E_q(T(x)) - E_p(T(x)), EQUAL_MEANS_RHS), ("equal_means",), _check_equal_means),
    Step("change_of_variables", "A flow splits log p into a density and a volume term, so H does too",
         CHANGE_OF_VARIABLES, ("flow",), _check_change_of_variables),
    Step("constant_volume", "For actnorm, 1×1 conv and additive coupling, log|det J| is constant in x: "
         "its Hessian vanishes", CONSTANT_VOLUME, ("constant_volume",), _check_constant_volume,
         note="derived for any coupling function t; an affine coupling's log-det depends on x"),
    Step("gaussian_latent", "Hessian of the density term for p_z = N(0, σ_ψ² I)",
         GAUSSIAN_HESSIAN, ("gaussian_latent",), _check_gaussian_latent),
    Step("linear_path", f"Dropping the coupling networks leaves f linear: H = -MᵀM/σ_ψ² "
         f"(shown for C={C_DEMO} channels, K={K_DEMO} steps)", LINEAR_PATH, ("linear_path",),
         _check_linear_path),
    Step("closed_form", "With diagonal covariances: the closed form, coefficient ‖M_{:,c}‖² = Σ_o M_oc² "
         f"per input channel (shown for {P_DEMO} pixels)", CLOSED_FORM, ("diagonal_covariance",),
         _check_closed_form,
         note="every coefficient is ≥ 0, so lower variance in every dimension ⇒ higher likelihood"),
    Step("paper_form", "The paper prints the coefficient as (Π_k Σ_j u_kcj)²: equal to ‖M_{:,c}‖² when every "
         "U_k is diagonal, or a pure permutation; not in general", PAPER_FORM, ("no_channel_mixing",),
         _check_paper_form,
         note="diagonal U_k is sufficient, not necessary (permutations give 1 = 1); with general mixing the two "
              "differ (see paper_discrepancy()); both are ≥ 0, so the sign argument survives when all Δσ² share "
              "a sign"),
]


def run_checks(seed: int = 0, repeats: int = 3) -> list[tuple[str, bool]]:
    """Each step's check on ``repeats`` random instances; (name, passed)."""
    results = []
    for step in STEPS:
        rng = random.Random(seed)
        ok = all(step.check(rng) for _ in range(repeats))
        results.append((step.name, bool(ok)))
    return results


def render(step: Step, latex: bool = False) -> str:
    """The step's equation as pretty text or LaTeX."""
    return sp.latex(step.expr) if latex else sp.pretty(step.expr, use_unicode=True)


__all__ = ["ASSUMPTIONS", "STEPS", "Step", "Assumption", "run_checks", "render", "paper_discrepancy"]
