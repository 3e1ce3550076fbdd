"""The one trainer: ``python -m empirical.train --dataset cifar10 --model glow --preset cpu``, or data-parallel
``torchrun --nproc_per_node=N -m empirical.train ...`` (see empirical.io.distributed).

Minimises bits/dim of dequantised images with Adam/Adamax, linear warm-up and gradient clipping.
The uint8 training set lives on the training device and batches are drawn from a generator seeded
by (seed, step), so a resumed run sees exactly the batches and noise it would have seen, whatever the
number of ranks before and after.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from empirical.cli import SOURCE_HELP, add_data_arguments, check_seed, data_options, run_cli, writable_dir
from empirical.data import sources
from empirical.io import distributed
from empirical.io.errors import TrainingError
from empirical.models.registry import MODELS
from empirical.training.presets import PRESETS, get_preset
from empirical.training.trainer import train


def arch_override(text: str) -> tuple[str, int | float | bool | str]:
    """``FIELD=VALUE`` → (field, value), the value read as an int, a float, a bool or else a string."""
    field, sep, raw = text.partition("=")
    if not sep or not field or not raw:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE (e.g. hidden=128), got {text!r}")
    for parse in (int, float):
        try:
            return field, parse(raw)
        except ValueError:
            pass
    return field, {"true": True, "false": False}.get(raw.lower(), raw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m empirical.train", description=__doc__.splitlines()[0],
                                epilog=SOURCE_HELP)
    p.add_argument("--dataset", required=True, metavar="SOURCE",
                   help="what to train on: a registry name or a path (see below); its train part is trained on")
    p.add_argument("--model", default="glow", choices=MODELS)
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--out", type=Path, help="checkpoint folder (default runs/train/DATASET-MODEL-PRESET)")
    add_data_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="override the preset's learning rate (may change on --resume)")
    p.add_argument("--warmup", type=int, help="override the preset's warm-up steps (may change on --resume)")
    p.add_argument("--eval-every", type=int, metavar="STEPS",
                   help="override the preset's interval between test evaluations (the time-to-bits/dim curve's "
                        "points; may change on --resume)")
    p.add_argument("--decay", choices=["none", "cosine"], help="learning-rate decay after the warm-up")
    p.add_argument("--seed", type=int)
    p.add_argument("--arch", type=arch_override, action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the preset's architecture, e.g. --arch hidden=128 --arch steps=8")
    p.add_argument("--split-prior", choices=["learned", "fixed"],
                   help="flows: 'fixed' makes every split latent N(0, σ_ψ²), the paper's model class")
    p.add_argument("--train-subset", type=int, help="use only the first N training images")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile on CUDA")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips of training images on mirror-symmetric datasets (CIFAR-10/100; "
                        "default: on in the gpu preset)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after this many minutes with an evaluation and a checkpoint (--resume continues)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sources.check_name(args.dataset)
    if args.seed is not None:  # None: the preset's seed
        check_seed(args.seed)
    if args.train_subset is not None and args.train_subset < 1:
        raise TrainingError(f"--train-subset must be ≥ 1, got {args.train_subset}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise TrainingError(f"--time-limit must be > 0 minutes, got {args.time_limit:g}")
    out = args.out or Path("runs/train") / f"{sources.slug(args.dataset)}-{args.model}-{args.preset}"
    device = distributed.init_from_env(args.device)  # joins torchrun's group, if any
    main_rank = distributed.world().main
    try:
        train_set, test_set = sources.open_in(args.dataset, data_options(args))  # read and checked before any write
        preset = get_preset(args.preset, args.model, train_set.shape, split_prior=args.split_prior,
                            arch=dict(args.arch), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            warmup=args.warmup, seed=args.seed, compile=args.compile, hflip=args.hflip,
                            decay=args.decay, eval_every=args.eval_every)
        writable_dir(out, "--out")
        result = train(train_set, test_set, args.model, preset, out, device=str(device), resume=args.resume,
                       train_subset=args.train_subset, progress=not args.no_progress,
                       time_limit=None if args.time_limit is None else 60 * args.time_limit,
                       command=shlex.join(["python", "-m", "empirical.train",
                                           *(sys.argv[1:] if argv is None else argv)]))
    finally:
        distributed.shutdown()
    if not main_rank:
        return 0
    bpd = "n/a" if result.test_bpd is None or math.isnan(result.test_bpd) else f"{result.test_bpd:.3f}"
    print(f"{train_set.source} {args.model}/{args.preset}: step {result.step}, test bpd {bpd} "
          f"({min(preset.train.eval_images, len(test_set))} test images), "
          f"{result.seconds:.0f} s; checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
