"""A colour training set other than CIFAR-10, for the shift sweep's rank agreement across training sets, where the
data mirror holds only CIFAR-100's test split: its 10,000 images, the first 8,000 as ``train`` and the last 2,000 as
``test``, in one ``.npz`` (a source like any other, written here, never committed).

    python -m examples.cifar100_split runs/cifar100-test-split.npz
    python -m verify.shifts cifar10 --other-set runs/cifar100-test-split.npz    # trains that set's CV-Glow once
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from empirical.cli import add_data_arguments, data_options, run_cli
from empirical.data import registry

TRAIN = 8000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.cifar100_split", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the .npz to write")
    add_data_arguments(p)
    args = p.parse_args(argv)
    options = data_options(args)
    images = registry.load("cifar100", "test", options.data_dir, allow_nonstandard=options.allow_nonstandard).images
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, train=images[:TRAIN], test=images[TRAIN:])
    print(f"{args.out}: train {images[:TRAIN].shape}, test {images[TRAIN:].shape} (CIFAR-100 test split)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
