"""Datasets in their official formats: registry, readers, root lookup, validation, caching.

Every loader returns a ``Split``: uint8 images N×C×H×W, int64 labels and the source files read (path, size,
SHA-256). Files may be plain, ``.gz`` or ``.xz``. The root is an explicit ``data_dir`` (``--data-dir``) alone,
else ``$DGM_OOD_DATA`` alone, else ``<repo>/data`` then ``<repo>/../shared/data``: an explicit root that
lacks the dataset is an error, never a silent fallback. CIFAR pickles go through a restricted unpickler
(numpy arrays and plain containers only); decoded arrays are cached under a hash of the source bytes and
verified on every load.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from empirical.data.formats import CIFAR10_ARCHIVE, CIFAR10_FILES, read_cifar, read_idx, read_svhn
from empirical.io.atomic import atomic_write
from empirical.io.errors import DataError, DataNotFound, arg
from empirical.io.provenance import SourceFile, file_record

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


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




DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset("cifar10", (3, 32, 32), {"train": 50_000, "test": 10_000},
                       ("cifar-10/cifar-10-batches-py", "cifar-10-batches-py"),
                       CIFAR10_FILES, "cifar", "CIFAR-10", True),
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




CACHE_FORMAT = b"dgm-ood decoded arrays v3"  # part of every cache key: bump when a reader's output changes


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
        return f"the data directory given ({arg('data_dir=', '--data-dir ')}{data_dir})"
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
                f"{arg('download=True', '--download')} on a machine with a network")
    where = ", ".join(str(p) for p in dict.fromkeys(searched))
    origin = _root_origin(data_dir)
    if origin:
        root = candidate_roots(data_dir)[0]
        state = "does not exist" if not root.exists() else "is not a folder" if not root.is_dir() else \
            "does not hold it"
        hint = f"; {origin} {state}, and it is used alone (no fallback to other roots)" + hint
    raise DataNotFound(f"{info.display} {split} split not found: need {wanted} (plain, .gz or .xz) in one of: "
                    f"{where}{hint}")


READERS: dict[str, Callable[[list[Path], str], tuple[np.ndarray, np.ndarray]]] = {
    "cifar": read_cifar, "idx": read_idx, "svhn": read_svhn,
}


# -------------------------------------------------------------------------------------- cache
def _home() -> Path | None:
    """The user's home folder, or None where it cannot be found ($HOME unset and no passwd entry)."""
    try:
        return Path.home()
    except (RuntimeError, KeyError):
        return None


def cache_dir() -> Path | None:
    """Where decoded arrays are cached: $DGM_OOD_CACHE, else ~/.cache/dgm-ood, else None (no home: no cache)."""
    if os.environ.get("DGM_OOD_CACHE"):
        return Path(os.environ["DGM_OOD_CACHE"])
    home = _home()
    return None if home is None else home / ".cache" / "dgm-ood"


def cache_key_file() -> Path | None:
    """This user's secret that seals cache entries: $DGM_OOD_KEY_FILE or $XDG_CONFIG_HOME/dgm-ood/cache-key (outside
    the cache folder, so write access to the cache alone cannot forge an entry); None without a home to put it in."""
    if os.environ.get("DGM_OOD_KEY_FILE"):
        return Path(os.environ["DGM_OOD_KEY_FILE"])
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]) / "dgm-ood" / "cache-key"
    home = _home()
    return None if home is None else home / ".config" / "dgm-ood" / "cache-key"


def _cache_key() -> bytes | None:
    """The sealing key (32 random bytes, mode 0600, made on first use), or None when it cannot be had (no cache)."""
    path = cache_key_file()
    if path is None:
        return None
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


def _hash_sources(paths: list[Path], roots: tuple[Path, ...]) -> tuple[str, tuple[SourceFile, ...]]:
    """Every source file's record (named relative to the data ``roots``) and one digest over them all, the cache
    key."""
    overall = hashlib.sha256(CACHE_FORMAT)
    files = tuple(file_record(path, roots) for path in paths)
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
        log.warning("warning: unreadable cache entry %s (%s); rebuilding it", path, type(err).__name__)
        return None
    if recorded_source != source_digest or not hmac.compare_digest(
            seal, _seal(key, source_digest, _arrays_digest(images, labels))):
        log.warning("warning: cache entry %s does not match its source files; rebuilding it", path)
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
    digest, files = _hash_sources(paths, tuple(candidate_roots(data_dir)))
    folder = cache_dir() if use_cache else None
    cached = None if folder is None else folder / f"{name}-{split}-{digest[:24]}.npz"
    key = _cache_key() if cached is not None else None
    if key is not None and (arrays := _read_cache(cached, digest, key)) is not None:
        try:
            return Split(*_validate(info, split, *arrays, paths, allow_nonstandard), files)
        except DataError as err:
            log.warning("warning: cache entry %s failed validation (%s); rebuilding it", cached, err)
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
                        f"{arg('allow_nonstandard=True', '--allow-nonstandard-data')} for small test files)")
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
