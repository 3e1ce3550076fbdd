"""Paper-style figures (matplotlib, PNG): log-likelihood histograms, moments, graying, decomposition.

Figures are made with ``matplotlib.figure.Figure`` (no pyplot, no backend switch) and styled inside a
``matplotlib.rc_context``: importing or calling this module changes nothing in the caller's matplotlib.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from empirical.io.atomic import atomic_write
from empirical.models.likelihood import discrete_log_likelihood

COLOURS = {"in_train": "#1f77b4", "in_test": "#2ca02c", "out_test": "#d62728"}
STYLE = {"font.size": 10, "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": 150}


def styled(draw):
    """Run a figure function inside the paper style (rc_context), leaving the caller's settings as they were."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def new_figure(**kwargs) -> Figure:
    return Figure(layout="constrained", **kwargs)


def save_png(fig: Figure, path: Path) -> Path:
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))
    return path


@styled
def loglik_histograms(loglik: dict[str, np.ndarray], labels: dict[str, str], title: str, path: Path) -> Path:
    """Histograms of per-image log p(x) (discrete, nats), as the paper's Figure 1."""
    fig = new_figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    values = np.concatenate(list(loglik.values()))
    lo, hi = np.percentile(values, [0.5, 99.5])
    bins = np.linspace(lo, hi, 60)
    for key, v in loglik.items():
        ax.hist(v, bins=bins, histtype="stepfilled", density=True, alpha=0.45, color=COLOURS[key], label=labels[key])
    ax.set_xlabel("log p(x)  [nats per image]")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(frameon=False)
    return save_png(fig, path)


@styled
def moment_histograms(stats: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str],
                      path: Path) -> Path:
    """Histograms of per-dimension means and variances (pixel units) of both datasets."""
    fig = new_figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    for i, name in enumerate(("mean", "variance")):
        data = [v[i].ravel() for v in stats.values()]
        bins = np.linspace(min(d.min() for d in data), max(d.max() for d in data), 50)
        for key, d in zip(stats, data, strict=True):
            axes[i].hist(d, bins=bins, histtype="stepfilled", density=True, alpha=0.5, color=COLOURS[key],
                         label=labels[key])
        axes[i].set_xlabel(f"per-dimension {name}  [pixel units]")
    axes[0].set_ylabel("density")
    axes[1].legend(frameon=False)
    return save_png(fig, path)


@styled
def graying_curve(alphas: list[float], measured: list[float], predicted: dict[str, list[float]],
                  path: Path) -> Path:
    """E[log p(x_α)] - E[log p(x)] for x_α = α·x + (1-α)·128: measured vs predicted."""
    fig = new_figure(figsize=(5, 3.6))
    ax = fig.subplots()
    ax.plot(alphas, measured, "o-", color="k", label="measured")
    for (name, curve), style in zip(predicted.items(), ("s--", "^:"), strict=False):
        ax.plot(alphas, curve, style, label=f"predicted: {name}")
    ax.axhline(0, color="0.7", lw=0.8)
    scale = max([abs(v) for v in measured] + [1.0])
    if any(abs(v) > 20 * scale for curve in predicted.values() for v in curve):  # keep the measured curve visible
        ax.set_yscale("symlog", linthresh=scale, linscale=2)
    ax.set_xlabel("α  (1 = original image, 0 = mid-grey)")
    ax.set_ylabel("Δ log p  [nats per image]")
    ax.set_title("Graying: x_α = α·x + (1-α)·128")
    ax.legend(frameon=False, loc="best")
    return save_png(fig, path)


