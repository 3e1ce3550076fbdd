"""Image sources: whatever a user names as IN or OUT becomes an ``ImageSet`` (uint8 N×C×H×W, what was read, what was
done to it, and a digest of its content).

A source is a registry name (``fashionmnist``, ``cifar10``, … and the synthetic ``constant`` and ``noise``), or a
path: any text that contains a ``/`` or ends in ``.npy`` or ``.npz`` (``./photos`` names a folder in the current
directory; a bare word is always a registry name). Paths:

- ``X.npy`` / ``X.npz``: a uint8 array N×H×W (grey), N×H×W×C or N×C×H×W (C = 1 or 3; the axis of size 1 or 3
  decides, and a shape where both could be channels needs ``layout``). An ``.npz`` with arrays ``train`` and
  ``test`` has two parts; one with a single array is that array; otherwise name it as ``X.npz:KEY``.
- a folder of image files Pillow reads (PNG, JPEG, PPM, BMP, TIFF, …), flat or with one sub-folder per class
  (torchvision's ``ImageFolder``), read in sorted path order; hidden files are skipped. A folder with ``train/``
  and ``test/`` sub-folders has those two parts.

An IN without two parts is split by one fixed rule, ``SPLIT_RULE``, never at random. From Python,
``as_image_set`` takes any uint8 array or tensor and any torchvision-style dataset.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from empirical.data import registry, shifts
from empirical.data.formats import check_npy_size
from empirical.data.imageset import _LOSSLESS_MODES, ImageSet, ShapeMap, map_to, shape_text, to_nchw
from empirical.io.errors import DataError
from empirical.io.provenance import SourceFile, file_record, portable_path

SPLIT_EVERY = 10


SPLIT_RULE = (f"every {SPLIT_EVERY}th image in order (positions {SPLIT_EVERY}, {2 * SPLIT_EVERY}, …) is test, "
              f"the rest train")






SYNTHETIC_NAMES = {"constant": "constant colour", "noise": "uniform noise"}




@dataclass(frozen=True)
class DataOptions:
    """How sources are read: the registry's root and options, and the layout of ambiguous 4-D arrays."""

    data_dir: str | None = None
    download: bool = False
    allow_nonstandard: bool = False
    layout: str | None = None  # nchw | nhwc, for arrays whose layout the shape cannot decide


# ------------------------------------------------------------------------------------------------ names
def is_path(text: str) -> bool:
    """A source is a path when it contains a ``/`` or ends in ``.npy``/``.npz`` (or ``.npz:KEY``)."""
    return "/" in text or os.sep in text or text.endswith((".npy", ".npz")) or ".npz:" in text


def slug(text: str) -> str:
    """A file-name-safe short name of a source for default output folders (``scans.npz:x`` → ``scans-x``)."""
    if not is_path(text):
        return text
    path, key = _split_path(text)
    stem = Path(str(path).rstrip("/" + os.sep)).stem or "data"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem + (f"-{key}" if key else ""))


def _source_text(source: str | os.PathLike) -> str:
    """A source as text; a ``Path`` (or any path-like) always names a path, even one without a ``/``."""
    if isinstance(source, os.PathLike):
        text = os.fspath(source)
        return text if is_path(text) else os.path.join(".", text)
    if not isinstance(source, str):
        raise DataError(f"a source is a registry name or a path, not a {type(source).__name__}; for images in memory "
                        f"use as_image_set")
    return source


def check_name(text: str) -> None:
    """A clear error now (before any work) for a registry name, a shift or a path that does not exist."""
    if text.startswith(shifts.PREFIX):
        base = shifts.parse_source(text)[2]
        return check_name(base) if base else None
    if is_path(text):
        path = _split_path(text)[0]
        if not path.exists():
            raise DataError(f"no such file or folder: {path}")
    elif text not in SYNTHETIC_NAMES:
        registry.dataset_info(text)


# ------------------------------------------------------------------------------------------------ arrays


def _regular_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):
        raise DataError(f"{path} is not a regular file (a folder, device or pipe)")


