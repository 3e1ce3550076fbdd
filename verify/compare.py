"""Train (or reuse), measure, predict and judge: ``python -m verify.compare fashionmnist mnist``.

Does a model trained on IN give OUT's test set a higher likelihood than IN's own test set, by how
much, and does the second-order theory predict it? The pipeline: prepare (data, model) → measure
(per-image likelihoods) → predict (theory.predict, the ledger) → report (verify.report, verify.figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from empirical import data, distributed
from empirical.atomic import atomic_write
from empirical.checkpoint import load_checkpoint, model_from_checkpoint
from empirical.cli import run_cli
from empirical.distributed import resolve_device
from empirical.errors import CheckpointError, DgmOodError
from empirical.evaluate import Evaluation, evaluate
from empirical.likelihood import discrete_log_likelihood
from empirical.models import FLOWS, MODELS
from empirical.presets import PRESETS, Preset, get_preset
from theory import ledger
from theory.predict import predict
from theory.quadratic import Moments
from theory.statistics import DatasetStats, compute_stats, mean_difference
from verify import detect, figures
from verify.detect import SCORE_SETS
from verify.report import terminal_summary, verdict, write_families, write_report
from verify.runs import cached_model, device_description, provenance

ALPHAS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
FAMILY_MODELS = ("pixelcnn", "vae")  # with the --model flow: the paper's three families, side by side
SETS = ("in_train", "in_test", "out_test")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.compare", description=__doc__.splitlines()[0])
    p.add_argument("in_dataset", metavar="IN", help=f"training dataset: {', '.join(data.DATASETS)}")
    p.add_argument("out_dataset", metavar="OUT",
                   help=f"OOD dataset: {', '.join([*data.DATASETS, *data.SYNTHETIC])}")
    p.add_argument("--model", choices=MODELS,
                   help="cvglow (constant-volume Glow, default: every prediction applies), glow (affine), "
                        "pixelcnn or vae; with --checkpoint the checkpoint's own family")
    p.add_argument("--split-prior", choices=["learned", "fixed"],
                   help="flows: 'fixed' makes every split latent N(0, σ_ψ²), the paper's exact model class "
                        "(default: learned conditional priors)")
    p.add_argument("--scores", default="cheap", choices=["none", *SCORE_SETS],
                   help="OOD detection scores: cheap (likelihood, typicality, input complexity; default), all (also "
                        "the likelihood ratio and WAIC, which train a background model and an ensemble), none")
    p.add_argument("--all-models", action="store_true",
                   help="run the --model flow (default cvglow), pixelcnn and vae on the same pair; one table "
                        "and one figure (each model's report in its own folder)")
    p.add_argument("--preset", default="auto", choices=["auto", *PRESETS],
                   help="auto = gpu on CUDA, else cpu")
    p.add_argument("--checkpoint", type=Path, help="evaluate this checkpoint instead of training")
    p.add_argument("--match", action="store_true",
                   help="map OUT to IN's shape explicitly (zero-pad/crop, grey<->RGB)")
    p.add_argument("--data-dir", help="dataset root (else $DGM_OOD_DATA, <repo>/data, ../shared/data)")
    p.add_argument("--download", action="store_true", help="download missing datasets (needs a network)")
    p.add_argument("--out", type=Path, help="report folder (default runs/compare/IN-OUT-MODEL-PRESET)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where trained models are cached")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-nonstandard-data", action="store_true",
                   help="accept well-formed files with non-official counts; the run is labelled PLUMBING")
    return p


# ------------------------------------------------------------------------------------------ prepare
@dataclass
class Run:
    """Everything a comparison works on: the model, its preset and the evaluated image sets."""

    args: argparse.Namespace
    model_name: str
    preset: Preset
    device: torch.device
    model: torch.nn.Module
    checkpoint: Path
    payload: dict
    in_train: np.ndarray  # the whole split (x0 is its mean)
    heldout: np.ndarray | None  # IN-train images the model never trained on (the checkpoint's holdout)
    sets: dict[str, np.ndarray]  # the evaluated images: in_train (a subset), in_test, out_test
    totals: dict[str, int]
    files: dict[str, list[dict]]  # the source files each set was read from (path, bytes, sha256)
    labels: dict[str, str]
    started: str  # when the command started (training included in the wall-clock)
    t0: float

    @property
    def dims(self) -> int:
        return self.model.config.dims

    @property
    def is_flow(self) -> bool:
        return self.model_name in FLOWS


def checkpoint_family(args) -> str:
    """The family of ``--checkpoint``, which is the truth: a contradicting --model, --split-prior or IN is an error."""
    payload = load_checkpoint(args.checkpoint)
    family, trained_on = payload.get("model"), payload.get("dataset")
    if family not in MODELS:
        raise CheckpointError(f"{args.checkpoint} names an unknown model family {family!r}")
    if args.model and args.model != family:
        raise CheckpointError(f"{args.checkpoint} is a {family} checkpoint, not {args.model}: drop --model (the "
                              f"checkpoint's own family is used)")
    if trained_on != args.in_dataset:
        raise CheckpointError(f"{args.checkpoint} was trained on {trained_on}, not {args.in_dataset}: IN names the "
                              f"training set, so pass {trained_on} as IN")
    split = payload.get("model_config", {}).get("split_prior", "learned") if family in FLOWS else None
    if args.split_prior and split != args.split_prior:
        raise CheckpointError(f"{args.checkpoint} has {split or 'no'} split priors, not {args.split_prior}: drop "
                              f"--split-prior")
    return family


def _limit(images: np.ndarray, n: int | None) -> np.ndarray:
    return images if n is None else images[:n]


def prepare(args, model_name: str) -> Run:
    """Resolve the device and preset, load the data, train or load the model."""
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time()
    in_info = data.dataset_info(args.in_dataset)
    device = resolve_device(args.device)
    preset_name = args.preset if args.preset != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    # --all-models applies --split-prior to its flow only; asked for one other family, get_preset refuses it
    split_prior = None if args.all_models and model_name not in FLOWS else args.split_prior
    preset = get_preset(preset_name, model_name, in_info.shape, seed=args.seed, split_prior=split_prior)
    print(f"preset {preset_name}: {model_name} {preset.model}, {preset.train.steps} training steps of "
          f"{preset.train.batch_size}; device {device_description(device)}", file=sys.stderr)
    load = dict(data_dir=args.data_dir, download=args.download, allow_nonstandard=args.allow_nonstandard_data)
    in_train = data.load(args.in_dataset, "train", **load)
    in_test = data.load(args.in_dataset, "test", **load)
    out_test = data.load_as(args.out_dataset, "test", in_info.shape, match=args.match, seed=args.seed,
                            synthetic_n=len(in_test.images), **load)
    ckpt = args.checkpoint or cached_model(args.in_dataset, model_name, preset, device, args.runs_dir,
                                           data_dir=args.data_dir, allow_nonstandard=args.allow_nonstandard_data,
                                           command=shlex.join(["python", "-m", "verify.compare", *args.argv]))
    model, payload = model_from_checkpoint(ckpt)
    budget = preset.budget
    sets = {"in_train": _limit(in_train.images, budget.in_train), "in_test": _limit(in_test.images, budget.in_test),
            "out_test": _limit(out_test.images, budget.out_test)}
    labels = {"in_train": f"{data.display_name(args.in_dataset)}-train",
              "in_test": f"{data.display_name(args.in_dataset)}-test",
              "out_test": f"{data.display_name(args.out_dataset)}-test" + (" (matched)" if args.match else "")}
    splits = dict(zip(SETS, (in_train, in_test, out_test), strict=True))
    files = {k: [f.to_dict() for f in split.files] for k, split in splits.items()}
    holdout = int(payload.get("train_config", {}).get("holdout", 0))
    heldout = _limit(in_train.images[len(in_train.images) - holdout:], budget.heldout) if holdout else None
    return Run(args, model_name, preset, device, model.to(device).eval(), Path(ckpt), payload, in_train.images,
               heldout, sets, {k: len(split.images) for k, split in splits.items()}, files, labels, started, t0)


# ------------------------------------------------------------------------------------------ measure
@dataclass
class Measurement:
    evals: dict[str, Evaluation]
    summary: dict
    gap_nats: float
    gap_bpd: float
    gap_bpd_stderr: float
    gray_measured: list[float]
    stats: dict[str, DatasetStats]
    heldout: Evaluation | None  # the held-out IN-train images (typicality's Ĥ, thresholds)


def measure(run: Run) -> Measurement:
    """Per-image log-likelihoods of the three sets and of the graying series, and the sets' statistics."""
    seed, device = run.args.seed, run.device
    print("evaluating " + ", ".join(f"{k} {len(v)} of {run.totals[k]} images" for k, v in run.sets.items()),
          file=sys.stderr)
    evals = {k: evaluate(run.model, v, seed=seed, device=device) for k, v in run.sets.items()}
    for k, e in evals.items():
        bad = int((~np.isfinite(e.log_px)).sum())
        if bad:
            raise DgmOodError(f"{run.model_name} from {run.checkpoint} gives a non-finite log-likelihood to {bad} of "
                              f"{len(e.log_px)} {run.labels[k]} images: no measurement, so no verdict")
    summary = {k: e.summary() for k, e in evals.items()}
    gray = run.sets["in_test"][: run.preset.budget.gray_images]
    gray_ll = [float(evaluate(run.model, np.rint(a * gray.astype(np.float64) + (1 - a) * 128).astype(np.uint8),
                              seed=seed, device=device).log_px.mean()) for a in ALPHAS]
    stats = {k: compute_stats(run.sets[k], full_cov=run.is_flow, ddof=0) for k in ("in_test", "out_test")}
    return Measurement(
        evals, summary,
        gap_nats=summary["out_test"]["log_px_nats"]["mean"] - summary["in_test"]["log_px_nats"]["mean"],
        gap_bpd=summary["in_test"]["bpd"]["mean"] - summary["out_test"]["bpd"]["mean"],
        gap_bpd_stderr=float(np.hypot(summary["in_test"]["bpd"]["stderr"], summary["out_test"]["bpd"]["stderr"])),
        gray_measured=[v - gray_ll[-1] for v in gray_ll], stats=stats,
        heldout=None if run.heldout is None else evaluate(run.model, run.heldout, seed=seed, device=device))