@styled
def contrast_curves(s: list[float], measured: dict[str, list[float]], predicted: dict[str, list[float]] | None,
                    labels: dict[str, str], path: Path) -> Path:
    """E[log p(x_s)] − E[log p(x)] against the contrast s of x_s = μ + s·(x − μ), measured (solid) and the
    second-order prediction (dashed), one colour per set."""
    fig = new_figure(figsize=(5.2, 3.8))
    ax = fig.subplots()
    for key, curve in measured.items():
        ax.plot(s, curve, "o-", color=COLOURS[key], label=f"{labels[key]}: measured")
        if predicted:
            ax.plot(s, predicted[key], "s--", color=COLOURS[key], alpha=0.7, label=f"{labels[key]}: second order")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(1, color="0.85", lw=0.8)
    scale = max([abs(v) for curve in measured.values() for v in curve] + [1.0])
    if predicted and any(abs(v) > 20 * scale for curve in predicted.values() for v in curve):
        ax.set_yscale("symlog", linthresh=scale, linscale=2)
    ax.set_xlabel("contrast s  (1 = the images as they are)")
    ax.set_ylabel("Δ log p  [nats per image]")
    ax.set_title("Contrast scaling: x_s = μ + s·(x − μ)")
    ax.legend(frameon=False, fontsize=7)
    return save_png(fig, path)


