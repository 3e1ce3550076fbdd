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
from torch import nn

from empirical import scores, sources
from empirical.atomic import write_json
from empirical.checkpoint import Checkpoint
from empirical.cli import add_data_arguments, add_shape_arguments, data_options, run_cli, shape_map, writable_file
from empirical.contract import ModelInfo, describe, model_device
from empirical.distributed import resolve_device
from empirical.errors import DgmOodError
from empirical.evaluate import evaluate
from empirical.likelihood import bits_per_dim, nats_gap_to_bpd
from empirical.models import FLOWS
from empirical.presets import get_preset
from empirical.sources import ImageSet
from verify.cli import add_model_arguments, check_seed, open_model
from verify.runs import BACKGROUND_MU, extra_models, provenance

BATCH_SIZES = (2, 5, 10, 25)  # M of the batch typicality test
ALPHA = 0.99  # the bootstrap threshold's quantile
SCORE_SETS = ("cheap", "all")


# ----------------------------------------------------------------------------------------------- metrics
def _labelled(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    return y, np.concatenate([in_scores, out_scores])


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve, OUT as the positive class (sklearn.metrics.roc_auc_score); 0.5 is chance."""
    from sklearn.metrics import roc_auc_score  # imported when needed: it costs a CLI's start almost a second

    return float(roc_auc_score(*_labelled(in_scores, out_scores)))


def auprc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Average precision, OUT as the positive class (sklearn.metrics.average_precision_score)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(*_labelled(in_scores, out_scores)))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """The false-positive rate at the first ROC threshold whose true-positive rate reaches ``tpr_level``
    (sklearn.metrics.roc_curve)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(*_labelled(in_scores, out_scores))
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict:
    """AUROC, AUPRC and FPR at 95% TPR of one score, and the sample sizes."""
    return {"auroc": auroc(in_scores, out_scores), "auprc": auprc(in_scores, out_scores),
            "fpr95": fpr_at_tpr(in_scores, out_scores), "n_in": len(in_scores), "n_out": len(out_scores)}


# ------------------------------------------------------------------------------------------------ scores
@dataclass
class Inputs:
    """What the scores need: per-image bits/dim of the model on IN-test, OUT-test and (optionally) held-out IN
    images, the uint8 images (for the compressors), and optionally the background model's bits/dim and the
    ensemble's log-likelihoods (K×N, nats)."""

    bpd: dict[str, np.ndarray]  # in_test, out_test[, heldout]
    images: dict[str, np.ndarray]  # in_test, out_test
    dims: int
    background: dict[str, np.ndarray] | None = None  # in_test, out_test bits/dim
    ensemble: dict[str, np.ndarray] | None = None  # in_test, out_test: K×N log p (nats)

    @property
    def entropy(self) -> float | None:
        """Ĥ: the mean bits/dim of the held-out IN images (None without them)."""
        return float(np.mean(self.bpd["heldout"])) if "heldout" in self.bpd else None


def per_image_scores(x: Inputs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every per-image score the inputs allow, as (IN-test scores, OUT-test scores); higher = more OOD."""
    sets = ("in_test", "out_test")
    out = {"likelihood": tuple(scores.likelihood(x.bpd[k]) for k in sets)}
    if x.entropy is not None:
        out["typicality"] = tuple(scores.typicality(x.bpd[k], x.entropy) for k in sets)
    for codec in scores.COMPRESSORS:
        out[f"complexity_{codec}"] = tuple(
            scores.complexity(x.bpd[k], scores.compressed_bits(x.images[k], codec), x.dims) for k in sets)
    if x.background is not None:
        out["likelihood_ratio"] = tuple(scores.likelihood_ratio(x.bpd[k], x.background[k]) for k in sets)
    if x.ensemble is not None:
        out["waic"] = tuple(scores.waic(x.ensemble[k]) for k in sets)
    return out


def batch_test(x: Inputs, seed: int = 0) -> list[dict]:
    """The typicality test on batches of M images, for each M: AUROC/AUPRC/FPR95 over batches, the bootstrap
    threshold ε_M from the held-out IN images, and the share of OUT-test and IN-test batches beyond it."""
    if x.entropy is None:
        return []
    rows = []
    for m in BATCH_SIZES:
        if min(len(x.bpd["in_test"]), len(x.bpd["out_test"])) < 2 * m:  # fewer than 2 batches a side: no test
            rows.append({"m": m, "note": "too few images for two batches a side"})
            continue
        rng = np.random.default_rng(seed + m)
        s_in, s_out = (scores.batch_typicality(x.bpd[k], x.entropy, m, rng) for k in ("in_test", "out_test"))
        eps = scores.bootstrap_threshold(x.bpd["heldout"], x.entropy, m, rng, alpha=ALPHA)
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
    settings = {"entropy_bpd": x.entropy, "heldout_images": len(x.bpd["heldout"]) if "heldout" in x.bpd else 0,
                "compressors": {"png": "Pillow PNG, compress_level 9", "jpegxl": "JPEG XL lossless (libjxl via "
                                "imagecodecs), effort 7"}, "batch_sizes": list(BATCH_SIZES), "alpha": ALPHA,
                "background_mu": BACKGROUND_MU if x.background is not None else None,
                "ensemble_k": len(x.ensemble["in_test"]) if x.ensemble is not None else None}
    return {"settings": settings, "scores": {k: metrics(*v) for k, v in per_image.items()},
            "batch_typicality": batch_test(x, seed), "ensemble": ensemble_gap(x)}, per_image


def detect_for(info: ModelInfo, m, sets: dict[str, ImageSet], background: nn.Module | None,
               ensemble: list[nn.Module], seed: int, device: torch.device) -> tuple[dict, dict]:
    """The detection scores of a comparison (``m`` is verify.api's Measurement); the background model and the
    ensemble's other members, when given, are evaluated here on IN-test and OUT-test."""
    bpd = {k: m.evals[k].bpd for k in ("in_test", "out_test")}
    if m.heldout is not None:
        bpd["heldout"] = m.heldout.bpd
    x = Inputs(bpd, {k: sets[k].images for k in ("in_test", "out_test")}, info.dims)

    def log_px(model: nn.Module) -> dict[str, np.ndarray]:
        return {k: evaluate(model.to(device), sets[k].images, seed=seed, device=device,
                            label=f"{sets[k].name} images").log_px for k in ("in_test", "out_test")}

    if background is not None:
        x.background = {k: bits_per_dim(v, info.dims) for k, v in log_px(background).items()}
    if ensemble:
        members = [{k: m.evals[k].log_px for k in ("in_test", "out_test")}] + [log_px(e) for e in ensemble]
        x.ensemble = {k: np.stack([e[k] for e in members]) for k in ("in_test", "out_test")}
    return detection(x, seed)


# ------------------------------------------------------------------------------------------------ the CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.detect", description=__doc__.splitlines()[0],
                                epilog=sources.SOURCE_HELP)
    p.add_argument("in_dataset", metavar="IN", help="the data the model was trained on (a registry name or a path)")
    p.add_argument("out_datasets", metavar="OUT", nargs="+", help="OOD sets: registry names, constant, noise, paths")
    add_model_arguments(p, checkpoint_required=False)
    p.add_argument("--scores", default="cheap", choices=SCORE_SETS,
                   help="cheap: likelihood, typicality, complexity; all: also the likelihood ratio and WAIC, "
                        "which train a background model and an ensemble (cached in --runs-dir)")
    add_shape_arguments(p)
    add_data_arguments(p)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every number here")
    return p


def screen(model: nn.Module, in_test: ImageSet, out_sets: list[ImageSet], *, heldout: ImageSet | None = None,
           background: nn.Module | None = None, ensemble: list[nn.Module] | tuple = (), seed: int = 0,
           device: torch.device | None = None) -> dict[str, dict]:
    """One model against several OOD sets: each OUT set's ``detection`` (as in verify.compare), keyed by its source.
    IN-test, the held-out images and the extra models' IN-test values are evaluated once."""
    info = describe(model)
    device = device or model_device(model)

    def log_px(net: nn.Module, images: ImageSet) -> np.ndarray:
        return evaluate(net.to(device), images.images, seed=seed, device=device, label=f"{images.name} images").log_px

    base = {"in_test": log_px(model, in_test)} | ({"heldout": log_px(model, heldout)} if heldout is not None else {})
    extra_in = {"background": log_px(background, in_test) if background is not None else None,
                "ensemble": [log_px(e, in_test) for e in ensemble]}
    table = {}
    for out_test in out_sets:
        lp = {**base, "out_test": log_px(model, out_test)}
        x = Inputs({k: bits_per_dim(v, info.dims) for k, v in lp.items()},
                   {"in_test": in_test.images, "out_test": out_test.images}, info.dims)
        if background is not None:
            x.background = {"in_test": bits_per_dim(extra_in["background"], info.dims),
                            "out_test": bits_per_dim(log_px(background, out_test), info.dims)}
        if ensemble:
            x.ensemble = {"in_test": np.stack([lp["in_test"], *extra_in["ensemble"]]),
                          "out_test": np.stack([lp["out_test"], *(log_px(e, out_test) for e in ensemble)])}
        table[out_test.source], _ = detection(x, seed)
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time()
    command = shlex.join(["python", "-m", "verify.detect", *(sys.argv[1:] if argv is None else argv)])
    for name in (args.in_dataset, *args.out_datasets):
        sources.check_name(name)
    check_seed(args.seed)
    if args.json:
        writable_file(args.json, "--json")
    device = resolve_device(args.device)
    options = data_options(args)
    in_train, in_test = sources.open_in(args.in_dataset, options)
    opened = open_model(args, in_train, in_test)
    if args.scores == "all" and opened.checkpoint is None:
        raise DgmOodError("--scores all trains a background model and an ensemble like the checkpoint; it needs "
                          "--checkpoint (an outside model's training is not known)")
    model = opened.module.to(device).eval()
    shape = describe(model).shape
    outs = [sources.open_out(name, shape, shape_map(args), options, n_synthetic=len(in_test), seed=args.seed)
            for name in args.out_datasets]
    background, ensemble = extra_for(opened.checkpoint, in_train, in_test, device, args, command) \
        if args.scores == "all" else (None, [])
    table = screen(model, in_test, outs, heldout=opened.heldout, background=background, ensemble=ensemble,
                   seed=args.seed, device=device)
    plumbing = any(s.nonstandard for s in (in_train, in_test, *outs))
    names = list(dict.fromkeys(k for det in table.values() for k in det["scores"]))
    label = "PLUMBING RUN on non-standard data, not a result. " if plumbing else ""
    print(f"{label}AUROC (OUT positive; 0.5 = chance) for {opened.name} trained on {in_train.source} "
          f"({opened.source}):")
    print("| OUT | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for name, det in table.items():
        print(f"| {name} | " + " | ".join(f"{det['scores'][s]['auroc']:.3f}" if s in det["scores"] else "n/a"
                                         for s in names) + " |")
    if args.json:
        write_json(args.json, {"in": in_train.source, "model": opened.source, "plumbing": plumbing,
                               "detection": table, "provenance": provenance(command, device, started, t0)})
    return 0


def extra_for(checkpoint: Checkpoint, in_train: ImageSet, in_test: ImageSet, device: torch.device,
              args: argparse.Namespace, command: str) -> tuple[nn.Module, list[nn.Module]]:
    """The background model and the ensemble's other members for ``--scores all``, trained or reused like the
    checkpoint (same family, preset and architecture)."""
    payload = checkpoint.payload
    family = payload["model"]
    split = payload["model_config"].get("split_prior") if family in FLOWS else None
    preset = get_preset(payload["preset"], family, in_train.shape, seed=args.seed, split_prior=split)
    if preset.model.to_dict() != payload["model_config"]:
        raise DgmOodError(f"{checkpoint.path} does not use its preset's architecture, so no matching background "
                          f"model or ensemble can be trained; use --scores cheap")
    return extra_models(in_train, in_test, family, preset, device, args.runs_dir, seed=args.seed, command=command)


if __name__ == "__main__":
    sys.exit(run_cli(main))
