"""Datasets in their official formats: registry, readers, root lookup, validation, caching.

Every loader returns a ``Split``: uint8 images N×C×H×W, int64 labels and the source files read (path, size,
SHA-256). Files may be plain, ``.gz`` or ``.xz``. The root is an explicit ``data_dir`` (``--data-dir``) alone,
else ``$DGM_OOD_DATA`` alone, else ``<repo>/data`` then ``<repo>/../shared/data``: an explicit root that
lacks the dataset is an error, never a silent fallback. CIFAR pickles go through a restricted unpickler
(numpy arrays and plain containers only); decoded arrays are cached under a hash of the source bytes and
verified on every load.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import lzma
import math
import os
import pickle
import secrets
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from empirical.atomic import atomic_write
from empirical.errors import DataError, DataNotFound

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPRESSIONS = ("", ".gz", ".xz")


@dataclass(frozen=True)
class Dataset:
    """What a dataset is: shape, official counts, where its files live under a root."""

    name: str
    shape: tuple[int, int, int]
    counts: dict[str, int]
    folders: tuple[str, ...]  # candidate sub-folders of a root (our mirror's, then torchvision's)
    files: dict[str, tuple[str, ...]]  # split -> official file names (without compression suffix)
    reader: str
    display: str
    mirror_symmetric: bool = False  # natural photographs: a left–right mirror image is as likely (flip augmentation)


_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset("cifar10", (3, 32, 32), {"train": 50_000, "test": 10_000},
                       ("cifar-10/cifar-10-batches-py", "cifar-10-batches-py"),
                       {"train": _CIFAR10_TRAIN, "test": ("test_batch",)}, "cifar", "CIFAR-10", True),
    "cifar100": Dataset("cifar100", (3, 32, 32), {"train": 50_000, "test": 10_000},
                        ("cifar-100/cifar-100-python", "cifar-100-python"),
                        {"train": ("train",), "test": ("test",)}, "cifar", "CIFAR-100", True),
    "svhn": Dataset("svhn", (3, 32, 32), {"train": 73_257, "test": 26_032},
                    ("svhn", "SVHN", ""),
                    {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)}, "svhn", "SVHN"),
    "mnist": Dataset("mnist", (1, 28, 28), {"train": 60_000, "test": 10_000},
                     ("mnist", "MNIST/raw"),
                     {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                      "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}, "idx", "MNIST"),
    "fashionmnist": Dataset("fashionmnist", (1, 28, 28), {"train": 60_000, "test": 10_000},
                            ("fashion-mnist", "FashionMNIST/raw"),
                            {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")},
                            "idx", "FashionMNIST"),
}
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CACHE_FORMAT = b"dgm-ood decoded arrays v3"  # part of every cache key: bump when a reader's output changes


@dataclass(frozen=True)
class SourceFile:
    """One file a split was read from, as it was on disk."""

    path: str
    bytes: int
    sha256: str
    count: int | None = None  # a folder read as one source: how many files its one digest covers

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Split(NamedTuple):
    """A loaded split: images N×C×H×W uint8, labels int64, and the files it came from."""

    images: np.ndarray
    labels: np.ndarray
    files: tuple[SourceFile, ...]


def dataset_info(name: str) -> Dataset:
    """The registry entry for ``name``, or a DataError that lists the known names."""
    if name not in DATASETS:
        known = ", ".join(DATASETS)
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}, the synthetic OUT sets constant and "
                        f"noise, or a path (an .npy/.npz array or a folder of images)")
    return DATASETS[name]


# --------------------------------------------------------------------------------------- roots
def candidate_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The roots to search: an explicit ``data_dir`` alone, else $DGM_OOD_DATA alone, else <repo>/data and
    <repo>/../shared/data. What a user names must hold the data: it is never silently passed over."""
    if data_dir is not None:
        return [Path(data_dir)]
    if os.environ.get("DGM_OOD_DATA"):
        return [Path(os.environ["DGM_OOD_DATA"])]
    return [REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]


def _root_origin(data_dir: str | os.PathLike | None) -> str:
    if data_dir is not None:
        return f"the data directory given (--data-dir {data_dir})"
    if os.environ.get("DGM_OOD_DATA"):
        return f"$DGM_OOD_DATA={os.environ['DGM_OOD_DATA']}"
    return ""


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in COMPRESSIONS:
        path = folder / (stem + suffix)
        if path.is_file():
            return path
    return None


