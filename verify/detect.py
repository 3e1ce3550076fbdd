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
from empirical.cli import (
    add_data_arguments,
    add_shape_arguments,
    check_limit,
    check_seed,
    data_options,
    run_cli,
    shape_map,
    writable_file,
)
from empirical.contract import ModelInfo, describe, model_device
from empirical.distributed import resolve_device
from empirical.errors import DgmOodError
from empirical.evaluate import Evaluation, evaluate
from empirical.likelihood import bits_per_dim, nats_gap_to_bpd
from empirical.sources import ImageSet
from verify.cli import add_model_arguments, open_model
from verify.runs import BACKGROUND_MU, extra_models, extra_origins, provenance

BATCH_SIZES = (2, 5, 10, 25)  # M of the batch typicality test
BOOTSTRAP = 1000  # resamples of the AUROC's interval
# The one score a user can trust first: RECOMMENDATION says why (chosen once, on IN-only criteria and the two
# offline pairs, and not revisited per OOD set).
RECOMMENDED = "complexity_png"
RECOMMENDATION = ("input complexity with PNG (Serrà et al. 2020): it needs nothing but the model and the image (no "
                  "held-out images, no second model), costs one compression per image, and had the highest mean "
                  "AUROC over the two offline pairs (FashionMNIST → MNIST, CIFAR-10 → MNIST) among such scores")
