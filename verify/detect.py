"""OOD detection with a trained model: the scores of empirical.scores judged by AUROC, AUPRC and FPR at 95% TPR.
``python -m verify.detect IN OUT1 [OUT2 ...] --checkpoint PATH`` screens several OOD sets at once.

IN-test is the in-distribution sample, OUT-test the OOD one (the positive class). Ĥ and every threshold come
from IN-train images held out of training (the preset's ``holdout``); nothing is fitted on an OOD set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from empirical import data, scores
from empirical.atomic import write_json
from empirical.checkpoint import load_checkpoint, model_from_checkpoint
from empirical.cli import run_cli
from empirical.distributed import resolve_device
from empirical.errors import DgmOodError
from empirical.evaluate import evaluate
from empirical.likelihood import bits_per_dim, nats_gap_to_bpd
from empirical.models import FLOWS
from empirical.presets import Preset, get_preset
from verify.runs import cached_model, provenance

BATCH_SIZES = (2, 5, 10, 25)  # M of the batch typicality test
ALPHA = 0.99  # the bootstrap threshold's quantile
BACKGROUND_MU = 0.2  # Ren et al.'s perturbation rate, within their 0.1–0.3
ENSEMBLE = 5  # K models for WAIC, as in Choi et al.
SCORE_SETS = ("cheap", "all")


# ----------------------------------------------------------------------------------------------- metrics
def _labelled(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    return y, np.concatenate([in_scores, out_scores])


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve, OUT as the positive class (sklearn.metrics.roc_auc_score); 0.5 is chance."""
    return float(roc_auc_score(*_labelled(in_scores, out_scores)))


def auprc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Average precision, OUT as the positive class (sklearn.metrics.average_precision_score)."""
    return float(average_precision_score(*_labelled(in_scores, out_scores)))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """The false-positive rate at the first ROC threshold whose true-positive rate reaches ``tpr_level``
    (sklearn.metrics.roc_curve)."""
    fpr, tpr, _ = roc_curve(*_labelled(in_scores, out_scores))
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict:
    """AUROC, AUPRC and FPR at 95% TPR of one score, and the sample sizes."""
    return {"auroc": auroc(in_scores, out_scores), "auprc": auprc(in_scores, out_scores),
            "fpr95": fpr_at_tpr(in_scores, out_scores), "n_in": len(in_scores), "n_out": len(out_scores)}


# ------------------------------------------------------------------------------------------------ scores
@dataclass
class Inputs:
    """What the scores need: per-image bits/dim of the main model on IN-test, OUT-test and held-out IN-train, the
    uint8 images (for the compressors), and optionally the background model's bits/dim and the ensemble's
    log-likelihoods (K×N, nats)."""

    bpd: dict[str, np.ndarray]  # in_test, out_test, heldout
    images: dict[str, np.ndarray]  # in_test, out_test
    dims: int
    background: dict[str, np.ndarray] | None = None  # in_test, out_test bits/dim
    ensemble: dict[str, np.ndarray] | None = None  # in_test, out_test: K×N log p (nats)


def per_image_scores(x: Inputs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every per-image score the inputs allow, as (IN-test scores, OUT-test scores); higher = more OOD."""
    entropy = float(np.mean(x.bpd["heldout"]))
    out = {"likelihood": tuple(scores.likelihood(x.bpd[k]) for k in ("in_test", "out_test")),
           "typicality": tuple(scores.typicality(x.bpd[k], entropy) for k in ("in_test", "out_test"))}
    for codec in scores.COMPRESSORS:
        out[f"complexity_{codec}"] = tuple(
            scores.complexity(x.bpd[k], scores.compressed_bits(x.images[k], codec), x.dims)
            for k in ("in_test", "out_test"))
    if x.background is not None:
        out["likelihood_ratio"] = tuple(scores.likelihood_ratio(x.bpd[k], x.background[k])
                                        for k in ("in_test", "out_test"))
    if x.ensemble is not None:
        out["waic"] = tuple(scores.waic(x.ensemble[k]) for k in ("in_test", "out_test"))
    return out


