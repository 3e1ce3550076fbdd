"""Where the main job's time goes, stage by stage: ``python bench/profile_main_job.py [--training-from CKPT]``.

Runs the stages of ``python -m verify.compare fashionmnist mnist`` (CPU default) one after the other with the same
functions the command calls, timing each: opening the data, getting the model (the shipped weights; with
``--training-from CKPT`` also the training wall-clock its history records, to show the job when it trains from
scratch), the evaluation (three sets, the graying series, the held-out images, the moments), the theory
(Hessian at x0, ledger, Monte Carlo), the explanation of the gap, the detection scores, and writing the report
and figures. Prints a table
(stage, seconds, share) and, with ``--json``, writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from empirical.data import sources  # noqa: E402
from empirical.data.imageset import ShapeMap  # noqa: E402
from empirical.models.contract import describe  # noqa: E402
from empirical.training import shipped  # noqa: E402
from empirical.training.checkpoint import load_checkpoint  # noqa: E402
from empirical.training.loading import model_from_checkpoint  # noqa: E402
from empirical.training.presets import get_preset  # noqa: E402
from verify import api, detection, predictions  # noqa: E402
from verify.explain import explain_for  # noqa: E402


def profile(in_name: str, out_name: str, model_name: str, data_dir: str | None, training_from: Path | None,
            seed: int = 0, checkpoint: Path | None = None, allow_nonstandard: bool = False) -> list[dict]:
    """[{stage, seconds, measured}] for one run of the main job's stages."""
    rows: list[dict] = []
    clock = [time.perf_counter()]

    def stage(name: str, seconds: float | None = None) -> None:
        now = time.perf_counter()
        rows.append({"stage": name, "seconds": now - clock[0] if seconds is None else seconds,
                     "measured": seconds is None})
        clock[0] = time.perf_counter()

    options = sources.DataOptions(data_dir, allow_nonstandard=allow_nonstandard)
    in_train, in_test = sources.open_in(in_name, options)
    out_test = sources.open_out(out_name, in_train.shape, ShapeMap(), options, n_synthetic=len(in_test),
                                seed=seed)
    stage("open the data (decode or read the cache, SHA-256 of the files)")
    if checkpoint is not None:
        ckpt = model_from_checkpoint(checkpoint)
        preset = get_preset(ckpt.payload["preset"], ckpt.name, in_train.shape, seed=seed)
        stage(f"load {checkpoint}")
    else:
        preset = get_preset("cpu", model_name, in_train.shape, seed=seed)
        found = shipped.find(in_train, in_test, model_name, preset)
        if found is None:
            raise SystemExit(f"no shipped weights for {in_name} {model_name} cpu: name a --checkpoint")
        ckpt = found.load()
        stage("load the shipped weights (SHA-256 checked)")
    if training_from is not None:
        history = load_checkpoint(training_from)["history"]
        stage(f"training from scratch ({preset.train.steps} steps; the wall-clock its history records)",
              history[-1]["seconds"])
        clock[0] = time.perf_counter()
    model, info = ckpt.model.eval(), describe(ckpt.model, ckpt.name)
    budget = preset.budget
    sets = {"in_train": in_train.head(budget.in_train), "in_test": in_test.head(budget.in_test),
            "out_test": out_test.head(budget.out_test)}
    heldout = ckpt.heldout(in_train).head(budget.heldout)
    device = torch.device("cpu")
    m = api.measure(model, info, sets, heldout, budget, seed, device)
    stage(f"evaluation ({sum(len(s) for s in sets.values()) + len(heldout):,} images, {len(predictions.ALPHAS)} "
          f"graying levels of {m.gray_images}, moments)")
    th = predictions.theory_for(model, info, in_train.images.mean(0, dtype=np.float64), sets, m, budget, seed)
    stage(f"theory (exact Hessian at x0 from {info.dims} HVPs, ledger, Monte Carlo of {budget.hvp_samples})")
    ex = explain_for(model, sets, m, th["quadratic"], info.dims, seed=seed, device=device)
    stage("explaining the gap (interventions, contrast curve, complexity predictor)")
    det, scores = detection.detect_for(model, info, m, sets, heldout, None, [], seed, device)
    stage("detection scores (PNG and JPEG XL of every image, DoSE, bootstrap intervals)")
    results = api.results_of(model, info, ckpt, sets, {"in_train": in_train, "in_test": in_test,
                                                       "out_test": out_test}, heldout, m, th, det, device)
    results["explain"] = ex
    results["provenance"] = {"command": "bench/profile_main_job.py", "commit": "", "device": "", "torch": "",
                             "started": "", "seconds": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        api.Result(results, m, scores).write(Path(tmp) / "report")
    stage("report, JSON and figures")
    return rows


def table(rows: list[dict]) -> str:
    total = sum(r["seconds"] for r in rows)
    lines = ["| stage | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {r['stage']}{'' if r['measured'] else ' *'} | {r['seconds']:.1f} | {r['seconds'] / total:.1%} |"
              for r in rows]
    return "\n".join([*lines, f"| **total** | **{total:.1f}** | |"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--in", dest="in_name", default="fashionmnist")
    p.add_argument("--out", dest="out_name", default="mnist")
    p.add_argument("--model", default="cvglow")
    p.add_argument("--data-dir")
    p.add_argument("--checkpoint", type=Path, help="profile this model instead of the shipped weights")
    p.add_argument("--allow-nonstandard-data", action="store_true")
    p.add_argument("--training-from", type=Path, help="a finished cpu-preset checkpoint: add its training wall-clock")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = profile(args.in_name, args.out_name, args.model, args.data_dir, args.training_from,
                   checkpoint=args.checkpoint, allow_nonstandard=args.allow_nonstandard_data)
    print(f"main job stages, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(table(rows))
    if any(not r["measured"] for r in rows):
        print("* from the training run's own history, not timed here")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
