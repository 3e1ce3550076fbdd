"""Per-image log-likelihood and bits/dim, with the density/volume split:
``python -m empirical.evaluate --checkpoint runs/train/x/last.pt --dataset mnist``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from empirical import data
from empirical.checkpoint import model_from_checkpoint
from empirical.cli import run_cli
from empirical.flows import Glow
from empirical.likelihood import bits_per_dim, dequantize


@dataclass
class Evaluation:
    """Per-image results in nats (float64); log_px = density + volume is log p(x̃) on [0,1)^D."""

    density: np.ndarray
    volume: np.ndarray
    dims: int

    @property
    def log_px(self) -> np.ndarray:
        return self.density + self.volume

    @property
    def bpd(self) -> np.ndarray:
        return bits_per_dim(self.log_px, self.dims)

    def summary(self) -> dict:
        """Means and standard errors of bpd, log p(x̃), density and volume."""
        n = len(self.density)

        def stat(v: np.ndarray) -> dict:
            return {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0}

        return {"n": n, "bpd": stat(self.bpd), "log_px_nats": stat(self.log_px),
                "density_nats": stat(self.density), "volume_nats": stat(self.volume)}


@torch.no_grad()
def evaluate(model: Glow, images: np.ndarray | torch.Tensor, *, batch_size: int = 500, seed: int = 0,
             device: torch.device | str | None = None) -> Evaluation:
    """Evaluate uint8 images N×C×H×W with dequantisation noise from a fixed seed.

    The caller's array is never modified (each batch is copied to a new float tensor).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    images = torch.as_tensor(images)
    density, volume = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = dequantize(images[start: start + batch_size], gen).to(device)
            d, v = model.log_prob_parts(x)
            density.append(d.double().cpu())
            volume.append(v.double().cpu())
    finally:
        model.train(was_training)
    cat = (lambda parts: torch.cat(parts).numpy()) if density else (lambda parts: np.zeros(0))
    return Evaluation(cat(density), cat(volume), int(np.prod(images.shape[1:])))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m empirical.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dataset", required=True, help=f"{', '.join([*data.DATASETS, *data.SYNTHETIC])}")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--match", action="store_true", help="map the images to the model's shape explicitly")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="dequantisation noise seed")
    p.add_argument("--json", type=Path, help="write per-image results and the summary here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model, payload = model_from_checkpoint(args.checkpoint)
    model.to(args.device)
    images = data.load_as(args.dataset, args.split, model.config.shape, match=args.match,
                          data_dir=args.data_dir, seed=args.seed)
    if args.limit:
        images = images[: args.limit]
    result = evaluate(model, images, seed=args.seed, device=args.device)
    s = result.summary()
    print(f"{args.dataset} {args.split} under {payload['model']} trained on {payload['dataset']} "
          f"(step {payload['step']}): {s['n']} images, bpd {s['bpd']['mean']:.4f} ± {s['bpd']['stderr']:.4f}, "
          f"density {s['density_nats']['mean']:.1f} nats, volume {s['volume_nats']['mean']:.1f} nats")
    if args.json:
        args.json.write_text(json.dumps({"summary": s, "bpd": result.bpd.tolist(),
                                         "density_nats": result.density.tolist(),
                                         "volume_nats": result.volume.tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