def locate(name: str, split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Paths of the official files of ``name``/``split`` under the first root that has them all."""
    info = dataset_info(name)
    if split not in info.counts:
        raise DataError(f"unknown split {split!r} for {name}; splits: {', '.join(info.counts)}")
    searched = []
    for root in candidate_roots(data_dir):
        for sub in info.folders:
            folder = root / sub if sub else root
            searched.append(folder)
            found = [_find(folder, stem) for stem in info.files[split]]
            if all(found):
                return found  # type: ignore[return-value]
            if name == "cifar10" and (archive := _find(folder.parent, CIFAR10_ARCHIVE)):
                return [archive]
        if name == "cifar10" and (archive := root / CIFAR10_ARCHIVE).is_file():
            return [archive]
    wanted = ", ".join(info.files[split])
    hint = "; or pass --download (download=True) on a machine with a network"
    if name == "svhn":
        hint = (f"; SVHN is not in the offline mirror: put the official {info.files[split][0]} "
                f"(from http://ufldl.stanford.edu/housenumbers/) in <data-dir>/svhn/, or pass "
                f"--download (download=True) on a machine with a network")
    where = ", ".join(str(p) for p in dict.fromkeys(searched))
    origin = _root_origin(data_dir)
    if origin:
        root = candidate_roots(data_dir)[0]
        state = "does not exist" if not root.exists() else "is not a folder" if not root.is_dir() else \
            "does not hold it"
        hint = f"; {origin} {state}, and it is used alone (no fallback to other roots)" + hint
    raise DataNotFound(f"{info.display} {split} split not found: need {wanted} (plain, .gz or .xz) in one of: "
                    f"{where}{hint}")


# ------------------------------------------------------------------------------------ readers
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
    stems = DATASETS["cifar10"].files[split]
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


READERS: dict[str, Callable[[list[Path], str], tuple[np.ndarray, np.ndarray]]] = {
    "cifar": read_cifar, "idx": read_idx, "svhn": read_svhn,
}


# -------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Where decoded arrays are cached: $DGM_OOD_CACHE or ~/.cache/dgm-ood."""
    return Path(os.environ.get("DGM_OOD_CACHE", Path.home() / ".cache" / "dgm-ood"))


def cache_key_file() -> Path:
    """This user's secret that seals cache entries: $DGM_OOD_KEY_FILE or $XDG_CONFIG_HOME/dgm-ood/cache-key (outside
    the cache folder, so write access to the cache alone cannot forge an entry)."""
    if os.environ.get("DGM_OOD_KEY_FILE"):
        return Path(os.environ["DGM_OOD_KEY_FILE"])
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "dgm-ood" / "cache-key"


def _cache_key() -> bytes | None:
    """The sealing key (32 random bytes, mode 0600, made on first use), or None when it cannot be had (no cache)."""
    path = cache_key_file()
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        return path.read_bytes()
    except OSError:  # another process made it first, or the folder is read-only
        try:
            key = path.read_bytes()
            return key if len(key) >= 32 else None
        except OSError:
            return None


def _seal(key: bytes, source_digest: str, arrays_digest: str) -> str:
    """HMAC-SHA256 of (source digest, arrays digest) under this user's key."""
    return hmac.new(key, f"{source_digest}:{arrays_digest}".encode(), hashlib.sha256).hexdigest()


def file_record(path: Path) -> SourceFile:
    """A file as it is on disk: resolved path, size and SHA-256 (streamed)."""
    h, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                size += len(chunk)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    return SourceFile(str(Path(path).resolve()), size, h.hexdigest())


def _hash_sources(paths: list[Path]) -> tuple[str, tuple[SourceFile, ...]]:
    """Every source file's record and one digest over them all, the cache key."""
    overall = hashlib.sha256(CACHE_FORMAT)
    files = tuple(file_record(path) for path in paths)
    for path, record in zip(paths, files, strict=True):
        overall.update(path.name.encode() + b"\0" + bytes.fromhex(record.sha256))
    return overall.hexdigest(), files


def _arrays_digest(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(str((images.dtype, images.shape, labels.dtype, labels.shape)).encode())
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels).data)
    return h.hexdigest()


