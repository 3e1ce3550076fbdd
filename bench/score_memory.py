"""Peak resident memory of the gradient score against how many images it sees: ``python bench/score_memory.py``.

Runs ``empirical.ood.model_scores.gradient_norms`` (per-example gradients of log p, Bergamin et al. 2022) in a fresh
process for N and 4N random uint8 images on a preset's Glow (untrained: memory and speed do not depend on the
weights) and prints each run's peak resident memory, images/s, and the growth of the peak per extra image. Only the
output (one float per image and parameter tensor) should grow with N: a few KB per image, where a fragmented heap
once grew by about 1.1 MiB per CIFAR-10 image (17.7 GB for `verify.detect cifar10 mnist --scores model`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from empirical.data.registry import DATASETS  # noqa: E402
from empirical.models.flows import Glow  # noqa: E402
from empirical.ood.model_scores import gradient_norms  # noqa: E402
from empirical.training.presets import get_preset  # noqa: E402


def measure(preset: str, dataset: str, n: int, batch: int) -> dict:
    """One run in this process: peak resident memory (MiB) and images/s of gradient_norms on n images."""
    model = Glow(get_preset(preset, "cvglow", DATASETS[dataset].shape).model)
    images = np.random.default_rng(0).integers(0, 256, (n, *DATASETS[dataset].shape), dtype=np.uint8)
    t0 = time.perf_counter()
    gradient_norms(model, images, batch_size=batch)
    seconds = time.perf_counter() - t0
    return {"images": n, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "img_s": n / seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    p.add_argument("--images", type=int, default=512, help="N: the runs see N and 4N images")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", type=Path)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single run, in the child process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.preset, args.dataset, args.one, args.batch)))
        return 0
    rows = []
    for n in (args.images, 4 * args.images):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--dataset", args.dataset, "--batch",
               str(args.batch), "--one", str(n)]
        child = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)  # its stderr passes through
        rows.append(json.loads(child.stdout))
    growth_kib = (rows[1]["peak_mib"] - rows[0]["peak_mib"]) * 1024 / (rows[1]["images"] - rows[0]["images"])
    print(f"gradient score, {args.dataset} cvglow/{args.preset}, batch {args.batch}, torch {torch.__version__}")
    print("| images | peak resident MiB | images/s |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']} | {r['peak_mib']:.0f} | {r['img_s']:.1f} |")
    print(f"peak growth per extra image: {growth_kib:.1f} KiB")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "growth_kib_per_image": growth_kib}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