# ------------------------------------------------------------------------------------------ predict
NOT_A_FLOW = ("{model} has no differentiable log-density in x: the closed form needs a constant-volume flow "
              "and the second-order predictions need log p(x̃) with a gradient and Hessian ({why})")
WHY = {"pixelcnn": "a PixelCNN is a discrete model; its continuous relaxation is not used",
       "vae": "a VAE gives only bounds on log p (ELBO, IWAE), not log p itself"}


def model_class(run: Run) -> str:
    """Which model class the theory is compared on, in words."""
    if not run.is_flow:
        return f"{run.model_name} (not a flow)"
    cfg = run.model.config
    kind = "CV-Glow (additive couplings, constant volume)" if run.model.constant_volume else "Glow (affine couplings)"
    if cfg.paper_class:
        return f"{kind}, every latent N(0, σ_ψ²) with σ_ψ = {cfg.prior_std:g}: the paper's model class"
    top = f"fixed N(0, {cfg.prior_std:g}²) top prior" if cfg.prior == "fixed" else "learned top prior"
    split = "fixed N(0, σ_ψ²) split priors" if cfg.split_prior == "fixed" else "learned conditional split priors"
    return f"{kind}, {top}, {split}: not the paper's class (its Hessian is not −JᵀJ/σ_ψ²)"