def _read_array_file(path: Path, key: str | None) -> dict[str, np.ndarray]:
    """The arrays of an .npy (``{"all": a}``) or .npz (its chosen array, or its ``train`` and ``test``); never
    unpickles."""
    _regular_file(path)
    if path.suffix == ".npy" and key is not None:
        raise DataError(f"{path} is an .npy file: it holds one array, so :{key} names nothing")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:6 if path.suffix == ".npy" else 4] != (b"\x93NUMPY" if path.suffix == ".npy" else b"PK\x03\x04"):
            raise DataError(f"{path} is not a readable NumPy file (no {path.suffix} header)")
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                check_npy_size(f, path.stat().st_size, str(path))
            return {"all": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            for info in z.zip.infolist():
                with z.zip.open(info) as member:
                    check_npy_size(member, info.file_size, f"{path}:{info.filename}")
            return _npz_arrays(path, z, key)
    except DataError:
        raise
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise DataError(f"refused to read {path}: it holds a pickled (object) array, and dgm-ood never unpickles "
                            f"data; save it as a plain uint8 array") from err
        raise DataError(f"{path} is not a readable NumPy file: {err}") from err
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise DataError(f"{path} is not a readable NumPy file: {err}") from err


def _npz_arrays(path: Path, z, key: str | None) -> dict[str, np.ndarray]:
    names = list(z.files)
    if key is not None:
        if key not in names:
            raise DataError(f"{path} has no array {key!r}; it holds {', '.join(names) or 'none'}")
        return {"all": z[key]}
    if {"train", "test"} <= set(names):
        return {"train": z["train"], "test": z["test"]}
    if len(names) == 1:
        return {"all": z[names[0]]}
    raise DataError(f"{path} holds {len(names)} arrays ({', '.join(names) or 'none'}) and none is named train and "
                    f"test; name the one to use as {path}:KEY")


# ----------------------------------------------------------------------------------------------- folders
def _image_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder`` in sorted path order (symlinked folders are not followed)."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / f for f in files if not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _decode(path: Path) -> np.ndarray:
    """One image file as uint8 C×H×W (grey or RGB; bilevel and palette images converted losslessly)."""
    _regular_file(path)
    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise DataError(f"{path} holds {im.n_frames} frames (an animation); dgm-ood reads one image per file")
            im.load()
            if im.mode not in _LOSSLESS_MODES:
                why = "an alpha channel" if "A" in im.mode else f"Pillow mode {im.mode}, not 8-bit grey or RGB"
                raise DataError(f"{path} has {why}; dgm-ood reads 8-bit grey or RGB images")
            target = _LOSSLESS_MODES[im.mode]
            pixels = np.asarray(im.convert(target) if target else im, dtype=np.uint8)
    except DataError:
        raise
    except UnidentifiedImageError as err:
        raise DataError(f"{path} is not an image file Pillow can read") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"corrupt or truncated image {path}: {err}") from err
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _folder_record(folder: Path, files: list[Path]) -> SourceFile:
    """One digest over the sorted relative names and contents of the files read, with their count and bytes."""
    h, size = hashlib.sha256(), 0
    for p in files:
        raw = p.read_bytes()
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(raw).digest())
        size += len(raw)
    return SourceFile(portable_path(folder), size, h.hexdigest(), count=len(files))


def _read_folder(folder: Path) -> tuple[np.ndarray, SourceFile]:
    files = _image_files(folder)
    if not files:
        raise DataError(f"{folder} holds no image files (hidden files are skipped)")
    decoded = [_decode(p) for p in files]
    groups: dict[tuple, list[Path]] = {}
    for p, x in zip(files, decoded, strict=True):
        groups.setdefault(x.shape, []).append(p)
    if len(groups) > 1:
        parts = sorted(groups.items(), key=lambda kv: -len(kv[1]))
        what = "; ".join(f"{shape_text(s)} ({len(ps)} files, e.g. {', '.join(p.name for p in ps[:3])})"
                         for s, ps in parts[:4])
        raise DataError(f"images of different sizes or channels in {folder} (C×H×W): {what}; every image of a "
                        f"source must have one shape")
    return np.stack(decoded), _folder_record(folder, files)


# ------------------------------------------------------------------------------------------------ opening
def _split_path(text: str) -> tuple[Path, str | None]:
    if ".npz:" in text:
        path, _, key = text.rpartition(":")
        return Path(path), key
    return Path(text), None


def _read_path(text: str, options: DataOptions) -> tuple[dict[str, np.ndarray], str, dict[str, tuple], str]:
    """(parts, kind, each part's files, display name) of a path source: parts are ``all`` or ``train`` and ``test``;
    an array of another integer type than uint8 is converted exactly, and the conversion is part of its name."""
    path, key = _split_path(text)
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    if path.is_dir():
        if (path / "train").is_dir() and (path / "test").is_dir():
            read = {p: _read_folder(path / p) for p in ("train", "test")}
            return {p: a for p, (a, _) in read.items()}, "folder", {p: (f,) for p, (_, f) in read.items()}, \
                f"{path.name}/"
        array, record = _read_folder(path)
        return {"all": array}, "folder", {"all": (record,)}, f"{path.name}/"
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"{path}: a file source must be an .npy or .npz array (or name a folder of images)")
    arrays = _read_array_file(path, key)
    parts = {p: to_nchw(a, f"{path}" + (f" ({p})" if p != "all" else ""), options.layout) for p, a in arrays.items()}
    record = (file_record(path),)
    converted = sorted({str(a.dtype) for a in arrays.values()} - {"uint8"})
    display = path.name + (f":{key}" if key else "") + (f" ({'/'.join(converted)} → uint8)" if converted else "")
    return parts, path.suffix.lstrip("."), dict.fromkeys(parts, record), display