ALPHA = 0.99  # the bootstrap threshold's quantile
SCORE_SETS = ("cheap", "model", "all")


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
    (sklearn.metrics.roc_curve with every threshold: dropping collinear ones could skip the first that reaches it)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(*_labelled(in_scores, out_scores), drop_intermediate=False)  # every threshold kept
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def auroc_interval(in_scores: np.ndarray, out_scores: np.ndarray, *, n_boot: int = BOOTSTRAP, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of the AUROC: IN and OUT resampled with replacement ``n_boot`` times (seeded);
    each resample's AUROC = Σ_j w_j (#IN below s_j + ½ #IN equal to s_j)/(n_in·n_out), counted with the resampled
    multiplicities over one sort, so a thousand resamples of 20,000 images take a fraction of a second."""
    s_in, s_out = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    order = np.argsort(s_in, kind="stable")
    sorted_in = s_in[order]
    below, upto = np.searchsorted(sorted_in, s_out, "left"), np.searchsorted(sorted_in, s_out, "right")
    rng = np.random.default_rng(seed)
    n_in, n_out = len(s_in), len(s_out)
    values = np.empty(n_boot)
    for b in range(n_boot):
        w_in = np.bincount(rng.integers(0, n_in, n_in), minlength=n_in)[order]
        w_out = np.bincount(rng.integers(0, n_out, n_out), minlength=n_out)
        cum = np.concatenate([[0], np.cumsum(w_in)])
        values[b] = float(w_out @ (cum[below] + 0.5 * (cum[upto] - cum[below]))) / (n_in * n_out)
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict:
    """AUROC with its bootstrap 95% interval, AUPRC, FPR at 95% and at 80% TPR of one score, and the sample sizes."""
    return {"auroc": auroc(in_scores, out_scores), "auroc_ci95": list(auroc_interval(in_scores, out_scores)),
            "auprc": auprc(in_scores, out_scores), "fpr95": fpr_at_tpr(in_scores, out_scores),
            "fpr80": fpr_at_tpr(in_scores, out_scores, 0.80), "n_in": len(in_scores), "n_out": len(out_scores)}


# ------------------------------------------------------------------------------------------------ scores
@dataclass
class Inputs:
    """What the scores need, per set (in_test, out_test and optionally heldout): the model's bits/dim, its summary
    statistics (log p and its parts), the uint8 images (for the compressors), and optionally the background model's
    bits/dim, the ensemble's log-likelihoods (K×N, nats), per-layer gradient statistics and likelihood regrets."""

    bpd: dict[str, np.ndarray]  # in_test, out_test[, heldout]
    images: dict[str, np.ndarray]  # in_test, out_test
    dims: int
    stats: dict[str, dict[str, np.ndarray]] | None = None  # set → {log_px, latent_*, norm_*, volume, elbo, …}
    background: dict[str, np.ndarray] | None = None  # in_test, out_test bits/dim
    ensemble: dict[str, np.ndarray] | None = None  # in_test, out_test: K×N log p (nats)
    gradients: dict[str, dict[str, np.ndarray]] | None = None  # set → {parameter: log ‖∇ log p‖²}
    regret: dict[str, np.ndarray] | None = None  # in_test, out_test: likelihood regret (nats)

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
    out.update(_statistic_scores(x))
    if x.background is not None:
        out["likelihood_ratio"] = tuple(scores.likelihood_ratio(x.bpd[k], x.background[k]) for k in sets)
    if x.ensemble is not None:
        out["waic"] = tuple(scores.waic(x.ensemble[k]) for k in sets)
    if x.gradients is not None and "heldout" in x.gradients:
        out["gradient"] = tuple(scores.fisher_combination(x.gradients["heldout"], x.gradients[k]) for k in sets)
    if x.regret is not None:
        out["likelihood_regret"] = tuple(np.asarray(x.regret[k], dtype=np.float64) for k in sets)
    return {RECOMMENDED: out[RECOMMENDED], **out} if RECOMMENDED in out else out


def _statistic_scores(x: Inputs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The scores built from the model's summary statistics: DoSE (fitted on the held-out images), each flow
    latent's own log-density term (−term, nats), and the flow's level ratio."""
    if x.stats is None:
        return {}
    sets, out = ("in_test", "out_test"), {}
    if "heldout" in x.stats:
        out["dose"] = tuple(scores.dose(x.stats["heldout"], x.stats[k]) for k in sets)
    latents = sorted(k for k in x.stats["in_test"] if k.startswith("latent_"))
    for name in latents:
        out[name] = tuple(-np.asarray(x.stats[k][name], dtype=np.float64) for k in sets)
    splits = [n for n in latents if n != "latent_top"]
    if splits and "latent_top" in latents:
        out["level_ratio"] = tuple(scores.level_ratio(sum(x.stats[k][n] for n in splits), x.stats[k]["latent_top"])
                                   for k in sets)
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
    log (1/K) Σ p_k and of each member; and WAIC's two parts per set, the mean and the median over images of
    E_k log p_k and of Var_k log p_k (nats): WAIC detects only where OUT's extra variance outweighs its higher mean,
    and a few images the members disagree about wildly can carry the mean of Var_k, not the median."""
    if x.ensemble is None:
        return None
    sets = ("in_test", "out_test")
    mean = {k: scores.ensemble_log_likelihood(x.ensemble[k]).mean() for k in sets}
    members = [nats_gap_to_bpd(float(o.mean() - i.mean()), x.dims)
               for i, o in zip(x.ensemble["in_test"], x.ensemble["out_test"], strict=True)]
    return {"k": len(x.ensemble["in_test"]), "ensemble_gap_bpd": nats_gap_to_bpd(mean["out_test"] - mean["in_test"],
                                                                                  x.dims),
            "member_gaps_bpd": members,
            "waic_parts_nats": {k: _waic_parts(x.ensemble[k]) for k in sets}}


def _waic_parts(log_px: np.ndarray) -> dict[str, float]:
    """Mean and median over images of E_k log p_k and Var_k log p_k, from log p of shape (K, N) in nats."""
    mean, var = log_px.mean(0), log_px.var(0)
    return {"mean_log_px": float(mean.mean()), "median_log_px": float(np.median(mean)),
            "var_log_px": float(var.mean()), "median_var_log_px": float(np.median(var))}


def detection(x: Inputs, seed: int = 0) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """results.json's ``detection``: the settings, every score's metrics, the batch test and the ensemble gap;
    and the per-image scores themselves (for the figures)."""
    per_image = per_image_scores(x)
    settings = {"recommended": RECOMMENDED, "entropy_bpd": x.entropy,
                "heldout_images": len(x.bpd["heldout"]) if "heldout" in x.bpd else 0,
                "compressors": {"png": "Pillow PNG, compress_level 9", "jpegxl": "JPEG XL lossless (libjxl via "
                                "imagecodecs), effort 7"}, "batch_sizes": list(BATCH_SIZES), "alpha": ALPHA,
                "background_mu": BACKGROUND_MU if x.background is not None else None,
                "ensemble_k": len(x.ensemble["in_test"]) if x.ensemble is not None else None}
    return {"settings": settings, "scores": {k: metrics(*v) for k, v in per_image.items()},
            "batch_typicality": batch_test(x, seed), "ensemble": ensemble_gap(x)}, per_image


STATISTICS_LEFT_OUT = ("density",)  # log p minus the volume: it would count log p twice in DoSE


def statistics(ev: Evaluation) -> dict[str, np.ndarray]:
    """An evaluation's summary statistics for DoSE: log p and the model's parts (latent terms and norms, the
    volume, the ELBO)."""
    return {"log_px": ev.log_px, **{k: v for k, v in ev.parts.items() if k not in STATISTICS_LEFT_OUT}}


def inputs_from(evals: dict[str, Evaluation], images: dict[str, np.ndarray], dims: int) -> Inputs:
    """Inputs from evaluations of in_test, out_test and optionally heldout, and the images of the first two."""
    return Inputs({k: e.bpd for k, e in evals.items()}, images, dims,
                  stats={k: statistics(e) for k, e in evals.items()})


def model_statistics(model: nn.Module, info: ModelInfo, images: dict[str, np.ndarray], seed: int) -> dict:
    """The statistics that need the model again (``--scores all``), for each set in ``images``: per-layer gradient
    norms where log p is not stochastic, the likelihood regret of a VAE (a model with encode and decode_log_prob);
    ``{"gradients": {set: {layer: values}} or None, "regret": {set: values} or None}``."""
    from empirical.model_scores import gradient_norms, likelihood_regret

    vae = info.stochastic and callable(getattr(model, "decode_log_prob", None)) and callable(
        getattr(model, "encode", None))
    return {"gradients": None if info.stochastic else {k: gradient_norms(model, v, seed=seed)
                                                        for k, v in images.items()},
            "regret": {k: likelihood_regret(model, v, seed=seed) for k, v in images.items()} if vae else None}


def _attach(x: Inputs, stats: dict) -> None:
    if stats["gradients"] is not None and "heldout" in stats["gradients"]:
        x.gradients = stats["gradients"]
    if stats["regret"] is not None:
        x.regret = {k: stats["regret"][k] for k in ("in_test", "out_test")}


def detect_for(model: nn.Module, info: ModelInfo, m, sets: dict[str, ImageSet], heldout: ImageSet | None,
               background: nn.Module | None, ensemble: list[nn.Module], seed: int, device: torch.device,
               expensive: bool = False) -> tuple[dict, dict]:
    """The detection scores of a comparison (``m`` is verify.api's Measurement); the background model and the
    ensemble's other members, when given, are evaluated here on IN-test and OUT-test; ``expensive`` adds the
    gradient score and (for a VAE) the likelihood regret."""
    evals = {k: m.evals[k] for k in ("in_test", "out_test")} | ({"heldout": m.heldout} if m.heldout else {})
    images = {k: sets[k].images for k in ("in_test", "out_test")}
    x = inputs_from(evals, images, info.dims)

    def log_px(net: nn.Module) -> dict[str, np.ndarray]:
        return {k: evaluate(net.to(device), sets[k].images, seed=seed, device=device,
                            label=f"{sets[k].name} images").log_px for k in ("in_test", "out_test")}

    if background is not None:
        x.background = {k: bits_per_dim(v, info.dims) for k, v in log_px(background).items()}
    if ensemble:
        members = [{k: m.evals[k].log_px for k in ("in_test", "out_test")}] + [log_px(e) for e in ensemble]
        x.ensemble = {k: np.stack([e[k] for e in members]) for k in ("in_test", "out_test")}
    if expensive:
        print("detection scores: per-example gradients of log p, or the likelihood regret", file=sys.stderr)
        _attach(x, model_statistics(model, info, images | ({"heldout": heldout.images} if heldout is not None
                                                          else {}), seed))
    return detection(x, seed)


# ------------------------------------------------------------------------------------------------ the CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.detect", description=__doc__.splitlines()[0],
                                epilog=sources.SOURCE_HELP)
    p.add_argument("in_dataset", metavar="IN", help="the data the model was trained on (a registry name or a path)")
    p.add_argument("out_datasets", metavar="OUT", nargs="+", help="OOD sets: registry names, constant, noise, paths")
    add_model_arguments(p, checkpoint_required=False)
    p.add_argument("--scores", default="cheap", choices=SCORE_SETS,
                   help="cheap: likelihood, typicality, complexity, DoSE, per-latent scores; model: also the gradient "
                        "score or a VAE's likelihood regret; all: also the likelihood ratio and WAIC, which train a "
                        "background model and an ensemble (cached in --runs-dir)")
    add_shape_arguments(p)
    add_data_arguments(p)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--limit", type=int, metavar="N",
                   help="score only the first N images of IN-test and of each OUT set (all by default)")
    return p


