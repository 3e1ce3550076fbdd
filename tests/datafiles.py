"""Small dataset files in the official formats, written by the tests themselves."""

from __future__ import annotations

import gzip
import io
import lzma
import pickle
import tarfile
from pathlib import Path

import numpy as np
import scipy.io

COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".xz": lzma.compress}


def _write(path: Path, raw: bytes, suffix: str) -> Path:
    path = path.with_name(path.name + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(COMPRESS[suffix](raw))
    return path


def cifar_batch(images: np.ndarray, labels: np.ndarray, key: bytes = b"labels") -> bytes:
    return pickle.dumps({b"data": images.reshape(len(images), -1), key: labels.tolist(),
                         b"batch_label": b"test"})


def write_cifar10(root: Path, n: int = 20, suffix: str = "", seed: int = 0) -> dict:
    """data_batch_1..5 and test_batch under root/cifar-10/cifar-10-batches-py; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10" / "cifar-10-batches-py"
    out = {}
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        _write(folder / stem, cifar_batch(x, y), suffix)
        out[stem] = (x, y)
    return out


def write_cifar10_archive(root: Path, n: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out, buf = {}, io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x, y = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)
            raw = cifar_batch(x, y)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{stem}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            out[stem] = (x, y)
    root.mkdir(parents=True, exist_ok=True)
    (root / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    return out


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(root: Path, folder: str, n: int = 20, suffix: str = "", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        _write(root / folder / f"{prefix}-images-idx3-ubyte", idx_bytes(x, 2051), suffix)
        _write(root / folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(y, 2049), suffix)
        out[split] = (x, y)
    return out


def write_svhn(root: Path, n: int = 20, suffix: str = "", seed: int = 0) -> dict:
    """train_32x32.mat / test_32x32.mat: X is 32×32×3×N, y is N×1 with 10 meaning digit 0."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test"):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        buf = io.BytesIO()
        scipy.io.savemat(buf, {"X": x, "y": y})
        _write(root / "svhn" / f"{split}_32x32.mat", buf.getvalue(), suffix)
        out[split] = (x, y)
    return out
