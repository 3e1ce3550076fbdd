"""The shift sweep: a model against IN-test moved along every shift at every severity (empirical.data.shifts): the
gap bpd(IN-test) − bpd(shifted) with its standard error, two predictions of it (the constant-volume closed form and
the input-complexity fit) and every detection score's AUROC per cell, the detectors fitted once on held-out IN
images. Which shifts invert (the shifted images get the higher likelihood) is computed from the cells, never
written by hand."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from empirical.data.imageset import ImageSet
from empirical.data.shifts import SEVERITIES, SHIFTS, shift_images
from empirical.models.contract import describe
from empirical.models.likelihood import LEVELS, nats_gap_to_bpd
from empirical.ood.detectors import RECOMMENDED, Likelihood
from empirical.ood.metrics import auroc
from empirical.ood.scores import compressed_bits
from empirical.ood.suite import ScoreChoice
from theory.predict import linear_path_curvature, variance_gap
from verify.detection import SCREEN_FIT_IMAGES, build, likelihood_of

log = logging.getLogger(__name__)
Key = tuple[str, int]  # (shift, severity)
CODEC = "png"  # L(x) of the input-complexity fit and its R² (Serrà et al.'s main codec)


@dataclass(frozen=True)
class Cell:
    """One shift at one severity: the gap in bits/dim (positive: the shifted images get the higher likelihood), its
    standard error, the shifted images' mean bits/dim, each score's AUROC (shifted images positive) and the gap's
    predictions (``closed_form``: ½ Σ_d H_dd Δσ²_d of a constant-volume flow; ``complexity``: b·ΔL̄ of the line
    bpd ≈ a + b·L(x)/D fitted on held-out IN images)."""

    shift: str
    family: str
    severity: int
    gap_bpd: float
    gap_bpd_stderr: float
    out_bpd: float
    auroc: dict[str, float]
    predicted: dict[str, float]

    @property
    def inverts(self) -> bool:
        """The shifted images get a higher likelihood than IN-test, beyond two standard errors."""
        return self.gap_bpd > 2 * self.gap_bpd_stderr


@dataclass
class Sweep:
    """One model's cells, with the per-image bits/dim behind them (IN-test, and each cell's shifted images)."""

    label: str
    cells: list[Cell]
    in_bpd: np.ndarray
    bpd: dict[Key, np.ndarray]


@dataclass(frozen=True)
class Shifted:
    """IN-test's first images and every shifted copy of them, made once and shared by every model of a sweep, with
    each set's compressed length per dimension (``CODEC``)."""

    base: ImageSet
    sets: dict[Key, ImageSet]
    bits: dict[Key, np.ndarray]  # per image, bits/dim; the base under ("", 0)


def shifted_sets(in_test: ImageSet, *, shifts: tuple[str, ...] = tuple(SHIFTS),
                 severities: tuple[int, ...] = SEVERITIES, limit: int | None = 500, seed: int = 0) -> Shifted:
    """Every shift × severity of the first ``limit`` IN-test images (colour-only shifts skipped on grey images)."""
    base = in_test.head(limit)
    dims = int(np.prod(base.shape))
    sets = {(name, s): shift_images(base, name, s, seed) for name in shifts
            if not (SHIFTS[name].colour_only and base.shape[0] != 3) for s in severities}
    bits = {key: compressed_bits(images.images, CODEC) / dims for key, images in [(("", 0), base), *sets.items()]}
    return Shifted(base, sets, bits)


def _stderr(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / np.sqrt(len(v)))


def _predictors(model: nn.Module, likelihood: Likelihood, heldout: ImageSet | None, shifted: Shifted):
    """The two predictions of a cell's gap available for this model, as functions of the cell's images."""
    info = describe(model)
    found = {}
    if info.constant_volume and info.linear_path:
        h_diag = linear_path_curvature(model)
        var_p = shifted.base.images.astype(np.float64).var(0) / LEVELS**2
        found["closed_form"] = lambda key, imgs: nats_gap_to_bpd(
            variance_gap(h_diag, var_p, imgs.images.astype(np.float64).var(0) / LEVELS**2), info.dims)
    if heldout is not None and len(heldout) > 1:
        held = (compressed_bits(heldout.images, CODEC) / info.dims, likelihood.score(heldout))
        found["complexity"] = lambda key, imgs: complexity_prediction(*held, shifted.bits[("", 0)], shifted.bits[key])
    return found