def all_finite(obj: object) -> bool:
    """True when every number inside (nested dicts, lists) is finite."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(all_finite(v) for v in obj)
    return True


def _without_non_finite(th: dict) -> dict:
    """A prediction, ledger row or diagnostic holding NaN/inf is reported as n/a with a note, never as a number."""
    dropped = [k for k, v in th["prediction"].items() if k != "note" and not all_finite(v)]
    for k in dropped:
        th["prediction"][k] = None
    for key in ("quadratic_check", "graying", "closed", "hessian_spectrum", "linear_path_check"):
        if not all_finite(th[key]):
            th[key], dropped = None, [*dropped, key]
    if dropped:
        note = f"non-finite (numerical overflow), not reported: {', '.join(dropped)}"
        th["prediction"]["note"] = "; ".join(filter(None, [th["prediction"].get("note"), note]))
    return th


def theory_for(run: Run, m: Measurement) -> dict:
    """The predictions, the ledger and the diagnostics; for models that are not flows, None and the reason."""
    if not run.is_flow:
        note = NOT_A_FLOW.format(model=run.model_name, why=WHY[run.model_name])
        return {"prediction": {"closed_form": None, "exact_second_order": None, "averaged_curvature": None,
                               "note": note}, "x0": None, "quadratic_check": None, "graying": None, "closed": None,
                "ledger": None, "hessian_spectrum": None, "linear_path_check": None}
    budget = run.preset.budget
    print(f"second-order predictions: exact Hessian at x0 (D = {run.dims}) and a Monte Carlo estimate from "
          f"{budget.hvp_samples} images per set; the assumption ledger", file=sys.stderr)
    p, q = Moments.from_stats(m.stats["in_test"]), Moments.from_stats(m.stats["out_test"])
    pr = predict(run.model, run.in_train.mean(0, dtype=np.float64), run.sets["in_test"], run.sets["out_test"],
                 gray_images=run.sets["in_test"][: budget.gray_images], alphas=ALPHAS,
                 n_samples=budget.hvp_samples, seed=run.args.seed, p=p, q=q)
    prediction = {"closed_form": pr["closed_form"], "exact_second_order": pr["exact_second_order"],
                  "averaged_curvature": pr["averaged_curvature"]}
    if pr["closed_form"] is None:
        prediction["note"] = "closed form: n/a for affine couplings (volume term not constant); use --model cvglow"
    quadratic_check = pr["taylor_mean"] and {
        k: {"taylor_at_x0": pr["taylor_mean"][k], "measured_log_p": m.summary[k]["log_px_nats"]["mean"]}
        for k in ("in_test", "out_test")}
    book = None
    for row in pr["ledger_rows"] or []:
        if not all_finite(row):
            row.update(gap_nats=None, terms=None, note="non-finite (numerical overflow)")
    if pr["ledger_rows"] is not None:
        s_in, s_out = m.summary["in_test"], m.summary["out_test"]
        deltas = {k.removesuffix("_nats"): (s_out[k]["mean"] - s_in[k]["mean"],
                                            float(np.hypot(s_out[k]["stderr"], s_in[k]["stderr"])))
                  for k in s_in if k.startswith("latent_") or k == "volume_nats"}
        se_nats = float(np.hypot(s_in["log_px_nats"]["stderr"], s_out["log_px_nats"]["stderr"]))
        book = ledger.assemble(ledger.measured_rows(m.gap_nats, se_nats, deltas) + pr["ledger_rows"], run.dims)
    return _without_non_finite({
        "prediction": prediction, "x0": pr["x0"], "quadratic_check": quadratic_check, "graying": pr["graying"],
        "closed": pr["graying_closed_form"], "ledger": book, "hessian_spectrum": pr["hessian_spectrum"],
        "linear_path_check": pr["linear_path_check"]})


# ---------------------------------------------------------------------------------------- detection
def detect_for(run: Run, m: Measurement) -> tuple[dict | None, dict]:
    """The OOD scores and their metrics (verify.detect) for ``--scores``; (None, {}) when switched off or when
    the model holds out no training images (then the reason is in the report)."""
    if run.args.scores == "none":
        return None, {}
    if m.heldout is None:
        return {"note": "the model holds out no training images, so typicality's Ĥ and the thresholds cannot be "
                        "estimated; no detection scores"}, {}
    x = detect.Inputs({"in_test": m.evals["in_test"].bpd, "out_test": m.evals["out_test"].bpd,
                       "heldout": m.heldout.bpd}, {k: run.sets[k] for k in ("in_test", "out_test")}, run.dims)
    if run.args.scores == "all":
        print(f"detection scores: training or reusing a background model (μ = {detect.BACKGROUND_MU}) and "
              f"{detect.ENSEMBLE - 1} more ensemble members", file=sys.stderr)
        extra = detect.extra_inputs(
            run.args.in_dataset, run.model_name, run.preset, run.device, run.args.runs_dir,
            {k: run.sets[k] for k in ("in_test", "out_test")},
            {k: m.evals[k].log_px for k in ("in_test", "out_test")}, seed=run.args.seed, data_dir=run.args.data_dir,
            allow_nonstandard=run.args.allow_nonstandard_data,
            command=shlex.join(["python", "-m", "verify.compare", *run.args.argv]))
        x.background, x.ensemble = extra["background"], extra["ensemble"]
    return detect.detection(x, run.args.seed)


# ------------------------------------------------------------------------------------------ report
def _detection_figures(run: Run, det: dict | None, per_image: dict, out_dir: Path) -> list[Path]:
    if not per_image:
        return []
    title = f"{run.model_name} on {data.display_name(run.args.in_dataset)}: OUT-test vs IN-test"
    return [figures.roc_curves(per_image, {k: v["auroc"] for k, v in det["scores"].items()}, title,
                               out_dir / "roc.png"),
            figures.score_histograms(per_image, run.labels, out_dir / "scores.png")]


def _figures(run: Run, m: Measurement, th: dict, out_dir: Path) -> list[Path]:
    dims, labels = run.dims, run.labels
    paths = [
        figures.loglik_histograms({k: discrete_log_likelihood(e.log_px, dims) for k, e in m.evals.items()}, labels,
                                  f"{run.model_name} trained on {data.display_name(run.args.in_dataset)}",
                                  out_dir / "loglik_hist.png"),
        figures.moment_histograms({k: (s.mean, s.var) for k, s in m.stats.items()}, labels, out_dir / "moments.png"),
        figures.graying_curve(ALPHAS, m.gray_measured, {
            **({"exact second order": th["graying"]} if th["graying"] else {}),
            **({"closed form": th["closed"]} if th["closed"] else {})}, out_dir / "graying.png"),
    ]
    if run.is_flow:
        paths.append(figures.decomposition_histograms(
            {k: {"density": e.parts["density"], "volume": e.parts["volume"]} for k, e in m.evals.items()},
            labels, out_dir / "decomposition.png"))
    return paths


def _decomposition(run: Run, m: Measurement) -> dict | None:
    if not run.is_flow:
        return None
    parts = ("density_nats", "volume_nats")
    delta = {p: m.summary["out_test"][p]["mean"] - m.summary["in_test"][p]["mean"] for p in parts}
    dec = {k: {p: m.summary[k][p]["mean"] for p in parts} for k in m.summary}
    return dec | {"delta": delta, "carried_by": "density" if abs(delta["density_nats"]) >=
                  abs(delta["volume_nats"]) else "volume"}


def results_of(run: Run, m: Measurement, th: dict, det: dict | None, fig_paths: list[Path], out_dir: Path) -> dict:
    """results.json's content."""
    args = run.args
    predictions = {k: v for k, v in th["prediction"].items() if k != "note"}
    significant = abs(m.gap_bpd) > 2 * m.gap_bpd_stderr  # a sign is compared only with a gap that has one
    agreement = {f"sign_{k}": (None if p is None or not significant else bool((p["gap_nats"] > 0) == (m.gap_nats > 0)))
                 for k, p in predictions.items()}
    ratios = {k: (None if p is None or m.gap_nats == 0 else p["gap_nats"] / m.gap_nats) for k, p in predictions.items()}
    results = {
        "in": args.in_dataset, "out": args.out_dataset, "model": run.model_name, "preset": run.preset.name,
        "model_class": model_class(run), "dims": run.dims, "match": args.match,
        "plumbing": bool(args.allow_nonstandard_data), "device": device_description(run.device),
        "checkpoint": str(run.checkpoint), "trained_steps": run.payload["step"],
        "n_images": {k: float(len(v)) for k, v in run.sets.items()},
        "bpd": {k: s["bpd"]["mean"] for k, s in m.summary.items()},
        "gap_bpd": m.gap_bpd, "gap_bpd_stderr": m.gap_bpd_stderr, "gap_nats": m.gap_nats,
        "decomposition": _decomposition(run, m), "prediction": th["prediction"], "agreement": agreement,
        "ratios": ratios, "ledger": th["ledger"], "detection": det, "hessian_spectrum": th["hessian_spectrum"],
        "linear_path_check": th["linear_path_check"], "x0": th["x0"], "quadratic_check": th["quadratic_check"],
        "mean_difference": mean_difference(m.stats["out_test"], m.stats["in_test"]),
        "graying": {"alphas": ALPHAS, "n_images": min(run.preset.budget.gray_images, len(run.sets["in_test"])),
                    "measured": m.gray_measured, "exact_second_order": th["graying"], "closed_form": th["closed"]},
        "summary": m.summary, "labels": run.labels, "figures": [str(p) for p in fig_paths], "out_dir": str(out_dir),
    }
    results["data_files"] = run.files
    identical = np.array_equal(run.sets["in_test"], run.sets["out_test"])
    if identical:
        results["agreement"] = {k: None for k in agreement}
    results["verdict"] = verdict(run.labels["in_test"], run.labels["out_test"], m.gap_bpd, m.gap_bpd_stderr,
                                 {k: (p["gap_bpd"] if p else None) for k, p in predictions.items()},
                                 identical=identical)
    results["provenance"] = provenance(shlex.join(["python", "-m", "verify.compare", *args.argv]), run.device,
                                       run.started, run.t0)
    return results


