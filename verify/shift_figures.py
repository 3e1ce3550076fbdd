"""The shift sweep's figures: shift × severity heat maps, the gap against severity beside its two predictions, and
each score's AUROC against severity per shift family (matplotlib, in the paper style of verify.figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize, SymLogNorm

from verify.figures import new_figure, save_png, styled
from verify.sweep import Cell, Sweep

FAMILY_ORDER = ("noise", "blur", "weather", "digital", "hypothesis")
SYMLOG_SPAN = 50.0  # bits/dim: a panel whose error bars span more is drawn on a symmetric log scale
HEAVY_TAIL = 100.0  # a heat map whose largest |value| is this many times its median is coloured symmetric-log
PREDICTION_STYLE = {"complexity": ("--", "input-complexity fit"), "closed_form": (":", "closed form")}


@styled
def heatmap(values: np.ndarray, rows: list[str], columns: list, title: str, label: str, path: Path,
            *, centre: float = 0.0, fmt: str = "{:+.2f}", xlabel: str = "severity",
            limits: tuple[float, float] | None = None) -> Path:
    """One row per shift, one column per severity (or model pair), each cell's value written in it; a diverging
    map centred on ``centre`` (0 for a gap: red, the shifted images get the higher likelihood; 0.5 for an AUROC)
    spanning the largest |value − centre|, or ``limits``; on a symmetric log scale where that is more than
    HEAVY_TAIL times the median (a flow's bits/dim for images far outside its data can reach 10¹⁸)."""
    pairs = xlabel != "severity"  # long column labels, drawn slanted
    width, below = (1.1, 1.8) if pairs else (0.75, 0.0)
    fig = new_figure(figsize=(1.6 + width * len(columns), 0.9 + 0.28 * len(rows) + below))
    ax = fig.subplots()
    norm = colour_norm(values[np.isfinite(values)], centre, limits)
    image = ax.imshow(values, cmap="RdBu_r", norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, cell_text(v, fmt), ha="center", va="center", fontsize=7, color=text_colour(float(norm(v))))
    ax.set_xticks(range(len(columns)), [str(c).replace(" ~ ", " ~\n") for c in columns], rotation=30 if pairs else 0,
                  ha="right" if pairs else "center", fontsize=7 if pairs else None)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    if isinstance(norm, SymLogNorm):
        bar.set_ticks(symlog_ticks(norm.linthresh, norm.vmax))
    return save_png(fig, path)


def symlog_ticks(linthresh: float, span: float, per_side: int = 4) -> list[float]:
    """0 and ± powers of ten from the first above ``linthresh`` to ``span``, at most ``per_side`` on each side."""
    first, last = int(np.floor(np.log10(linthresh))) + 1, int(np.floor(np.log10(span)))
    powers = list(range(first, last + 1, max(1, -(-(last - first + 1) // per_side))))
    return sorted([0.0, *(10.0**k for k in powers), *(-(10.0**k) for k in powers)])


def colour_norm(finite: np.ndarray, centre: float, limits: tuple[float, float] | None) -> Normalize:
    """Linear from centre − span to centre + span (span: the largest |value − centre|), or over ``limits``; for
    values about 0 whose span exceeds HEAVY_TAIL × their median |value|, symmetric-log, linear within that median."""
    if limits:
        return Normalize(*limits)
    deviation = np.abs(finite - centre)
    span = float(deviation.max()) if finite.size else 0.0
    typical = float(np.median(deviation)) if finite.size else 0.0
    if centre == 0.0 and typical > 0 and span > HEAVY_TAIL * typical:
        return SymLogNorm(linthresh=typical, vmin=-span, vmax=span)
    span = span or 1.0
    return Normalize(centre - span, centre + span)


def text_colour(position: float) -> str:
    """White on the diverging map's dark ends (a cell's colour-map position in [0, 1] beyond 0.2 or 0.8), else
    black."""
    return "white" if abs(position - 0.5) > 0.3 else "black"


def cell_text(value: float, fmt: str) -> str:
    """``fmt`` for values below 1,000 in size, two significant digits and a power of ten beyond, so that every
    cell's text fits its cell."""
    if abs(value) < 1e3:
        return fmt.format(value)
    mantissa, exponent = f"{value:+.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def grid(cells: list[Cell], value, rows: list[str], severities: list[int]) -> np.ndarray:
    """A shift × severity array of ``value(cell)`` (NaN where no cell)."""
    out = np.full((len(rows), len(severities)), np.nan)
    for c in cells:
        if c.shift in rows and c.severity in severities:
            out[rows.index(c.shift), severities.index(c.severity)] = value(c)
    return out


@styled
def gap_curves(sweeps: list[Sweep], path: Path) -> Path:
    """One panel per shift: each model's gap (± 2 standard errors) against severity, and the first model's two
    predictions (dashed: the input-complexity fit; dotted: the closed form) where they fall in the panel's range; a
    panel spanning more than SYMLOG_SPAN bits/dim on a symmetric log scale."""
    shifts = list(dict.fromkeys(c.shift for c in sweeps[0].cells))
    cols = min(6, len(shifts))
    rows = -(-len(shifts) // cols)
    fig = new_figure(figsize=(2.3 * cols, 1.9 * rows + 0.9))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, shift in zip(axes.ravel(), shifts, strict=False):
        lo, hi = 0.0, 0.0
        for k, s in enumerate(sweeps):
            cs = [c for c in s.cells if c.shift == shift]
            x, y = [c.severity for c in cs], np.array([c.gap_bpd for c in cs])
            err = 2 * np.array([c.gap_bpd_stderr for c in cs])
            ax.errorbar(x, y, yerr=err, marker="o", ms=3, lw=1.2, capsize=2, color=f"C{k}", label=s.label)
            lo, hi = min(lo, float((y - err).min())), max(hi, float((y + err).max()))
        pad = 0.15 * (hi - lo or 1.0)
        for key, (ls, name) in PREDICTION_STYLE.items():
            cs = [c for c in sweeps[0].cells if c.shift == shift and key in c.predicted]
            if cs:
                ax.plot([c.severity for c in cs], [c.predicted[key] for c in cs], ls=ls, color="C0", lw=1.0,
                        label=f"{sweeps[0].label}: {name}")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_ylim(lo - pad, hi + pad)
        if hi - lo > SYMLOG_SPAN:  # a few images with astronomical bits/dim: compress the scale beyond ±1
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(shift, fontsize=8)
        ax.set_xticks(sorted({c.severity for c in sweeps[0].cells}))
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(shifts):]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False, fontsize=8)
    fig.suptitle("gap bpd(IN-test) − bpd(shifted) against severity (above 0: the shifted images are more likely)",
                 fontsize=10)
    return save_png(fig, path)


@styled
def auroc_curves(cells: list[Cell], recommended: str, path: Path) -> Path:
    """One panel per shift family: each score's AUROC (mean over the family's shifts) against severity; the
    recommended score drawn thick."""
    families = [f for f in FAMILY_ORDER if any(c.family == f for c in cells)]
    scores = list(dict.fromkeys(s for c in cells for s in c.auroc))
    severities = sorted({c.severity for c in cells})
    fig = new_figure(figsize=(3.0 * len(families), 3.2))
    axes = fig.subplots(1, len(families), squeeze=False, sharey=True)[0]
    for ax, family in zip(axes, families, strict=True):
        for k, score in enumerate(scores):
            y = [np.mean([c.auroc[score] for c in cells if c.family == family and c.severity == s]) for s in severities]
            ax.plot(severities, y, marker="o", ms=3, color=f"C{k % 10}", lw=2.6 if score == recommended else 1.0,
                    label=score + (" (recommended)" if score == recommended else ""))
        ax.axhline(0.5, color="0.6", lw=0.6, ls="--")
        ax.set_title(family)
        ax.set_xlabel("severity")
        ax.set_xticks(severities)
    axes[0].set_ylabel("AUROC (shifted vs IN-test)")
    axes[0].set_ylim(0, 1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False, fontsize=8)
    return save_png(fig, path)
