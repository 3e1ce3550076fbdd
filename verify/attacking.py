"""Can a generative model detect adversarial examples? The experiment behind ``python -m verify.adversarial``:
attack a classifier on IN-test (empirical.ood.attacks), then ask each generative model and every detection score
to tell the adversarial images from clean ones; and the other direction, OOD images nudged to look typical.

Every detector is fitted, and every threshold set, on held-out clean IN images only (the first SCREEN_FIT_IMAGES of
them): the threshold of a score is
the 95th percentile of its values there (5% false alarms), and PixelDefend flags p < 0.05 of the bits/dim among
them. The ε, the PGD steps and the λ grid are fixed in empirical.ood.attacks, before anything is measured."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from empirical.data.imageset import ImageSet
from empirical.io.errors import DgmOodError
from empirical.models.classifier import predict
from empirical.models.contract import describe, model_device
from empirical.ood import attacks
from empirical.ood.detectors import Detector
from empirical.ood.metrics import auroc
from empirical.ood.scores import pixeldefend_pvalue
from empirical.ood.suite import ScoreChoice
from verify.detection import SCREEN_FIT_IMAGES, build, likelihood_of

log = logging.getLogger(__name__)
FALSE_ALARMS = 0.05  # the detection threshold's rate of flagged clean held-out images
TOWARD_TYPICAL_EPS = (1, 2, 4, 8)  # grey levels, for the other direction


@dataclass(frozen=True)
class Attacked:
    """One attack's adversarial images (uint8, in the order of the clean ones), how often it changed a correct
    prediction, the perturbation's size, and which images it fooled (a correct prediction changed)."""

    name: str
    images: ImageSet
    success_rate: float
    size: dict[str, float]
    adaptive: bool = False
    fooled: np.ndarray | None = None


def attack_all(classifier: nn.Module, clean: ImageSet, labels: np.ndarray, *, density: nn.Module | None = None,
               seed: int = 0, margins: Sequence[str] = ("margin",)) -> tuple[float, list[Attacked]]:
    """The clean accuracy and every attack of the fixed grid: FGSM and PGD at each ε of ``attacks.EPSILONS``, and
    with a smooth ``density`` the adaptive PGD at the largest ε for each λ > 0 of ``attacks.LAMBDAS``, the attacker
    that picks the best λ per image (``_best_lambda``), and the margin attacker (``attacks.margin_adaptive``) with
    its best λ per image (its single-λ runs are not reported); ``margins`` names its variants, keys of
    ``attacks.MARGIN_GAINS``: "margin" (log p), and for a flow with a top latent "margin+top" (log p and the top
    latent's term) and "margin top-only" (that term alone). The classifier must be in eval mode (a batch-normalised
    one in training mode would attack its batch statistics)."""
    if classifier.training:
        raise DgmOodError("the classifier is in training mode; call .eval() on it before attacking it")
    if unknown := [m for m in margins if m not in attacks.MARGIN_GAINS]:
        raise DgmOodError(f"unknown margin attacker {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(map(repr, attacks.MARGIN_GAINS))}")
    x, y = torch.from_numpy(clean.images), _labels(labels, len(clean))
    _check_logits(classifier, x, y)
    correct = predict(classifier, x) == y
    runs = [(f"fgsm ε={e}/255", lambda e=e: attacks.fgsm(classifier, x, y, e), False) for e in attacks.EPSILONS]
    runs += [(f"pgd ε={e}/255", lambda e=e: attacks.pgd(classifier, x, y, e, generator=_gen(seed)), False)
             for e in attacks.EPSILONS]
    eps = max(attacks.EPSILONS)
    if density is not None:
        runs += [(f"adaptive ε={eps}/255 λ={lam:g}", lambda lam=lam: attacks.pgd(
            classifier, x, y, eps, generator=_gen(seed), density=density, lam=lam), True)
            for lam in attacks.LAMBDAS if lam > 0]
    done = []
    for name, run, adaptive in runs:
        done.append(_attacked(classifier, clean, x, y, correct, name, run(), adaptive))
    if density is not None:
        done.append(_best_lambda(classifier, density, clean, x, y, correct,
                                 [a for a in done if a.name.startswith(("adaptive", f"pgd ε={eps}/"))],
                                 f"adaptive ε={eps}/255 best λ"))
        with torch.no_grad():
            top = "latent_top" in attacks.smooth_parts(density, x[:1].to(model_device(density)).float())
        for label in margins:
            parts = attacks.MARGIN_GAINS[label]
            if "latent_top" in parts and not top:
                log.info("%s: skipped, %s has no top latent", label, describe(density).name)
                continue
            each_lambda = [_attacked(classifier, clean, x, y, correct, f"{label} ε={eps}/255 λ={lam:g}",
                                     attacks.margin_adaptive(classifier, x, y, eps, density, lam, parts=parts), True)
                           for lam in attacks.LAMBDAS if lam > 0]
            done.append(_best_lambda(classifier, density, clean, x, y, correct, each_lambda,
                                     f"{label} ε={eps}/255 best λ", parts=parts))
    return float(correct.float().mean()), done