def compare_one(args, model_name: str, out_dir: Path) -> dict:
    """Prepare, measure, predict, report one model on one pair; returns results.json's content."""
    run = prepare(args, model_name)
    m = measure(run)
    th = theory_for(run, m)
    det, per_image_scores = detect_for(run, m)
    if not distributed.world().main:  # under torchrun every rank trains and evaluates its share; rank 0 reports
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    per_image = {**{f"{k}_log_px_nats": e.log_px for k, e in m.evals.items()},
                 **{f"{k}_{p}_nats": v for k, e in m.evals.items() for p, v in e.parts.items()}}
    atomic_write(out_dir / "per_image.npz", lambda f: np.savez_compressed(f, **per_image))
    fig_paths = _figures(run, m, th, out_dir) + _detection_figures(run, det, per_image_scores, out_dir)
    results = results_of(run, m, th, det, fig_paths, out_dir)
    write_report(results, out_dir)
    print(terminal_summary(results))
    return results


def writable_dir(path: Path, flag: str) -> None:
    """Create ``path`` and prove a file can be written there, or a one-line error naming ``flag``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (FileExistsError, NotADirectoryError) as err:
        raise DgmOodError(f"{flag} {path}: a file is in the way ({err.filename} is not a folder)") from err
    except OSError as err:
        raise DgmOodError(f"{flag} {path} is not writable: {err.strerror or err}") from err


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    distributed.init_from_env(args.device)  # under torchrun: join the group (training and evaluation are sharded)
    try:
        return _compare(args)
    finally:
        distributed.shutdown()


def _compare(args: argparse.Namespace) -> int:
    data.dataset_info(args.in_dataset)
    if args.out_dataset not in data.SYNTHETIC:
        data.dataset_info(args.out_dataset)
    if args.all_models and args.checkpoint:
        raise DgmOodError("--all-models trains or reuses one model per family; it cannot take --checkpoint")
    model = checkpoint_family(args) if args.checkpoint else (args.model or "cvglow")
    preset_tag = args.preset if args.preset != "auto" else ("gpu" if resolve_device(args.device).type == "cuda"
                                                            else "cpu")
    stem = f"{args.in_dataset}-{args.out_dataset}" + ("-match" if args.match else "")
    tag = ("-splitfixed" if args.split_prior == "fixed" else "") + ("-scoresall" if args.scores == "all" else "")
    out = args.out or Path("runs/compare") / (f"{stem}-families-{preset_tag}{tag}" if args.all_models
                                              else f"{stem}-{model}-{preset_tag}{tag}")
    writable_dir(out, "--out")  # before any training: a report that cannot be written would waste it
    if not args.checkpoint:
        writable_dir(args.runs_dir / "models", "--runs-dir")
    if not args.all_models:
        compare_one(args, model, out)
        return 0
    root = out
    flow = model if model in FLOWS else "cvglow"
    runs = {m: compare_one(args, m, root / m) for m in (flow, *FAMILY_MODELS)}
    if not distributed.world().main:
        return 0
    write_families(runs, root)
    print(f"three families: {root}/families.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