def complexity_prediction(held_bits: np.ndarray, held_bpd: np.ndarray, in_bits: np.ndarray,
                          out_bits: np.ndarray) -> float:
    """The gap bpd(IN) − bpd(OUT) that input complexity alone predicts (Serrà et al., ICLR 2020): b·(L̄_IN − L̄_OUT),
    b the slope of the least-squares line bpd ≈ a + b·L(x)/D fitted on held-out IN images (all in bits/dim)."""
    x, y = np.asarray(held_bits, float), np.asarray(held_bpd, float)
    slope = float(np.cov(x, y)[0, 1] / x.var(ddof=1)) if np.ptp(x) > 0 else float("nan")
    return slope * float(np.mean(in_bits) - np.mean(out_bits))


def sweep(model: nn.Module, shifted: Shifted, heldout: ImageSet | None, *, label: str = "model",
          choice: ScoreChoice | None = None, seed: int = 0, device: torch.device | None = None) -> Sweep:
    """``model`` on every set of ``shifted``: gap, predictions and AUROC per cell (the detectors and the complexity
    fit use the first SCREEN_FIT_IMAGES of ``heldout``; the detectors that need it are left out without it)."""
    base, heldout = shifted.base, heldout.head(SCREEN_FIT_IMAGES) if heldout is not None else None
    dets = build(model, base, heldout, choice=choice, seed=seed, device=device)
    likelihood = likelihood_of(dets, model, seed=seed, device=device)
    in_bpd = likelihood.score(base)
    in_scores = {d.name: d.score(base) for d in dets}
    predictors = _predictors(model, likelihood, heldout, shifted)
    cells, per_image = [], {}
    for (name, severity), out in shifted.sets.items():
        out_bpd = per_image[(name, severity)] = likelihood.score(out)
        cells.append(Cell(name, SHIFTS[name].family, severity, float(in_bpd.mean() - out_bpd.mean()),
                          float(np.hypot(_stderr(in_bpd), _stderr(out_bpd))), float(out_bpd.mean()),
                          {d.name: auroc(in_scores[d.name], d.score(out)) for d in dets},
                          {k: float(f((name, severity), out)) for k, f in predictors.items()}))
        if severity == max(s for n, s in shifted.sets if n == name):
            log.info("%s (%s): gap %s bits/dim", name, label,
                     " ".join(f"{c.gap_bpd:+.3f}" for c in cells if c.shift == name))
    return Sweep(label, cells, in_bpd, per_image)


def worst_case(cells: list[Cell]) -> dict[str, dict[str, float]]:
    """Each score's mean AUROC per shift family (over its shifts and severities), and its worst family: the rule
    that picks a score from shifts of IN alone, never from a real OOD set, is the best worst case."""
    table: dict[str, dict[str, list[float]]] = {}
    for c in cells:
        for score, value in c.auroc.items():
            table.setdefault(score, {}).setdefault(c.family, []).append(value)
    means = {s: {f: float(np.mean(v)) for f, v in fams.items()} for s, fams in table.items()}
    return {s: {**m, "worst": min(m.values())} for s, m in means.items()}


UNDER_TEST = ("likelihood",)  # the score the paper shows failing on simpler OOD sets: a baseline, not a candidate


def best_worst_case(tables: list[dict[str, dict[str, float]]], exclude: tuple[str, ...] = UNDER_TEST) -> str | None:
    """The recommendation rule: among the scores that every table has (``worst_case`` of each model's sweep: every
    IN set, every family), less ``exclude``, the one whose worst shift-family mean AUROC over all the tables is
    highest. It looks at shifts of IN alone, never at a real OOD set. ``exclude=()`` is the unrestricted rule."""
    common = set.intersection(*(set(t) for t in tables)) - set(exclude) if tables else set()
    worst = {s: min(t[s]["worst"] for t in tables) for s in sorted(common)}
    return max(worst, key=worst.get) if worst else None


def summary(cells: list[Cell]) -> dict:
    """Which shifts invert at some severity, which at every one, the recommended score's worst AUROC per family,
    and the score with the best worst family mean (``worst_case``); all from the cells."""
    by_shift: dict[str, list[Cell]] = {}
    for c in cells:
        by_shift.setdefault(c.shift, []).append(c)
    worst = {}
    for c in cells:
        if RECOMMENDED in c.auroc:
            worst[c.family] = min(worst.get(c.family, 1.0), c.auroc[RECOMMENDED])
    per_family = worst_case(cells)
    return {"best_worst_case": best_worst_case([per_family], exclude=()),
            "auroc_by_family": per_family,
            "inverts_somewhere": [s for s, cs in by_shift.items() if any(c.inverts for c in cs)],
            "inverts_everywhere": [s for s, cs in by_shift.items() if all(c.inverts for c in cs)],
            "recommended": RECOMMENDED, "recommended_worst_auroc_by_family": worst}


def to_dict(cells: list[Cell]) -> list[dict]:
    return [asdict(c) for c in cells]
