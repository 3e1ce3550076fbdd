"""Readers of the datasets' official file formats (idx, CIFAR pickles and archive, SVHN .mat): bytes in, uint8
images and int64 labels out; CIFAR pickles go through a restricted unpickler (numpy arrays and plain containers
only)."""

from __future__ import annotations

import gzip
import io
import lzma
import math
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from empirical.io.errors import DataError

# ------------------------------------------------------------------------------------ readers
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
MAX_FILE_BYTES = 256 * 2**20  # more than any official file holds decompressed (SVHN train_32x32.mat: about 230 MB)


def read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's content, decompressed transparently by suffix (.gz, .xz); more than ``limit`` bytes (a
    decompression bomb, or not the file it claims to be) is a DataError, found after reading ``limit`` + 1 bytes."""
    opener = gzip.open if path.suffix == ".gz" else lzma.open if path.suffix == ".xz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(limit + 1)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:
        raise DataError(f"corrupt or truncated file {path}: {err}") from err
    if len(raw) > limit:
        raise DataError(f"{path} holds more than {limit:,} bytes (decompressed), more than the official file can: "
                        f"a damaged or malicious file")
    return raw


# What the official CIFAR python files (and numpy's own pickles of uint8 arrays) need, and nothing else.
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                   ("numpy", "ndarray"), ("numpy", "dtype")}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, bytes and numbers only: a file naming any other global (a function
    to call, such as os.system) is refused before anything runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"{module}.{name}")


def _unpickle(raw: bytes, source: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as err:
        raise DataError(f"refused to unpickle {source}: it names {err}, which no CIFAR file contains "
                        f"(only numpy arrays and plain containers are loaded)") from err
    except Exception as err:  # pickle raises many types on corrupt input
        raise DataError(f"corrupt CIFAR pickle {source}: {err}") from err
    if not isinstance(obj, dict) or b"data" not in obj:
        raise DataError(f"{source} is not a CIFAR python batch (no b'data' key)")
    return obj


def _cifar_labels(labels: object, source: str) -> np.ndarray:
    if isinstance(labels, np.ndarray) and np.issubdtype(labels.dtype, np.integer) and labels.ndim == 1:
        return labels.astype(np.int64)
    if isinstance(labels, list) and all(type(v) is int for v in labels):
        return np.asarray(labels, dtype=np.int64)
    raise DataError(f"{source}: labels must be a list of ints, got {type(labels).__name__}"
                    + (f" of {type(labels[0]).__name__}" if isinstance(labels, list) and labels else ""))


def _cifar_arrays(batch: dict, source: str) -> tuple[np.ndarray, np.ndarray]:
    data = batch[b"data"]
    if not isinstance(data, np.ndarray):
        raise DataError(f"{source}: b'data' is a {type(data).__name__}, expected a uint8 numpy array")
    if data.dtype != np.uint8:
        raise DataError(f"{source}: pixel data are {data.dtype}, expected uint8 (0..255); refusing to convert "
                        f"(a cast would wrap or truncate values)")
    labels = batch.get(b"labels", batch.get(b"fine_labels"))
    if labels is None:
        raise DataError(f"{source} has neither b'labels' nor b'fine_labels'")
    labels = _cifar_labels(labels, source)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{source}: expected data N×3072 with N labels, got data {data.shape} "
                        f"and {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(paths: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10/100 python batches (R, G, B planes of 32×32, row-major) or the official tar.gz."""
    if len(paths) == 1 and paths[0].name.startswith(CIFAR10_ARCHIVE):
        return _read_cifar_archive(paths[0], split)
    parts = [_cifar_arrays(_unpickle(read_bytes(p), str(p)), str(p)) for p in paths]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def _read_cifar_archive(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    stems = CIFAR10_FILES[split]
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [s for s in stems if s not in members]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)}")
            parts = []
            for stem in stems:
                if members[stem].size > MAX_FILE_BYTES:
                    raise DataError(f"{path}:{stem} claims {members[stem].size:,} bytes, more than the official file")
                raw = tar.extractfile(members[stem]).read()  # type: ignore[union-attr]
                parts.append(_cifar_arrays(_unpickle(raw, f"{path}:{stem}"), f"{path}:{stem}"))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"corrupt or truncated archive {path}: {err}") from err
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


IDX_MAX_ITEMS = 60_000  # the largest official idx split (MNIST and FashionMNIST train)


IDX_ITEM = {2051: (28, 28), 2049: ()}  # magic → the shape of one item: images 28×28, labels scalars


def _idx_limit(magic: int) -> int:
    """The most bytes an official idx file with this magic can hold: its header and IDX_MAX_ITEMS items."""
    return 4 + 4 * (1 + len(IDX_ITEM[magic])) + IDX_MAX_ITEMS * math.prod(IDX_ITEM[magic])


def _parse_idx(raw: bytes, source: str, magic: int) -> np.ndarray:
    if len(raw) < 8:
        raise DataError(f"{source} is too short to be an idx file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{source}: idx magic number {found}, expected {magic}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(dims) != 1 + len(IDX_ITEM[magic]) or tuple(dims[1:]) != IDX_ITEM[magic] or dims[0] > IDX_MAX_ITEMS:
        raise DataError(f"{source}: header says {dims}; an official file holds at most {IDX_MAX_ITEMS} items of "
                        f"{'×'.join(map(str, IDX_ITEM[magic])) or 'one byte'}")
    offset = 4 + 4 * ndim
    expected = math.prod(dims)  # Python integers: no overflow
    if len(raw) - offset != expected:
        raise DataError(f"{source}: header says {dims} ({expected} bytes of data) but the file has "
                        f"{len(raw) - offset}: truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def read_idx(paths: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style idx pair: images (magic 2051, N×28×28) and labels (magic 2049, N)."""
    images = _parse_idx(read_bytes(paths[0], _idx_limit(2051)), str(paths[0]), 2051)
    labels = _parse_idx(read_bytes(paths[1], _idx_limit(2049)), str(paths[1]), 2049).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{paths[0]} holds {images.shape} images but {paths[1]} {labels.shape[0]} labels")
    return images[:, None].copy(), labels


def read_svhn(paths: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits .mat: X is 32×32×3×N uint8, y is N×1 with 10 meaning digit 0."""
    import scipy.io

    path = paths[0]
    try:
        mat = scipy.io.loadmat(io.BytesIO(read_bytes(path)))
    except DataError:
        raise
    except Exception as err:  # scipy raises several types on corrupt input
        raise DataError(f"corrupt SVHN file {path}: {err}") from err
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the 'X' and 'y' arrays of the official SVHN layout")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DataError(f"{path}: expected X 32×32×3×N and y N×1, got X {x.shape}, y {y.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: pixel data are {x.dtype}, expected uint8 (0..255); refusing to convert")
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def check_npy_size(f, available: int, where: str) -> None:
    """An .npy header must not declare more bytes than the file holds: a forged header would otherwise allocate
    whatever it claims before the read fails (a MemoryError instead of a clear error)."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > available:
        raise DataError(f"{where} declares a {'×'.join(map(str, shape)) or 'scalar'} {dtype} array ({declared:,} "
                        f"bytes) but holds {available:,} bytes: a damaged or forged header")