def _labels(labels: np.ndarray, n: int) -> torch.Tensor:
    """The class labels as a long tensor: one non-negative integer per image."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or (n and labels.min() < 0):
        raise DgmOodError(f"labels must be {n} non-negative integers, one per image; got {labels.dtype} of shape "
                          f"{labels.shape}")
    return torch.as_tensor(labels, dtype=torch.long)


@torch.no_grad()
def _check_logits(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The classifier's contract: one row of logits per image, one logit per class, every label among them."""
    if not len(x):
        return
    logits = classifier(x[:2].to(model_device(classifier)).float())
    if not isinstance(logits, torch.Tensor) or logits.shape[0] != len(x[:2]) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DgmOodError(f"the classifier must return logits of shape (images, classes); got {got}")
    if int(y.max()) >= logits.shape[1]:
        raise DgmOodError(f"the labels run up to {int(y.max())} but the classifier gives {logits.shape[1]} logits "
                          f"per image")


def _attacked(classifier: nn.Module, clean: ImageSet, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor,
              name: str, adv: torch.Tensor, adaptive: bool) -> Attacked:
    """An attack's images with its success: the share of correct predictions it changed."""
    fooled = (predict(classifier, adv) != y) & correct
    out = Attacked(name, clean.derived(adv.numpy(), f"{clean.name} ({name})", f"adversarial: {name}"),
                   float(fooled.sum() / max(int(correct.sum()), 1)), attacks.perturbation_size(x, adv), adaptive,
                   fooled.numpy())
    log.info("%s: success %.3f, ℓ∞ %.4f", name, out.success_rate, out.size["linf_max"])
    return out


@torch.no_grad()
def _best_lambda(classifier: nn.Module, density: nn.Module, clean: ImageSet, x: torch.Tensor, y: torch.Tensor,
                 correct: torch.Tensor, tried: list[Attacked], name: str,
                 parts: tuple[str, ...] = attacks.LOG_P) -> Attacked:
    """The adaptive attacker that picks λ per image (white-box, so it may): of the ``tried`` runs (e.g. plain PGD and
    each λ at the largest ε) that fooled the classifier, the image of highest ``attacks.density_gain`` of ``parts``
    (default log p); an image none fooled keeps the last run's."""
    gain = torch.stack([torch.cat([attacks.density_gain(density, torch.from_numpy(
        a.images.images[i:i + 100]).to(model_device(density)).float(), parts).cpu() for i in range(0, len(x), 100)])
        for a in tried])
    gain[~torch.from_numpy(np.stack([a.fooled for a in tried]))] = -torch.inf
    pick = torch.where(torch.isinf(gain.max(0).values), len(tried) - 1, gain.argmax(0))
    adv = torch.from_numpy(np.stack([a.images.images for a in tried]))[pick, torch.arange(len(x))]
    return _attacked(classifier, clean, x, y, correct, name, adv, True)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def thresholds(dets: list[Detector], heldout: ImageSet) -> dict[str, float]:
    """Each score's threshold: the (1 − FALSE_ALARMS) quantile of its values on held-out clean images."""
    return {d.name: float(np.quantile(d.score(heldout), 1 - FALSE_ALARMS)) for d in dets}


