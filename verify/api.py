"""The pipeline as a Python API: objects in, a ``Result`` out.

    from empirical.data.sources import open_in
    from verify.api import compare, load_model

    trained = load_model("runs/models/fashionmnist-cvglow-cpu-…/last.pt")  # or any nn.Module meeting
    in_train, in_test = open_in("fashionmnist")                             # empirical.models.contract
    result = compare(trained, in_train, in_test, my_uint8_images)
    print(result.gap.bpd, result.ledger.summary, result.detection.table(), sep="\\n")
    result.write("my-report")  # report.md, results.json, per_image.npz and the figures

``compare`` measures per-image log-likelihoods (with the model's parts), predicts the gap from the theory where
the model allows it, builds the assumption ledger, runs the graying experiment and scores OOD detection; it says
which parts ran and why the others did not. Nothing here trains a model or parses a command line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from empirical.data.imageset import ImageSet, as_image_set
from empirical.io.distributed import resolve_device
from empirical.io.errors import DataError, DgmOodError
from empirical.io.provenance import device_description, portable_path
from empirical.models.config import MAX_SEED
from empirical.models.contract import ModelInfo, describe, model_device
from empirical.models.evaluation import Evaluation, contract_checks, evaluate
from empirical.ood.suite import choose_scores
from empirical.training.checkpoint import Checkpoint, check_trained_on
from empirical.training.loading import model_from_checkpoint
from empirical.training.presets import EvalBudget, default_budget, get_preset
from verify import predictions
from verify.detection import detect_for
from verify.explain import explain_for
from verify.report import verdict
from verify.results import Provenance, Result
from verify.runs import extra_origins, origin_text
from verify.runs import provenance as run_provenance

log = logging.getLogger(__name__)

SETS = ("in_train", "in_test", "out_test")
MIN_IMAGES = 2  # per set: a standard error needs two
CONTRACT_IMAGES = 8  # an outside model is evaluated twice on this many IN-test images (contract_checks)


def load_model(path: str | Path) -> Checkpoint:
    """A trained model of ours from its checkpoint (or the manifest of a split one): model, payload and path."""
    return model_from_checkpoint(Path(path))


@dataclass
class Measurement:
    """Per-image evaluations of the three sets (and the held-out IN-train images), the graying series and the sets'
    moments."""

    evals: dict[str, Evaluation]
    summary: dict
    gap_nats: float
    gap_bpd: float
    gap_bpd_stderr: float
    gray_measured: list[float]
    gray_images: int  # IN-test images per α of the graying experiment
    stats: dict
    heldout: Evaluation | None


# ------------------------------------------------------------------------------------------------ entry
def compare(model: nn.Module | Checkpoint, in_train: object, in_test: object, out_test: object, *,
            heldout: object | None = None, background: nn.Module | Checkpoint | None = None,
            ensemble: list[nn.Module | Checkpoint] | tuple = (), out_model: nn.Module | None = None,
            detection: str | None = "cheap", explain: bool = True, budget: EvalBudget | None = None,
            seed: int = 0, device: str | torch.device | None = None, provenance: Provenance | None = None,
            name: str | None = None) -> Result:
    """Does a model trained on IN give OUT a higher likelihood than IN's own test set, by how much, does the theory
    predict it, and which score detects OUT?

    ``model``: a ``Checkpoint`` (``load_model``) or any ``nn.Module`` meeting empirical.models.contract. The image sets
    are ImageSets or anything ``as_image_set`` takes, all in the model's shape (map OUT with
    ``empirical.data.imageset.map_to`` first). ``heldout``: IN images the model never trained on (typicality's Ĥ and
    the thresholds; a Checkpoint supplies its own), never one of the compared sets. ``background`` and ``ensemble``
    (models or Checkpoints trained on IN; a Checkpoint's origin goes into the provenance) add the likelihood ratio
    and WAIC. ``detection``: a score set ("cheap": every score that needs no more passes of the model; "model": also
    the gradient score or a VAE's likelihood regret), score names separated by commas, or None.
    ``out_model`` (a model of the same kind trained on OUT-train) adds the entropy decomposition.
    ``explain=False`` skips the interventions (verify.explain). ``budget`` caps the images per set (default: the
    preset's, or ``default_budget``). ``provenance``: the command and start time to record (default: this call,
    now); ``name`` is what reports call the model (default: its family, or its class name).
    """
    provenance = provenance or Provenance()
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise DgmOodError(f"seed must be a whole number from 0 to {MAX_SEED:,}, got {seed!r}")
    choice = choose_scores(detection or "none")
    module, info, checkpoint, sets, heldout, budget, dev = _prepare(model, (in_train, in_test, out_test), heldout,
                                                                    budget, device, name)
    check_heldout(heldout, sets)
    evaluated = {k: s.head(getattr(budget, k)) for k, s in sets.items()}
    heldout = None if heldout is None else heldout.head(budget.heldout)
    m = measure(module, info, evaluated, heldout, budget, seed, dev)
    th, ex = _theory(module, info, sets, evaluated, m, budget, seed, dev, explain, out_model)
    det, per_image_scores = (None, {}) if choice.level == "none" else detect_for(
        module, info, m, evaluated, heldout, _module(background), [_module(e) for e in ensemble], seed, dev,
        expensive=choice.level in ("model", "all"), choice=choice)
    results = results_of(module, info, checkpoint, evaluated, sets, heldout, m, th, det, dev)
    results["explain"] = ex
    results["contract_checks"] = None if type(module).__module__.startswith("empirical.") else contract_checks(
        module, evaluated["in_test"].images[:CONTRACT_IMAGES], seed=seed, device=dev)
    results["model_source"] = provenance.model_source or (origin_text(checkpoint) if checkpoint else info.name)
    if det is not None:
        results["extra_model_sources"] = extra_origins(background, ensemble)
    results["provenance"] = run_provenance(provenance, dev)
    return Result(results, m, per_image_scores)


def _prepare(model: nn.Module | Checkpoint, images: tuple, heldout: object | None, budget: EvalBudget | None,
             device: str | torch.device | None, name: str | None) -> tuple:
    """The module, what it declares, its Checkpoint (or None), the three ImageSets checked against its shape and
    its training data, the held-out images, the budget and the device."""
    sets = {k: as_image_set(v, k) for k, v in zip(SETS, images, strict=True)}
    checkpoint = model if isinstance(model, Checkpoint) else None
    module = checkpoint.model if checkpoint else model
    info = describe(module, name or (checkpoint.name if checkpoint else None))
    for s in sets.values():
        if len(s) < MIN_IMAGES:
            raise DataError(f"{s.name} holds {len(s)} image: a mean's standard error, and so a verdict, needs at least "
                            f"{MIN_IMAGES}")
        if s.shape != info.shape:
            raise DataError(f"{s.name} images are {'×'.join(map(str, s.shape))} but the model takes "
                            f"{'×'.join(map(str, info.shape))}; map them with empirical.data.imageset.map_to "
                            f"(--match or --resize on the command line)")
    if checkpoint:
        check_trained_on(checkpoint.payload, checkpoint.path, sets["in_train"], sets["in_test"])
        heldout = heldout if heldout is not None else checkpoint.heldout(sets["in_train"])
        budget = budget or checkpoint_budget(checkpoint)
    heldout = None if heldout is None else as_image_set(heldout, "heldout")
    dev = resolve_device(str(device)) if device is not None else model_device(module)
    return module.to(dev).eval(), info, checkpoint, sets, heldout, budget or default_budget(), dev


def check_heldout(heldout: ImageSet | None, sets: dict[str, ImageSet], name: str = "heldout") -> None:
    """The held-out images fit thresholds and densities: they must not be a set those are judged on (IN-test or
    OUT-test, by content). The command line and the API share this check; ``name`` is what the caller called it."""
    for k in ("in_test", "out_test"):
        if heldout is not None and k in sets and heldout.digest == sets[k].digest:
            raise DataError(f"{name}: the held-out images are the {sets[k].name} images themselves: typicality's Ĥ, "
                            f"DoSE and the thresholds would be fitted on the images they are judged on; hold out "
                            f"other IN images")


def _theory(module: nn.Module, info: ModelInfo, sets: dict[str, ImageSet], evaluated: dict[str, ImageSet],
            m: Measurement, budget: EvalBudget, seed: int, dev: torch.device, explain: bool,
            out_model: nn.Module | None) -> tuple[dict, dict | None]:
    """The theory's predictions and ledger, and the explanation of the gap (with the input-complexity prediction
    beside the second-order ones, as it needs no model of OUT)."""
    x0 = sets["in_train"].images.mean(0, dtype=np.float64)
    th = predictions.theory_for(module, info, x0, evaluated, m, budget, seed)
    ex = explain_for(module, evaluated, m, th["quadratic"], info.dims, seed=seed, device=dev,
                     out_model=out_model) if explain else None
    if ex:
        c = ex["complexity"]
        th["prediction"]["input_complexity"] = None if c["gap_nats"] is None else {
            "gap_nats": c["gap_nats"], "gap_bpd": c["gap_bpd"],
            "method": f"log p ≈ a + b·L(x) fitted on {c['n_fit']} IN-train images (L: {c['compressor']} bits)"}
    return th, ex


def _module(model: nn.Module | Checkpoint | None) -> nn.Module | None:
    return model.model if isinstance(model, Checkpoint) else model


def checkpoint_budget(checkpoint: Checkpoint) -> EvalBudget:
    """The evaluation budget of the preset a checkpoint was trained with (the family's, where it has its own)."""
    payload = checkpoint.payload
    try:
        return get_preset(payload["preset"], payload["model"], tuple(checkpoint.model.config.shape)).budget
    except (DgmOodError, KeyError):
        return default_budget()


# ----------------------------------------------------------------------------------------------- measure
def measure(model: nn.Module, info: ModelInfo, sets: dict[str, ImageSet], heldout: ImageSet | None,
            budget: EvalBudget, seed: int, device: torch.device) -> Measurement:
    """Per-image log-likelihoods of the three sets and of the graying series, and the sets' moments."""
    from theory.statistics import compute_stats

    log.info("evaluating %s", ", ".join(f"{s.name} {len(s)} images" for s in sets.values()))
    evals = {k: evaluate(model, s.images, seed=seed, device=device, label=f"{s.name} images")
             for k, s in sets.items()}
    summary = {k: e.summary() for k, e in evals.items()}
    gray = sets["in_test"].images[: budget.gray_images]
    gray_ll = [float(evaluate(model, np.rint(a * gray.astype(np.float64) + (1 - a) * 128).astype(np.uint8),
                              seed=seed, device=device, label=f"grayed (α = {a}) images").log_px.mean())
               for a in predictions.ALPHAS]
    stats = {k: compute_stats(sets[k].images, full_cov=info.smooth, ddof=0) for k in ("in_test", "out_test")}
    return Measurement(
        evals, summary,
        gap_nats=summary["out_test"]["log_px_nats"]["mean"] - summary["in_test"]["log_px_nats"]["mean"],
        gap_bpd=summary["in_test"]["bpd"]["mean"] - summary["out_test"]["bpd"]["mean"],
        gap_bpd_stderr=float(np.hypot(summary["in_test"]["bpd"]["stderr"], summary["out_test"]["bpd"]["stderr"])),
        gray_measured=[v - gray_ll[-1] for v in gray_ll], gray_images=len(gray), stats=stats,
        heldout=None if heldout is None else evaluate(model, heldout.images, seed=seed, device=device,
                                                      label=f"{heldout.name} images"))


# ----------------------------------------------------------------------------------------------- results
def _decomposition(m: Measurement) -> dict | None:
    parts = ("density_nats", "volume_nats")
    if not all(p in m.summary["in_test"] for p in parts):
        return None
    delta = {p: m.summary["out_test"][p]["mean"] - m.summary["in_test"][p]["mean"] for p in parts}
    dec = {k: {p: m.summary[k][p]["mean"] for p in parts} for k in m.summary}
    return dec | {"delta": delta, "carried_by": "density" if abs(delta["density_nats"]) >=
                  abs(delta["volume_nats"]) else "volume"}


def results_of(model: nn.Module, info: ModelInfo, checkpoint: Checkpoint | None, evaluated: dict[str, ImageSet],
               sets: dict[str, ImageSet], heldout: ImageSet | None, m: Measurement, th: dict, det: dict | None,
               device: torch.device) -> dict:
    """results.json's content (without the figures, the output folder and the provenance)."""
    from theory.statistics import mean_difference

    preds = {k: v for k, v in th["prediction"].items() if k != "note"}
    significant = abs(m.gap_bpd) > 2 * m.gap_bpd_stderr  # a sign is compared only with a gap that has one
    identical = np.array_equal(evaluated["in_test"].images, evaluated["out_test"].images)
    agreement = {f"sign_{k}": (None if p is None or not significant or identical
                               else bool((p["gap_nats"] > 0) == (m.gap_nats > 0))) for k, p in preds.items()}
    ratios = {k: (None if p is None or m.gap_nats == 0 else p["gap_nats"] / m.gap_nats) for k, p in preds.items()}
    labels = {k: s.name for k, s in sets.items()}
    payload = checkpoint.payload if checkpoint else {}
    decomposition = _decomposition(m)
    results = {
        "in": sets["in_train"].source, "out": sets["out_test"].source, "model": info.name,
        "preset": payload.get("preset", "n/a"), "model_class": predictions.model_class(model, info),
        "model_info": info.to_dict(), "dims": info.dims,
        "match": any("(matched)" in s.name for s in sets.values()),
        "plumbing": any(s.nonstandard for s in sets.values()), "device": device_description(device),
        "checkpoint": portable_path(checkpoint.path) if checkpoint else None, "trained_steps": payload.get("step"),
        "n_images": {k: float(len(v)) for k, v in evaluated.items()},
        "bpd": {k: s["bpd"]["mean"] for k, s in m.summary.items()},
        "gap_bpd": m.gap_bpd, "gap_bpd_stderr": m.gap_bpd_stderr, "gap_nats": m.gap_nats,
        "decomposition": decomposition, "prediction": th["prediction"], "agreement": agreement,
        "ratios": ratios, "ledger": th["ledger"], "detection": det, "hessian_spectrum": th["hessian_spectrum"],
        "linear_path_check": th["linear_path_check"], "x0": th["x0"], "quadratic_check": th["quadratic_check"],
        "mean_difference": mean_difference(m.stats["out_test"], m.stats["in_test"]),
        "graying": {"alphas": predictions.ALPHAS, "n_images": m.gray_images, "measured": m.gray_measured,
                    "exact_second_order": th["graying"], "closed_form": th["closed"]},
        "applicability": predictions.applicability(info, model, th, decomposition is not None, det),
        "summary": m.summary, "labels": labels,
        "data": {k: s.provenance() for k, s in evaluated.items()} | (
            {"heldout": heldout.provenance()} if heldout is not None else {}),
        "data_files": {k: [f.to_dict() for f in s.files] for k, s in sets.items()},
    }
    results["verdict"] = verdict(labels["in_test"], labels["out_test"], m.gap_bpd, m.gap_bpd_stderr,
                                 {k: (p["gap_bpd"] if p else None) for k, p in preds.items()},
                                 identical=identical)
    return results


