"""The shift sweep: one model against IN-test moved along every shift at every severity (empirical.data.shifts):
the gap bpd(IN-test) − bpd(shifted) with its standard error and every detection score's AUROC per cell, the
detectors fitted once on held-out IN images. Which shifts invert (the shifted images get the higher likelihood) is
computed from the cells, never written by hand."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from empirical.data.imageset import ImageSet
from empirical.data.shifts import SEVERITIES, SHIFTS, shift_images
from empirical.ood.detectors import RECOMMENDED, WAIC, Likelihood
from empirical.ood.metrics import auroc
from empirical.ood.suite import ScoreChoice
from verify.detection import build

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One shift at one severity: the gap in bits/dim (positive: the shifted images get the higher likelihood), its
    standard error, the shifted images' mean bits/dim and each score's AUROC (shifted images positive)."""

    shift: str
    family: str
    severity: int
    gap_bpd: float
    gap_bpd_stderr: float
    out_bpd: float
    auroc: dict[str, float]

    @property
    def inverts(self) -> bool:
        """The shifted images get a higher likelihood than IN-test, beyond two standard errors."""
        return self.gap_bpd > 2 * self.gap_bpd_stderr


def _stderr(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / np.sqrt(len(v)))


def sweep(model: nn.Module, in_test: ImageSet, heldout: ImageSet | None, *, shifts: tuple[str, ...] = tuple(SHIFTS),
          severities: tuple[int, ...] = SEVERITIES, limit: int | None = 500, choice: ScoreChoice | None = None,
          seed: int = 0, device: torch.device | None = None) -> list[Cell]:
    """Every shift × severity of the first ``limit`` IN-test images (colour-only shifts skipped on grey images)."""
    base = in_test.head(limit)
    dets = build(model, base, heldout, choice=choice, seed=seed, device=device)
    shared = next(d.models[0] if isinstance(d, WAIC) else d.model for d in dets)  # the model's one ModelPass
    likelihood = next((d for d in dets if isinstance(d, Likelihood)), None) or Likelihood(shared)
    in_bpd = likelihood.score(base)
    in_scores = {d.name: d.score(base) for d in dets}
    cells = []
    for name in shifts:
        shift = SHIFTS[name]
        if shift.colour_only and base.shape[0] != 3:
            continue
        for severity in severities:
            out = shift_images(base, name, severity, seed)
            out_bpd = likelihood.score(out)
            cells.append(Cell(name, shift.family, severity, float(in_bpd.mean() - out_bpd.mean()),
                              float(np.hypot(_stderr(in_bpd), _stderr(out_bpd))), float(out_bpd.mean()),
                              {d.name: auroc(in_scores[d.name], d.score(out)) for d in dets}))
        log.info("%s: gap %s bits/dim at severities %s", name,
                 " ".join(f"{c.gap_bpd:+.3f}" for c in cells[-len(severities):]), list(severities))
    return cells


def worst_case(cells: list[Cell]) -> dict[str, dict[str, float]]:
    """Each score's mean AUROC per shift family (over its shifts and severities), and its worst family: the rule
    that picks a score from shifts of IN alone, never from a real OOD set, is the best worst case."""
    table: dict[str, dict[str, list[float]]] = {}
    for c in cells:
        for score, value in c.auroc.items():
            table.setdefault(score, {}).setdefault(c.family, []).append(value)
    means = {s: {f: float(np.mean(v)) for f, v in fams.items()} for s, fams in table.items()}
    return {s: {**m, "worst": min(m.values())} for s, m in means.items()}


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
    return {"best_worst_case": max(per_family, key=lambda s: per_family[s]["worst"]) if per_family else None,
            "auroc_by_family": per_family,
            "inverts_somewhere": [s for s, cs in by_shift.items() if any(c.inverts for c in cs)],
            "inverts_everywhere": [s for s, cs in by_shift.items() if all(c.inverts for c in cs)],
            "recommended": RECOMMENDED, "recommended_worst_auroc_by_family": worst}


def to_dict(cells: list[Cell]) -> list[dict]:
    return [asdict(c) for c in cells]