def _read_cache(path: Path, source_digest: str, key: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays if the entry is intact, belongs to these source bytes and carries this user's seal, else
    None (rebuild): an entry rewritten without the key, digests and all, is rebuilt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            recorded_source, seal = str(z["source_sha256"]), str(z["seal"])
    except Exception as err:  # a damaged .npz raises many types
        print(f"warning: unreadable cache entry {path} ({type(err).__name__}); rebuilding it", file=sys.stderr)
        return None
    if recorded_source != source_digest or not hmac.compare_digest(
            seal, _seal(key, source_digest, _arrays_digest(images, labels))):
        print(f"warning: cache entry {path} does not match its source files; rebuilding it", file=sys.stderr)
        return None
    return images, labels


def _save_cache(path: Path, source_digest: str, images: np.ndarray, labels: np.ndarray, key: bytes) -> None:
    arrays = dict(images=images, labels=labels, source_sha256=np.array(source_digest),
                  seal=np.array(_seal(key, source_digest, _arrays_digest(images, labels))))
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError:
        pass  # a read-only cache only costs speed


# --------------------------------------------------------------------------------------- load
def load(name: str, split: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
         allow_nonstandard: bool = False, use_cache: bool = True) -> Split:
    """uint8 images N×C×H×W, int64 labels and the files read, of an official split, validated.

    ``allow_nonstandard`` accepts well-formed files whose image count differs from the official one
    (tests' small files; runs on them are plumbing, not results). The decoded arrays are cached under the
    SHA-256 of the source bytes; an entry that fails its checksum or validation is rebuilt from the source.
    """
    info = dataset_info(name)
    try:
        paths = locate(name, split, data_dir)
    except DataError:
        if not download:
            raise
        _download(name, split, data_dir)
        paths = locate(name, split, data_dir)
    digest, files = _hash_sources(paths)
    cached = cache_dir() / f"{name}-{split}-{digest[:24]}.npz"
    key = _cache_key() if use_cache else None
    if key is not None and (arrays := _read_cache(cached, digest, key)) is not None:
        try:
            return Split(*_validate(info, split, *arrays, paths, allow_nonstandard), files)
        except DataError as err:
            print(f"warning: cache entry {cached} failed validation ({err}); rebuilding it", file=sys.stderr)
    images, labels = READERS[info.reader](paths, split)
    images, labels = _validate(info, split, images, labels, paths, allow_nonstandard)
    if key is not None:
        _save_cache(cached, digest, images, labels, key)
    return Split(images, labels, files)


def _validate(info: Dataset, split: str, images: np.ndarray, labels: np.ndarray, paths: list[Path],
              allow_nonstandard: bool) -> tuple[np.ndarray, np.ndarray]:
    files = ", ".join(str(p) for p in paths)
    if images.dtype != np.uint8 or images.shape[1:] != info.shape:
        raise DataError(f"{info.display} {split} from {files}: expected uint8 images N×"
                        f"{'×'.join(map(str, info.shape))}, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{info.display} {split} from {files}: {images.shape[0]} images but "
                        f"{labels.shape[0]} labels")
    n_classes = 100 if info.name == "cifar100" else 10
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{info.display} {split} from {files}: labels outside 0..{n_classes - 1}")
    expected = info.counts[split]
    if images.shape[0] != expected and not allow_nonstandard:
        raise DataError(f"{info.display} {split} from {files}: {images.shape[0]} images, the official "
                        f"split has {expected} (truncated file? pass allow_nonstandard / "
                        f"--allow-nonstandard-data for small test files)")
    return images, labels


def _download(name: str, split: str, data_dir: str | os.PathLike | None) -> None:
    """Fetch the official files with torchvision's downloaders into the first writable root."""
    import torchvision.datasets as tvd

    root = Path(data_dir) if data_dir else candidate_roots()[0]  # $DGM_OOD_DATA if set, else <repo>/data
    root.mkdir(parents=True, exist_ok=True)
    train = split == "train"
    try:
        if name == "cifar10":
            tvd.CIFAR10(str(root), train=train, download=True)
        elif name == "cifar100":
            tvd.CIFAR100(str(root), train=train, download=True)
        elif name == "svhn":
            tvd.SVHN(str(root / "svhn"), split=split, download=True)
        elif name == "mnist":
            tvd.MNIST(str(root), train=train, download=True)
        elif name == "fashionmnist":
            tvd.FashionMNIST(str(root), train=train, download=True)
    except Exception as err:  # network errors come in many types
        raise DataError(f"could not download {name} {split} into {root}: {err}") from err