def screen(model: nn.Module, in_test: ImageSet, out_sets: list[ImageSet], *, heldout: ImageSet | None = None,
           background: nn.Module | None = None, ensemble: list[nn.Module] | tuple = (), expensive: bool = False,
           seed: int = 0, device: torch.device | None = None) -> dict[str, dict]:
    """One model against several OOD sets: each OUT set's ``detection`` (as in verify.compare), keyed by its source.
    IN-test, the held-out images and the extra models' IN-test values are evaluated once."""
    info = describe(model)
    device = device or model_device(model)

    def ev(net: nn.Module, images: ImageSet) -> Evaluation:
        return evaluate(net.to(device), images.images, seed=seed, device=device, label=f"{images.name} images")

    base = {"in_test": ev(model, in_test)} | ({"heldout": ev(model, heldout)} if heldout is not None else {})
    extra_in = {"background": ev(background, in_test).log_px if background is not None else None,
                "ensemble": [ev(e, in_test).log_px for e in ensemble]}
    fixed = model_statistics(model, info, {"in_test": in_test.images} | (
        {"heldout": heldout.images} if heldout is not None else {}), seed) if expensive else None
    table = {}
    for out_test in out_sets:
        out_ev = ev(model, out_test)
        x = inputs_from({**base, "out_test": out_ev}, {"in_test": in_test.images, "out_test": out_test.images},
                        info.dims)
        if background is not None:
            x.background = {"in_test": bits_per_dim(extra_in["background"], info.dims),
                            "out_test": bits_per_dim(ev(background, out_test).log_px, info.dims)}
        if ensemble:
            x.ensemble = {"in_test": np.stack([base["in_test"].log_px, *extra_in["ensemble"]]),
                          "out_test": np.stack([out_ev.log_px, *(ev(e, out_test).log_px for e in ensemble)])}
        if fixed is not None:
            own = model_statistics(model, info, {"out_test": out_test.images}, seed)
            _attach(x, {k: None if fixed[k] is None else {**fixed[k], **own[k]} for k in fixed})
        table[out_test.source], _ = detection(x, seed)
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time()
    command = shlex.join(["python", "-m", "verify.detect", *(sys.argv[1:] if argv is None else argv)])
    for name in (args.in_dataset, *args.out_datasets):
        sources.check_name(name)
    check_seed(args.seed)
    check_limit(args.limit)
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
    scored = in_test.head(args.limit)
    outs = [sources.open_out(name, shape, shape_map(args), options, n_synthetic=len(scored), seed=args.seed)
            .head(args.limit) for name in args.out_datasets]
    background, ensemble = extra_for(opened.checkpoint, in_train, in_test, device, args.runs_dir, args.seed, command) \
        if args.scores == "all" else (None, [])
    extra_sources = extra_origins(background, ensemble) if background is not None else None
    table = screen(model, scored, outs, heldout=opened.heldout,
                   background=None if background is None else background.model, ensemble=[e.model for e in ensemble],
                   expensive=args.scores in ("model", "all"), seed=args.seed, device=device)
    plumbing = any(s.nonstandard for s in (in_train, in_test, *outs))
    names = list(dict.fromkeys(k for det in table.values() for k in det["scores"]))
    label = "PLUMBING RUN on non-standard data, not a result. " if plumbing else ""
    subsample = f", on the first {args.limit} images of IN-test and of each OUT set" if args.limit else ""
    print(f"{label}AUROC (OUT positive; 0.5 = chance) for {opened.name} trained on {in_train.source} "
          f"({opened.source}){subsample}:")
    print(f"recommended score: {RECOMMENDED} (first column): {RECOMMENDATION}")
    print("| OUT | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for name, det in table.items():
        print(f"| {name} | " + " | ".join(f"{det['scores'][s]['auroc']:.3f}" if s in det["scores"] else "n/a"
                                         for s in names) + " |")
    if args.json:
        write_json(args.json, {"in": in_train.source, "model": opened.source, "plumbing": plumbing, "limit": args.limit,
                               "extra_model_sources": extra_sources, "detection": table,
                               "provenance": provenance(command, device, started, t0)})
    return 0


def extra_for(checkpoint: Checkpoint, in_train: ImageSet, in_test: ImageSet, device: torch.device, runs_dir: Path,
              seed: int, command: str) -> tuple[Checkpoint, list[Checkpoint]]:
    """The background model and the ensemble's other members for ``--scores all``, trained or reused like the
    checkpoint (same family, preset and architecture)."""
    return extra_models(in_train, in_test, checkpoint.name, checkpoint.preset(seed), device, runs_dir, seed=seed,
                        command=command)


if __name__ == "__main__":
    sys.exit(run_cli(main))
