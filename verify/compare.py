"""Train (or reuse), measure, predict and judge: ``python -m verify.compare fashionmnist mnist``.

Does a model trained on IN give OUT's test set a higher likelihood than IN's own test set, by how
much, and does the second-order theory predict it?
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from empirical import data
from empirical.checkpoint import code_version, load_checkpoint, model_from_checkpoint
from empirical.cli import run_cli
from empirical.errors import CheckpointError, DgmOodError
from empirical.evaluate import Evaluation, evaluate
from empirical.likelihood import discrete_log_likelihood
from empirical.models import FLOWS, MODELS
from empirical.presets import PRESETS, get_preset
from empirical.train import CHECKPOINT, resolve_device, train
from theory.predict import closed_form, second_order
from theory.statistics import compute_stats, mean_difference
from verify import figures
from verify.report import terminal_summary, verdict, write_families, write_report

ALPHAS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
FAMILY_MODELS = ("pixelcnn", "vae")  # with the --model flow: the paper's three families, side by side
REPO = Path(__file__).resolve().parent.parent


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.compare", description=__doc__.splitlines()[0])
    p.add_argument("in_dataset", metavar="IN", help=f"training dataset: {', '.join(data.DATASETS)}")
    p.add_argument("out_dataset", metavar="OUT",
                   help=f"OOD dataset: {', '.join([*data.DATASETS, *data.SYNTHETIC])}")
    p.add_argument("--model", default="cvglow", choices=MODELS,
                   help="cvglow (constant-volume Glow, default: every prediction applies), glow (affine), "
                        "pixelcnn or vae")
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


def _get_model(args, model_name: str, preset, device):
    if args.checkpoint:
        model, payload = model_from_checkpoint(args.checkpoint)
        if tuple(model.config.shape) != data.dataset_info(args.in_dataset).shape:
            raise CheckpointError(f"{args.checkpoint} models {model.config.shape} images, not {args.in_dataset}'s")
        return model.to(device), args.checkpoint, payload
    name = f"{args.in_dataset}-{model_name}-{preset.name}-seed{args.seed}-{code_version()}"
    run_dir = args.runs_dir / "models" / name
    ckpt = run_dir / CHECKPOINT
    done = False
    if ckpt.exists():
        try:
            done = load_checkpoint(ckpt)["step"] >= preset.train.steps
        except CheckpointError as err:
            print(f"warning: {err}; retraining", file=sys.stderr)
            ckpt.unlink()
    if done:
        print(f"reusing trained model {ckpt}", file=sys.stderr)
    else:
        print(f"training {model_name} on {args.in_dataset} ({preset.train.steps} steps) into {run_dir}",
              file=sys.stderr)
        train(args.in_dataset, model_name, preset, run_dir, data_dir=args.data_dir, device=str(device),
              resume=ckpt.exists(), allow_nonstandard=args.allow_nonstandard_data,
              command=shlex.join(["python", "-m", "verify.compare", *sys.argv[1:]]))
    model, payload = model_from_checkpoint(ckpt)
    return model.to(device), ckpt, payload


def _limit(images: np.ndarray, n: int | None) -> np.ndarray:
    return images if n is None else images[:n]


NOT_A_FLOW = ("{model} has no differentiable log-density in x: the closed form needs a constant-volume flow "
              "and the second-order predictions need log p(x̃) with a gradient and Hessian ({why})")
WHY = {"pixelcnn": "a PixelCNN is a discrete model; its continuous relaxation is not used",
       "vae": "a VAE gives only bounds on log p (ELBO, IWAE), not log p itself"}


def _predict(model, in_train, in_test, out_test, stats_p, stats_q, budget, seed, model_name) -> dict:
    """Theory predictions for flows; for other families None with the reason."""
    if model_name not in FLOWS:
        note = NOT_A_FLOW.format(model=model_name, why=WHY[model_name])
        return {"prediction": {"closed_form": None, "exact_second_order": None, "averaged_curvature": None,
                               "note": note}, "x0": None, "quadratic_check": None, "graying": None, "closed": None}
    print(f"second-order predictions from {budget.hvp_samples} samples per dataset", file=sys.stderr)
    so = second_order(model, in_test, out_test, in_train.mean(0, dtype=np.float64),
                      n_samples=budget.hvp_samples, seed=seed, alphas=ALPHAS)
    cf = closed_form(model, stats_q, stats_p, ALPHAS) if model.constant_volume else None
    prediction = {"closed_form": cf and {k: cf[k] for k in ("gap_nats", "gap_bpd", "coefficient_per_channel",
                                                            "sum_var_diff_pixels")},
                  "exact_second_order": so["exact_second_order"], "averaged_curvature": so["averaged_curvature"]}
    if cf is None:
        prediction["note"] = "closed form: n/a for affine couplings (volume term not constant); use --model cvglow"
    return {"prediction": prediction, "x0": so["x0"], "quadratic_check": so["quadratic_check"],
            "graying": so["graying"], "closed": cf and cf["graying"]}


def compare_one(args, model_name: str, out_dir: Path) -> dict:
    """Train or load ``model_name``, measure, predict, write the report; returns results.json's content."""
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time()
    in_info = data.dataset_info(args.in_dataset)
    device = resolve_device(args.device)
    preset_name = args.preset if args.preset != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    preset = get_preset(preset_name, model_name, in_info.shape, seed=args.seed)
    budget = preset.budget
    print(f"preset {preset_name}: {model_name} {preset.model}, {preset.train.steps} training steps of "
          f"{preset.train.batch_size}; device {device_description(device)}", file=sys.stderr)

    load = dict(data_dir=args.data_dir, download=args.download, allow_nonstandard=args.allow_nonstandard_data)
    in_train, _ = data.load(args.in_dataset, "train", **load)
    in_test, _ = data.load(args.in_dataset, "test", **load)
    out_test = data.load_as(args.out_dataset, "test", in_info.shape, match=args.match, seed=args.seed,
                            synthetic_n=len(in_test), **load)
    model, ckpt, payload = _get_model(args, model_name, preset, device)
    model.eval()

    sets = {"in_train": _limit(in_train, budget.in_train), "in_test": _limit(in_test, budget.in_test),
            "out_test": _limit(out_test, budget.out_test)}
    totals = {"in_train": len(in_train), "in_test": len(in_test), "out_test": len(out_test)}
    print("evaluating " + ", ".join(f"{k} {len(v)} of {totals[k]} images" for k, v in sets.items()), file=sys.stderr)
    evals: dict[str, Evaluation] = {k: evaluate(model, v, seed=args.seed, device=device) for k, v in sets.items()}
    summary = {k: e.summary() for k, e in evals.items()}

    stats_p, stats_q = compute_stats(in_test), compute_stats(out_test)
    theory = _predict(model, in_train, sets["in_test"], sets["out_test"], stats_p, stats_q, budget, args.seed,
                      model_name)
    prediction = theory["prediction"]

    gray = in_test[: budget.gray_images]
    gray_ll = [float(evaluate(model, np.rint(a * gray.astype(np.float64) + (1 - a) * 128).astype(np.uint8),
                              seed=args.seed, device=device).log_px.mean()) for a in ALPHAS]
    measured_gray = [v - gray_ll[-1] for v in gray_ll]

    dims = preset.model.dims
    gap_nats = summary["out_test"]["log_px_nats"]["mean"] - summary["in_test"]["log_px_nats"]["mean"]
    gap_bpd = summary["in_test"]["bpd"]["mean"] - summary["out_test"]["bpd"]["mean"]
    gap_bpd_se = float(np.hypot(summary["in_test"]["bpd"]["stderr"], summary["out_test"]["bpd"]["stderr"]))
    predictions = {k: v for k, v in prediction.items() if k != "note"}
    agreement = {f"sign_{k}": (None if p is None else bool((p["gap_nats"] > 0) == (gap_nats > 0)))
                 for k, p in predictions.items()}
    ratios = {k: (None if p is None or gap_nats == 0 else p["gap_nats"] / gap_nats) for k, p in predictions.items()}
    labels = {"in_train": f"{data.display_name(args.in_dataset)}-train",
              "in_test": f"{data.display_name(args.in_dataset)}-test",
              "out_test": f"{data.display_name(args.out_dataset)}-test" + (" (matched)" if args.match else "")}

    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "per_image.npz", **{f"{k}_log_px_nats": e.log_px for k, e in evals.items()},
                        **{f"{k}_{p}_nats": v for k, e in evals.items() for p, v in e.parts.items()})
    fig_paths = [
        figures.loglik_histograms({k: discrete_log_likelihood(e.log_px, dims) for k, e in evals.items()}, labels,
                                  f"{model_name} trained on {data.display_name(args.in_dataset)}",
                                  out_dir / "loglik_hist.png"),
        figures.moment_histograms({"in_test": (stats_p.mean, stats_p.var), "out_test": (stats_q.mean, stats_q.var)},
                                  labels, out_dir / "moments.png"),
        figures.graying_curve(ALPHAS, measured_gray, {
            **({"exact second order": theory["graying"]} if theory["graying"] else {}),
            **({"closed form": theory["closed"]} if theory["closed"] else {})}, out_dir / "graying.png"),
    ]
    decomposition = None
    if model_name in FLOWS:
        fig_paths.append(figures.decomposition_histograms(
            {k: {"density": e.parts["density"], "volume": e.parts["volume"]} for k, e in evals.items()},
            labels, out_dir / "decomposition.png"))
        delta = {p: summary["out_test"][p]["mean"] - summary["in_test"][p]["mean"]
                 for p in ("density_nats", "volume_nats")}
        decomposition = {k: {p: summary[k][p]["mean"] for p in ("density_nats", "volume_nats")} for k in summary}
        decomposition |= {"delta": delta, "carried_by": "density" if abs(delta["density_nats"]) >=
                          abs(delta["volume_nats"]) else "volume"}
    results = {
        "in": args.in_dataset, "out": args.out_dataset, "model": model_name, "preset": preset_name, "dims": dims,
        "match": args.match, "plumbing": bool(args.allow_nonstandard_data),
        "device": device_description(device), "checkpoint": str(ckpt), "trained_steps": payload["step"],
        "n_images": {k: float(len(v)) for k, v in sets.items()},
        "bpd": {k: s["bpd"]["mean"] for k, s in summary.items()},
        "gap_bpd": gap_bpd, "gap_bpd_stderr": gap_bpd_se, "gap_nats": gap_nats,
        "decomposition": decomposition, "prediction": prediction, "agreement": agreement, "ratios": ratios,
        "x0": theory["x0"], "quadratic_check": theory["quadratic_check"],
        "mean_difference": mean_difference(stats_q, stats_p),
        "graying": {"alphas": ALPHAS, "n_images": len(gray), "measured": measured_gray,
                    "exact_second_order": theory["graying"], "closed_form": theory["closed"]},
        "summary": summary, "labels": labels, "figures": [str(p) for p in fig_paths], "out_dir": str(out_dir),
    }
    results["verdict"] = verdict(labels["in_test"], labels["out_test"], gap_bpd, gap_bpd_se,
                                 {k: (p["gap_bpd"] if p else None) for k, p in predictions.items()})
    results["provenance"] = {"command": shlex.join(["python", "-m", "verify.compare", *args.argv]),
                             "commit": git_commit(), "device": device_description(device),
                             "torch": torch.__version__, "started": started, "seconds": time.time() - t0}
    write_report(results, out_dir)
    print(terminal_summary(results))
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    data.dataset_info(args.in_dataset)
    if args.out_dataset not in data.SYNTHETIC:
        data.dataset_info(args.out_dataset)
    if args.all_models and args.checkpoint:
        raise DgmOodError("--all-models trains or reuses one model per family; it cannot take --checkpoint")
    preset_tag = args.preset if args.preset != "auto" else ("gpu" if resolve_device(args.device).type == "cuda"
                                                            else "cpu")
    stem = f"{args.in_dataset}-{args.out_dataset}" + ("-match" if args.match else "")
    if not args.all_models:
        compare_one(args, args.model, args.out or Path("runs/compare") / f"{stem}-{args.model}-{preset_tag}")
        return 0
    root = args.out or Path("runs/compare") / f"{stem}-families-{preset_tag}"
    flow = args.model if args.model in FLOWS else "cvglow"
    runs = {m: compare_one(args, m, root / m) for m in (flow, *FAMILY_MODELS)}
    write_families(runs, root)
    print(f"three families: {root}/families.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

