"""OOD detection in a comparison: the detectors of empirical.ood, fitted once on held-out IN images, scored on
IN-test and each OUT set, judged by AUROC, AUPRC and FPR at 95% TPR (results.json's ``detection``).

IN-test is the in-distribution sample, OUT-test the OOD one (the positive class). Ĥ and every threshold come
from IN-train images held out of training (the preset's ``holdout``); nothing is fitted on an OOD set.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from empirical.data.imageset import ImageSet
from empirical.models.contract import ModelInfo, describe, model_device
from empirical.models.evaluation import Evaluation
from empirical.ood.analysis import ALPHA, BATCH_SIZES, batch_test, ensemble_gap
from empirical.ood.detectors import RECOMMENDED, WAIC, Detector, Likelihood, Typicality
from empirical.ood.features import ModelPass
from empirical.ood.metrics import metrics
from empirical.ood.suite import ScoreChoice, detectors_for
from verify.runs import BACKGROUND_MU

log = logging.getLogger(__name__)
SCREEN_FIT_IMAGES = 500  # held-out IN images that fit the detectors of a shift sweep or an attack experiment
COMPRESSORS = {"png": "Pillow PNG, compress_level 9", "jpegxl": "JPEG XL lossless (libjxl via imagecodecs), effort 7"}


def build(model: nn.Module, in_test: ImageSet, heldout: ImageSet | None, *, background: nn.Module | None = None,
          ensemble: list[nn.Module] | tuple = (), expensive: bool = False, choice: ScoreChoice | None = None,
          seed: int = 0, device: torch.device | None = None,
          known: dict[str, tuple[ImageSet, Evaluation]] | None = None) -> list[Detector]:
    """The detectors that apply to ``model``, fitted on ``heldout`` (those that need it are left out without it).
    ``known``: evaluations already made with the same seed (the comparison's), so no set is evaluated twice."""
    device = device or model_device(model)
    passes = [ModelPass(m, seed=seed, device=device) for m in (model, background, *ensemble) if m is not None]
    for images, evaluation in (known or {}).values():
        passes[0].remember(images, evaluation)
    info = describe(model)
    if expensive:
        log.info("detection scores: per-example gradients of log p, or the likelihood regret")
    dets = detectors_for(passes[0], info, passes[0](in_test).parts, heldout=heldout is not None,
                         background=passes[1] if background is not None else None,
                         ensemble=passes[1 + (background is not None):], expensive=expensive, choice=choice)
    for d in dets:
        if d.needs_fit:
            d.fit(heldout)
    return dets


def likelihood_of(dets: list[Detector], model: nn.Module, *, seed: int = 0,
                  device: torch.device | None = None) -> Likelihood:
    """The likelihood detector among ``dets`` (built by ``build`` on ``model``), else one on the same ModelPass (a
    new one when no chosen score applies), so that no image set is evaluated twice."""
    found = next((d for d in dets if isinstance(d, Likelihood)), None)
    if found:
        return found
    shared = next((d.models[0] if isinstance(d, WAIC) else d.model for d in dets), None)
    return Likelihood(shared or ModelPass(model, seed=seed, device=device))


def detection(dets: list[Detector], in_test: ImageSet, out_test: ImageSet, heldout: ImageSet | None, *,
              seed: int = 0) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """results.json's ``detection`` for one OUT set: the settings, every score's metrics, the batch test and the
    ensemble's gap; and the per-image scores themselves (IN-test, OUT-test) for the figures and per_image.npz."""
    per_image = {d.name: (d.score(in_test), d.score(out_test)) for d in dets}
    typicality = next((d for d in dets if isinstance(d, Typicality)), None)
    waic = next((d for d in dets if isinstance(d, WAIC)), None)
    settings = {"recommended": RECOMMENDED, "entropy_bpd": typicality.entropy if typicality else None,
                "heldout_images": len(heldout) if heldout is not None and typicality else 0,
                "compressors": COMPRESSORS, "batch_sizes": list(BATCH_SIZES), "alpha": ALPHA,
                "background_mu": BACKGROUND_MU if "likelihood_ratio" in per_image else None,
                "ensemble_k": len(waic.models) if waic else None}
    ev = typicality.model if typicality else None  # the model's evaluations, shared with every detector on it
    batches = batch_test(ev(in_test).bpd, ev(out_test).bpd, ev(heldout).bpd, typicality.entropy, seed) \
        if typicality else []
    ensemble = ensemble_gap(waic.log_px(in_test.images), waic.log_px(out_test.images), waic.models[0].dims) \
        if waic else None
    return {"settings": settings, "scores": {k: metrics(*v) for k, v in per_image.items()},
            "batch_typicality": batches, "ensemble": ensemble}, per_image


def detect_for(model: nn.Module, info: ModelInfo, m, sets: dict[str, ImageSet], heldout: ImageSet | None,
               background: nn.Module | None, ensemble: list[nn.Module], seed: int, device: torch.device,
               expensive: bool = False, choice: ScoreChoice | None = None) -> tuple[dict, dict]:
    """The detection of a comparison (``m`` is verify.api's Measurement, whose evaluations are reused)."""
    known = {k: (sets[k], m.evals[k]) for k in ("in_test", "out_test")} | (
        {"heldout": (heldout, m.heldout)} if heldout is not None and m.heldout is not None else {})
    dets = build(model, sets["in_test"], heldout, background=background, ensemble=ensemble, expensive=expensive,
                 choice=choice, seed=seed, device=device, known=known)
    return detection(dets, sets["in_test"], sets["out_test"], heldout, seed=seed)


def screen(model: nn.Module, in_test: ImageSet, out_sets: list[ImageSet], *, heldout: ImageSet | None = None,
           background: nn.Module | None = None, ensemble: list[nn.Module] | tuple = (), expensive: bool = False,
           choice: ScoreChoice | None = None, seed: int = 0, device: torch.device | None = None) -> dict[str, dict]:
    """One model against several OOD sets: each OUT set's ``detection`` (as in verify.compare), keyed by its source.
    The detectors are fitted once; IN-test and the held-out images are evaluated once."""
    dets = build(model, in_test, heldout, background=background, ensemble=ensemble, expensive=expensive,
                 choice=choice, seed=seed, device=device)
    return {out.source: detection(dets, in_test, out, heldout, seed=seed)[0] for out in out_sets}