def batch_test(x: Inputs, seed: int = 0) -> list[dict]:
    """The typicality test on batches of M images, for each M: AUROC/AUPRC/FPR95 over batches, the bootstrap
    threshold ε_M from held-out IN-train, and the share of OUT-test and IN-test batches beyond it."""
    entropy = float(np.mean(x.bpd["heldout"]))
    rows = []
    for m in BATCH_SIZES:
        if min(len(x.bpd["in_test"]), len(x.bpd["out_test"])) < 2 * m:  # fewer than 2 batches a side: no test
            rows.append({"m": m, "note": "too few images for two batches a side"})
            continue
        rng = np.random.default_rng(seed + m)
        s_in, s_out = (scores.batch_typicality(x.bpd[k], entropy, m, rng) for k in ("in_test", "out_test"))
        eps = scores.bootstrap_threshold(x.bpd["heldout"], entropy, m, rng, alpha=ALPHA)
        rows.append({"m": m, **metrics(s_in, s_out), "epsilon_bpd": eps,
                     "out_flagged": float((s_out > eps).mean()), "in_flagged": float((s_in > eps).mean())})
    return rows


def ensemble_gap(x: Inputs) -> dict | None:
    """Does ensembling fix the inversion? The gap bpd(IN-test) - bpd(OUT-test) of the ensemble's density
    log (1/K) Σ p_k and of each member."""
    if x.ensemble is None:
        return None
    mean = {k: scores.ensemble_log_likelihood(x.ensemble[k]).mean() for k in ("in_test", "out_test")}
    members = [nats_gap_to_bpd(float(o.mean() - i.mean()), x.dims)
               for i, o in zip(x.ensemble["in_test"], x.ensemble["out_test"], strict=True)]
    return {"k": len(x.ensemble["in_test"]), "ensemble_gap_bpd": nats_gap_to_bpd(mean["out_test"] - mean["in_test"],
                                                                                  x.dims),
            "member_gaps_bpd": members}


def detection(x: Inputs, seed: int = 0) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """results.json's ``detection``: the settings, every score's metrics, the batch test and the ensemble gap;
    and the per-image scores themselves (for the figures)."""
    per_image = per_image_scores(x)
    settings = {"entropy_bpd": float(np.mean(x.bpd["heldout"])), "heldout_images": len(x.bpd["heldout"]),
                "compressors": {"png": "Pillow PNG, compress_level 9", "jpegxl": "JPEG XL lossless (libjxl via "
                                "imagecodecs), effort 7"}, "batch_sizes": list(BATCH_SIZES), "alpha": ALPHA,
                "background_mu": BACKGROUND_MU if x.background is not None else None,
                "ensemble_k": len(x.ensemble["in_test"]) if x.ensemble is not None else None}
    return {"settings": settings, "scores": {k: metrics(*v) for k, v in per_image.items()},
            "batch_typicality": batch_test(x, seed), "ensemble": ensemble_gap(x)}, per_image


# ------------------------------------------------------------------------------------------ extra models
def extra_inputs(dataset: str, model_name: str, preset: Preset, device: torch.device, runs_dir: Path,
                 sets: dict[str, np.ndarray], main_log_px: dict[str, np.ndarray], *, seed: int,
                 data_dir: str | None, allow_nonstandard: bool, command: str, k: int = ENSEMBLE) -> dict:
    """Train (or reuse) the background model (the preset with perturbation μ) and the K-1 other ensemble members
    (seeds seed+1 …), evaluate them on ``sets`` (in_test, out_test); the main model is member 0."""
    def run(p: Preset) -> dict[str, np.ndarray]:
        ckpt = cached_model(dataset, model_name, p, device, runs_dir, data_dir=data_dir,
                            allow_nonstandard=allow_nonstandard, command=command)
        model, _ = model_from_checkpoint(ckpt)
        model.to(device)
        return {k_: evaluate(model, v, seed=seed, device=device).log_px for k_, v in sets.items()}

    dims = preset.model.dims
    bg = run(get_preset(preset.name, model_name, preset.model.shape, seed=seed, perturb=BACKGROUND_MU,
                        split_prior=getattr(preset.model, "split_prior", None)))
    members = [main_log_px] + [run(get_preset(preset.name, model_name, preset.model.shape, seed=seed + i,
                                              split_prior=getattr(preset.model, "split_prior", None)))
                               for i in range(1, k)]
    return {"background": {k_: bits_per_dim(v, dims) for k_, v in bg.items()},
            "ensemble": {k_: np.stack([m[k_] for m in members]) for k_ in sets}}


