"""Per-image log-likelihood and bits/dim, with the density/volume split:
``python -m empirical.evaluate --checkpoint runs/train/x/last.pt --dataset mnist``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from empirical.cli import (
    SOURCE_HELP,
    add_data_arguments,
    add_shape_arguments,
    check_limit,
    check_seed,
    data_options,
    run_cli,
    shape_map,
    writable_file,
)
from empirical.data import sources
from empirical.data.imageset import ImageSet, map_to
from empirical.io import distributed
from empirical.io.atomic import write_json
from empirical.models.evaluation import evaluate, part_key, require_splits, split_prior_stats
from empirical.training.loading import model_from_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m empirical.evaluate", description=__doc__.splitlines()[0],
                                epilog=SOURCE_HELP)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dataset", required=True, metavar="SOURCE", help="what to evaluate: a registry name, constant, "
                                                                      "noise, or a path (see below)")
    p.add_argument("--split", default="test", choices=["train", "test"],
                   help="which part of a two-part source (registry datasets; a one-part path is read whole)")
    add_shape_arguments(p)
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    add_data_arguments(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="dequantisation noise seed")
    p.add_argument("--json", type=Path, help="write per-image results and the summary here")
    p.add_argument("--split-priors", action="store_true",
                   help="flows: also print each split prior's smallest log σ and largest squared standardised "
                        "residual per image (what makes an extreme log p(z_i | z_keep))")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_limit(args.limit)
    check_seed(args.seed)
    sources.check_name(args.dataset)
    if args.json:
        writable_file(args.json, "--json")
    device = distributed.init_from_env(args.device)  # under torchrun the images are shared out over the ranks
    try:
        return _evaluate_checkpoint(args, device)
    finally:
        distributed.shutdown()


def _open(args: argparse.Namespace, shape: tuple[int, int, int]) -> ImageSet:
    """The images to evaluate: a registry split (or a two-part source's part), else the source as OUT reads it."""
    if args.split == "train" or (not sources.is_path(args.dataset) and args.dataset not in sources.SYNTHETIC_NAMES):
        part = sources.open_in(args.dataset, data_options(args))[args.split == "test"]
        return map_to(part, shape, shape_map(args))
    return sources.open_out(args.dataset, shape, shape_map(args), data_options(args), seed=args.seed)


def _evaluate_checkpoint(args: argparse.Namespace, device: torch.device) -> int:
    model, payload, _ = model_from_checkpoint(args.checkpoint)
    model.to(device)
    if args.split_priors:
        require_splits(model)
    images = _open(args, model.config.shape).head(args.limit)
    result = evaluate(model, images.images, seed=args.seed, device=device, label=f"{images.name} images")
    if not distributed.world().main:
        return 0
    s = result.summary()
    parts = "".join(f", {k.removesuffix('_nats')} {s[k]['mean']:.1f} nats" for k in s if k.endswith("_nats")
                    and k != "log_px_nats")
    plumbing = " (PLUMBING: non-standard data, not a result)" if images.nonstandard else ""
    print(f"{images.name} under {payload['model']} trained on {payload['dataset']} (step {payload['step']}): "
          f"{s['n']} images, bpd {s['bpd']['mean']:.4f} ± {s['bpd']['stderr']:.4f}{parts}{plumbing}")
    stats = split_prior_stats(model, images.images, seed=args.seed) if args.split_priors else {}
    for name in sorted({k.split("_")[0] for k in stats}):
        log_std, residual = stats[f"{name}_min_log_std"], stats[f"{name}_max_residual_sq"]
        print(f"  {name} prior, per image: smallest log σ median {np.median(log_std):.2f} (lowest "
              f"{log_std.min():.2f}); largest ((z−μ)/σ)² median {np.median(residual):.3g} "
              f"(highest {residual.max():.3g})")
    if args.json:
        per_image = {"bpd": result.bpd.tolist(), "log_px_nats": result.log_px.tolist(),
                     **{part_key(k): v.tolist() for k, v in result.parts.items()},
                     **{k: v.tolist() for k, v in stats.items()}}
        write_json(args.json, {"summary": s, "data": images.provenance(), "plumbing": images.nonstandard,
                               **per_image})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