@styled
def decomposition_histograms(parts: dict[str, dict[str, np.ndarray]], labels: dict[str, str], path: Path) -> Path:
    """Per-image density log p_z(f(x)) and volume log|det ∂f/∂x| (nats) for each dataset, side by side."""
    fig = new_figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    for ax, (part, title) in zip(axes, (("density", "density  log p_z(f(x))"),
                                        ("volume", "volume  log|det ∂f/∂x|")), strict=True):
        values = np.concatenate([v[part] for v in parts.values()])
        lo, hi = np.percentile(values, [0.5, 99.5])
        if hi - lo < 1e-6 * max(1.0, abs(hi)):  # constant volume (CV-Glow): say so instead of a spike
            ax.text(0.5, 0.5, f"constant for every image:\n{lo:.1f} nats", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        bins = np.linspace(lo, hi, 60)
        for key, v in parts.items():
            ax.hist(v[part], bins=bins, histtype="stepfilled", density=True, alpha=0.45, color=COLOURS[key],
                    label=f"{labels[key]} (mean {v[part].mean():.0f})")
        ax.set_title(title)
        ax.set_xlabel("nats per image")
    axes[0].set_ylabel("density")
    axes[0].legend(frameon=False, fontsize=8)
    return save_png(fig, path)


@styled
def histogram_grid(panels: dict[str, dict[str, np.ndarray]], labels: dict[str, dict[str, str]], xlabel: str,
                   path: Path, ncols: int = 4) -> Path:
    """One panel per title: density histograms of its sets (keys of COLOURS) on shared bins, legend in each; a
    panel whose values span more than two orders of magnitude gets log-spaced bins, a log axis and counts."""
    nrows = -(-len(panels) // ncols)
    cols = min(ncols, len(panels))
    fig = new_figure(figsize=(4.2 * cols, 3.4 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, (title, sets) in zip(axes.flat, panels.items(), strict=False):  # spare axes are hidden below
        lo, hi = np.percentile(np.concatenate(list(sets.values())), [0.5, 99.5])
        logscale = lo > 0 and hi / lo > 100  # sets orders of magnitude apart (noise under a flow): log axis
        bins = np.geomspace(lo, hi, 60) if logscale else np.linspace(lo, hi, 60)
        for key, v in sets.items():
            ax.hist(v, bins=bins, histtype="stepfilled", density=not logscale, alpha=0.45, color=COLOURS[key],
                    label=labels[title][key])
        if logscale:
            ax.set_xscale("log")
            ax.set_ylabel("images")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(frameon=False, fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ax.get_ylabel() or "density")
    return save_png(fig, path)


@styled
def family_histograms(per_image: dict[str, dict[str, np.ndarray]], labels: dict[str, str],
                      dims: dict[str, int], path: Path) -> Path:
    """One panel per model family: histograms of per-image log p(x) (discrete, nats) for the three sets."""

    panels = {name: {k: discrete_log_likelihood(v, dims[name]) for k, v in sets.items()}
              for name, sets in per_image.items()}
    return histogram_grid(panels, dict.fromkeys(panels, labels), "log p(x)  [nats per image]", path,
                          ncols=len(panels))


@styled
def roc_curves(per_image: dict[str, tuple[np.ndarray, np.ndarray]], aurocs: dict[str, float], title: str,
               path: Path, negative: str = "IN-test", positive: str = "OUT-test") -> Path:
    """The ROC curve of every score in one panel (``positive`` flagged against ``negative``), AUROC in the legend."""
    from sklearn.metrics import roc_curve

    fig = new_figure(figsize=(7.4, 4.4))
    ax = fig.subplots()
    for name, (s_in, s_out) in per_image.items():
        y = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
        fpr, tpr, _ = roc_curve(y, np.concatenate([s_in, s_out]))
        ax.plot(fpr, tpr, lw=1.4, label=f"{name} (AUROC {aurocs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.set_xlabel(f"false-positive rate ({negative} flagged)")
    ax.set_ylabel(f"true-positive rate ({positive} flagged)")
    ax.set_title(title)
    fig.legend(frameon=False, fontsize=8, loc="outside right center")  # beside the panel: curves below chance too
    return save_png(fig, path)


@styled
def score_histograms(per_image: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str],
                     path: Path) -> Path:
    """One panel per score: histograms of IN-test and OUT-test scores (higher = more OOD)."""
    n = len(per_image)
    cols = min(3, n)
    rows = -(-n // cols)
    fig = new_figure(figsize=(3.6 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, (s_in, s_out)) in zip(axes.ravel(), per_image.items(), strict=False):
        lo, hi = np.percentile(np.concatenate([s_in, s_out]), [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-9, 50)
        for key, values in (("in_test", s_in), ("out_test", s_out)):
            ax.hist(values, bins=bins, histtype="stepfilled", density=True, alpha=0.5, color=COLOURS[key],
                    label=labels[key])
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0, 0].legend(frameon=False, fontsize=7)
    return save_png(fig, path)


def comparison_figures(results: dict, m, per_image: dict, out_dir: Path) -> list[Path]:
    """Every figure of a comparison's report (``m``: verify.api.Measurement; ``per_image``: the detection scores)."""
    return _comparison(results, m, out_dir) + _detection(results, per_image, out_dir)

def _comparison(results: dict, m, out_dir: Path) -> list[Path]:
    dims, labels = results["dims"], results["labels"]
    g = results["graying"]
    paths = [
        loglik_histograms({k: discrete_log_likelihood(e.log_px, dims) for k, e in m.evals.items()}, labels,
                                  f"{results['model']} trained on {labels['in_train']}", out_dir / "loglik_hist.png"),
        moment_histograms({k: (s.mean, s.var) for k, s in m.stats.items()}, labels, out_dir / "moments.png"),
        graying_curve(g["alphas"], g["measured"], {
            **({"exact second order": g["exact_second_order"]} if g["exact_second_order"] else {}),
            **({"closed form": g["closed_form"]} if g["closed_form"] else {})}, out_dir / "graying.png"),
    ]
    ex = results.get("explain")
    if ex:
        c = ex["contrast"]
        paths.append(contrast_curves(c["s"], c["measured"], c["second_order"], labels,
                                             out_dir / "contrast.png"))
    if results["decomposition"]:
        paths.append(decomposition_histograms(
            {k: {"density": e.parts["density"], "volume": e.parts["volume"]} for k, e in m.evals.items()},
            labels, out_dir / "decomposition.png"))
    return paths


def _detection(results: dict, per_image: dict, out_dir: Path) -> list[Path]:
    if not per_image:
        return []
    det = results["detection"]
    title = f"{results['model']} on {results['labels']['in_train']}: OUT-test vs IN-test"
    return [roc_curves(per_image, {k: v["auroc"] for k, v in det["scores"].items()}, title,
                               out_dir / "roc.png"),
            score_histograms(per_image, results["labels"], out_dir / "scores.png")]