# ------------------------------------------------------------------------------------------------ the CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.detect", description=__doc__.splitlines()[0])
    p.add_argument("in_dataset", metavar="IN", help="the dataset the checkpoint was trained on")
    p.add_argument("out_datasets", metavar="OUT", nargs="+",
                   help=f"OOD sets: {', '.join([*data.DATASETS, *data.SYNTHETIC])}")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--scores", default="cheap", choices=SCORE_SETS,
                   help="cheap: likelihood, typicality, complexity; all: also the likelihood ratio and WAIC, "
                        "which train a background model and an ensemble (cached in --runs-dir)")
    p.add_argument("--match", action="store_true", help="map OUT sets to IN's shape explicitly")
    p.add_argument("--data-dir")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-nonstandard-data", action="store_true")
    p.add_argument("--json", type=Path, help="write every number here")
    return p


def heldout_images(train_images: np.ndarray, payload: dict) -> np.ndarray:
    """The IN-train images the checkpoint never trained on (the last ``holdout`` of the split); an error if none."""
    n = int(payload.get("train_config", {}).get("holdout", 0))
    if n <= 0:
        raise DgmOodError("the checkpoint holds out no training images, so typicality's Ĥ and the thresholds "
                          "have no in-distribution data it never saw; train it with a preset that holds out some")
    return train_images[len(train_images) - n:]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time()
    command = shlex.join(["python", "-m", "verify.detect", *(sys.argv[1:] if argv is None else argv)])
    device = resolve_device(args.device)
    payload = load_checkpoint(args.checkpoint)
    if payload.get("dataset") != args.in_dataset:
        raise DgmOodError(f"{args.checkpoint} was trained on {payload.get('dataset')}, not {args.in_dataset}")
    model, payload = model_from_checkpoint(args.checkpoint)
    model.to(device)
    shape, family = tuple(model.config.shape), payload["model"]
    load = dict(data_dir=args.data_dir, allow_nonstandard=args.allow_nonstandard_data)
    heldout = heldout_images(data.load(args.in_dataset, "train", **load).images, payload)
    in_test = data.load(args.in_dataset, "test", **load).images

    def log_px(images):
        return evaluate(model, images, seed=args.seed, device=device).log_px

    base = {"in_test": log_px(in_test), "heldout": log_px(heldout)}
    table = {}
    for name in args.out_datasets:
        out_test = data.load_as(name, "test", shape, match=args.match, seed=args.seed, synthetic_n=len(in_test),
                                **load).images
        sets = {"in_test": in_test, "out_test": out_test}
        lp = {**base, "out_test": log_px(out_test)}
        x = Inputs({k: bits_per_dim(v, model.config.dims) for k, v in lp.items()}, sets, model.config.dims)
        if args.scores == "all":
            preset = get_preset(payload["preset"], family, shape, seed=args.seed,
                                split_prior=payload["model_config"].get("split_prior") if family in FLOWS else None)
            if preset.model.to_dict() != payload["model_config"]:
                raise DgmOodError(f"{args.checkpoint} does not use its preset's architecture, so no matching "
                                  f"background model or ensemble can be trained; use --scores cheap")
            extra = extra_inputs(args.in_dataset, family, preset, device, args.runs_dir, sets,
                                 {k: lp[k] for k in sets}, seed=args.seed, data_dir=args.data_dir,
                                 allow_nonstandard=args.allow_nonstandard_data,
                                 command=command)
            x.background, x.ensemble = extra["background"], extra["ensemble"]
        table[name], _ = detection(x, args.seed)
    names = list(next(iter(table.values()))["scores"])
    print(f"AUROC (OUT positive; 0.5 = chance) for {family} trained on {args.in_dataset}, checkpoint "
          f"{args.checkpoint}:")
    print("| OUT | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for name, det in table.items():
        print(f"| {name} | " + " | ".join(f"{det['scores'][s]['auroc']:.3f}" for s in names) + " |")
    if args.json:
        write_json(args.json, {"in": args.in_dataset, "checkpoint": str(args.checkpoint), "detection": table,
                               "provenance": provenance(command, device, started, t0)})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