def detect(model: nn.Module, heldout: ImageSet, clean: ImageSet, attacked: list[Attacked], *,
           choice: ScoreChoice | None = None, seed: int = 0, device: torch.device | None = None) -> dict:
    """For each attack: the gap bpd(clean) − bpd(adversarial) and, per score, the AUROC (adversarial positive) and
    the detection rate at the threshold of ``thresholds``; PixelDefend's rate at p < FALSE_ALARMS; and the same for
    only the images that fooled the classifier (``fooled``: how many; None where none did)."""
    heldout = heldout.head(SCREEN_FIT_IMAGES)
    dets = build(model, clean, heldout, choice=choice, seed=seed, device=device)
    likelihood = likelihood_of(dets, model, seed=seed, device=device)
    cut = thresholds(dets, heldout)
    held_bpd, clean_bpd = likelihood.score(heldout), likelihood.score(clean)
    clean_scores = {d.name: d.score(clean) for d in dets}
    rows, per_image = {}, {"clean": clean_scores}
    for a in attacked:
        bpd = likelihood.score(a.images)
        scores = per_image[a.name] = {d.name: d.score(a.images) for d in dets}
        rows[a.name] = {
            "gap_bpd": float(clean_bpd.mean() - bpd.mean()),
            "auroc": {k: auroc(clean_scores[k], v) for k, v in scores.items()},
            "detection_rate": {k: float((v > cut[k]).mean()) for k, v in scores.items()}
            | {"pixeldefend": float((pixeldefend_pvalue(held_bpd, bpd) < FALSE_ALARMS).mean())},
            "clean_false_alarms": {k: float((v > cut[k]).mean()) for k, v in clean_scores.items()}}
        rows[a.name] |= _on_fooled(a.fooled, clean_scores, scores, bpd, held_bpd, cut)
    return {"thresholds": cut, "attacks": rows, "per_image": per_image}


def _on_fooled(fooled: np.ndarray | None, clean_scores: dict, scores: dict, bpd: np.ndarray, held_bpd: np.ndarray,
               cut: dict[str, float]) -> dict:
    """AUROC and detection rates of the successful adversarial examples only (the ones that fooled the classifier)."""
    n = 0 if fooled is None else int(fooled.sum())
    if n == 0:
        return {"fooled": n, "fooled_auroc": None, "fooled_detection_rate": None}
    return {"fooled": n, "fooled_auroc": {k: auroc(clean_scores[k], v[fooled]) for k, v in scores.items()},
            "fooled_detection_rate": {k: float((v[fooled] > cut[k]).mean()) for k, v in scores.items()}
            | {"pixeldefend": float((pixeldefend_pvalue(held_bpd, bpd[fooled]) < FALSE_ALARMS).mean())}}


def toward_typical(density: nn.Module, heldout: ImageSet, in_test: ImageSet, ood: ImageSet, *, seed: int = 0,
                   choice: ScoreChoice | None = None, device: torch.device | None = None) -> dict:
    """Pope et al.'s direction: OOD images moved by PGD toward typicality's Ĥ at each ε of TOWARD_TYPICAL_EPS;
    per ε, every score's AUROC (OOD positive) against IN-test, and the share of OOD images more typical than the
    median IN-test image."""
    dets = build(density, in_test, heldout.head(SCREEN_FIT_IMAGES), choice=choice, seed=seed, device=device)
    typ = next(d for d in dets if d.name == "typicality")
    in_scores = {d.name: d.score(in_test) for d in dets}
    out, moved = {}, ood
    for eps in (0, *TOWARD_TYPICAL_EPS):  # each ε starts from the smaller ε's images: a larger ball never does worse
        moved = ood if eps == 0 else ood.derived(attacks.toward_typical(
            density, torch.from_numpy(ood.images), typ.entropy, eps, start=torch.from_numpy(moved.images)).numpy(),
            f"{ood.name} (ε={eps})", f"moved toward typical: PGD ε={eps}/255")
        scores = {d.name: d.score(moved) for d in dets}
        out[f"{eps}/255"] = {"auroc": {k: auroc(in_scores[k], v) for k, v in scores.items()},
                             "more_typical": float((scores["typicality"] < np.median(in_scores["typicality"])).mean())}
        log.info("toward typical ε=%d: typicality AUROC %.3f", eps, out[f"{eps}/255"]["auroc"]["typicality"])
    return out