def _split_rule(images: np.ndarray, where: str) -> dict[str, np.ndarray]:
    test = np.arange(len(images)) % SPLIT_EVERY == SPLIT_EVERY - 1
    if test.all() or not test.any():
        raise DataError(f"{where} holds {len(images)} images: too few to split into train and test by the fixed "
                        f"rule ({SPLIT_RULE}); give it train and test parts")
    return {"train": images[~test], "test": images[test]}


def _registry(name: str, part: str, options: DataOptions) -> ImageSet:
    info = registry.dataset_info(name)
    split = registry.load(name, part, options.data_dir, download=options.download,
                      allow_nonstandard=options.allow_nonstandard)
    return ImageSet(split.images, f"{info.display}-{part}", name, "registry", split.files,
                    nonstandard=len(split.images) != info.counts[part], mirror_symmetric=info.mirror_symmetric,
                    part=part)


def labels_of(name: str, part: str, options: DataOptions = DataOptions()) -> np.ndarray:
    """The class labels (int64, in the images' order) of a registry dataset's ``part``; a DataError for any other
    source, which carries images only."""
    if not isinstance(name, str) or is_path(name) or name not in registry.DATASETS:
        raise DataError(f"{name!r} has no class labels here: labels come with the registry's datasets "
                        f"({', '.join(registry.DATASETS)})")
    return registry.load(name, part, options.data_dir, download=options.download,
                         allow_nonstandard=options.allow_nonstandard).labels


def open_in(text: str | os.PathLike, options: DataOptions = DataOptions()) -> tuple[ImageSet, ImageSet]:
    """IN's training and test parts: a registry dataset's splits, a source's own ``train``/``test`` parts, or one
    part split by ``SPLIT_RULE`` (recorded in both sets' transforms). A ``Path`` is a path."""
    text = _source_text(text)
    if text in SYNTHETIC_NAMES:
        raise DataError(f"{text} is a synthetic OUT set; IN needs real training images")
    if text.startswith(shifts.PREFIX):
        raise DataError(f"{text} is a shift, an OUT set (IN-test or SOURCE's test images moved along one axis); IN "
                        f"needs real training images: a dataset or a path")
    if not is_path(text):
        return _registry(text, "train", options), _registry(text, "test", options)
    parts, kind, files, display = _read_path(text, options)
    rule = ()
    if "all" in parts:
        parts, rule = _split_rule(parts["all"], text), (f"split: {SPLIT_RULE}",)
        files = dict.fromkeys(parts, files["all"])
    return tuple(ImageSet(parts[p], f"{display}-{p}", text, kind, files[p], rule, part=p)  # type: ignore[return-value]
                 for p in ("train", "test"))


def open_out(text: str | os.PathLike, shape: tuple[int, int, int], mapping: ShapeMap = ShapeMap(),
             options: DataOptions = DataOptions(), *, n_synthetic: int = 10_000, seed: int = 0,
             in_test: ImageSet | None = None) -> ImageSet:
    """OUT's test images in ``shape``: a registry dataset's test split, a source's ``test`` part (or all of a
    one-part source), a synthetic set made in ``shape``, or a shift (``shift:NAME:SEVERITY[:SOURCE]``) of
    ``in_test`` or of SOURCE; mapped to ``shape`` only as ``mapping`` allows."""
    text = _source_text(text)
    if text.startswith(shifts.PREFIX):
        name, severity, base = shifts.parse_source(text)
        if base is None and in_test is None:
            raise DataError(f"{text} shifts IN-test, which was not given (in_test=); or name the images to shift as "
                            f"{text}:SOURCE")
        of = in_test if base is None else open_out(base, shape, mapping, options, n_synthetic=n_synthetic, seed=seed)
        return shifts.shift_images(map_to(of, shape, mapping), name, severity, seed)
    if text in SYNTHETIC_NAMES:
        return synthetic(text, shape, n_synthetic, seed)
    if not is_path(text):
        return map_to(_registry(text, "test", options), shape, mapping)
    parts, kind, files, display = _read_path(text, options)
    part = "test" if "test" in parts else "all"
    name = display + ("-test" if part == "test" else "")
    return map_to(ImageSet(parts[part], name, text, kind, files[part], part=part), shape, mapping)


def synthetic(name: str, shape: tuple[int, int, int], n: int, seed: int) -> ImageSet:
    """``constant``: each image one uniform random colour; ``noise``: i.i.d. uniform pixels (both seeded)."""
    rng = np.random.default_rng(seed)
    if name == "constant":
        colour = rng.integers(0, 256, size=(n, shape[0], 1, 1), dtype=np.uint8)
        images = np.ascontiguousarray(np.broadcast_to(colour, (n, *shape)))
    elif name == "noise":
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    else:
        raise DataError(f"unknown synthetic set {name!r}; known: {', '.join(SYNTHETIC_NAMES)}")
    return ImageSet(images, SYNTHETIC_NAMES[name], name, "synthetic",
                    transforms=(f"generated: {n} images of {shape_text(shape)}, numpy seed {seed}",))
