"""The one currency of images: ``ImageSet``, uint8 N×C×H×W with what was read (files, SHA-256) and what was
done to it; its content digest; and ``map_to``, the explicit, recorded mapping to a model's shape."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from PIL import Image

from empirical.io.errors import DataError, arg
from empirical.io.provenance import SourceFile

RESIZE_FILTERS = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX,
                  "bilinear": Image.Resampling.BILINEAR, "hamming": Image.Resampling.HAMMING,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


@dataclass(frozen=True)
class ImageSet:
    """uint8 images N×C×H×W with where they came from (``files``: path, bytes, SHA-256; a folder is one entry with
    its file count and one digest over names and contents) and what was done to them (``transforms``)."""

    images: np.ndarray
    name: str  # as reports show it, e.g. "FashionMNIST-test", "scans.npz-test"
    source: str  # as the user named it: a registry name, a path, or a description of a Python object
    kind: str  # registry | synthetic | npy | npz | folder | array | dataset
    files: tuple[SourceFile, ...] = ()
    transforms: tuple[str, ...] = ()
    nonstandard: bool = False  # registry data whose image count is not the official one (plumbing, not a result)
    mirror_symmetric: bool = False  # natural photographs: flip augmentation allowed in training
    part: str = "all"  # train | test | all

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"{self.name}: expected uint8 images N×C×H×W with C = 1 or 3, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        if len(x) == 0:
            raise DataError(f"{self.name} ({self.source}) holds no images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the images' shape and bytes: what caches of trained models are keyed by."""
        h = hashlib.sha256(shape_text(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).data)
        return h.hexdigest()

    def select(self, rows: slice, note: str) -> ImageSet:
        """The images ``rows``, with ``note`` (what they are) recorded among the transforms."""
        return replace(self, images=self.images[rows], transforms=(*self.transforms, note))

    def derived(self, images: np.ndarray, name: str, note: str) -> ImageSet:
        """Other images made from these (an attack, a shift), named ``name``, with ``note`` among the transforms."""
        return replace(self, images=images, name=name, transforms=(*self.transforms, note))

    def head(self, n: int | None) -> ImageSet:
        """The first ``n`` images (all when ``n`` is None or at least their number), the choice recorded."""
        if n is None or n >= len(self):
            return self
        return self.select(slice(None, n), f"the first {n} of {len(self)}")

    def provenance(self) -> dict:
        """What a report names: the source, the files read, the content digest and every transform."""
        return {"name": self.name, "source": self.source, "kind": self.kind, "part": self.part, "n": len(self),
                "shape": list(self.shape), "content_sha256": self.digest, "files": [f.to_dict() for f in self.files],
                "transforms": list(self.transforms), "nonstandard": self.nonstandard}


def training_digest(train_set: ImageSet, test_set: ImageSet) -> str:
    """One SHA-256 over the contents of a training and a test part: what a trained model is keyed by."""
    return hashlib.sha256(f"{train_set.digest}:{test_set.digest}".encode()).hexdigest()


@dataclass(frozen=True)
class ShapeMap:
    """How to bring images to a model's shape: ``match`` zero-pads/centre-crops and converts grey↔RGB; ``resize``
    (a Pillow filter name) resizes instead of padding or cropping."""

    match: bool = False
    resize: str | None = None


# ---------------------------------------------------------------------------------------------- mapping
def map_to(images: ImageSet, shape: tuple[int, int, int], mapping: ShapeMap = ShapeMap()) -> ImageSet:
    """``images`` in ``shape``, unchanged when they have it; otherwise converted as ``mapping`` allows (grey↔RGB,
    then zero-pad/centre-crop or resize) with every step recorded, or a DataError naming the flag that would."""
    shape = tuple(shape)
    if images.shape == shape:
        return images
    if not (mapping.match or mapping.resize):
        raise DataError(f"{images.name} images are {shape_text(images.shape)} but the model takes "
                        f"{shape_text(shape)}; pass {arg('ShapeMap(match=True)', '--match')} to zero-pad/crop and "
                        f"convert channels explicitly, or {arg('ShapeMap(resize=FILTER)', '--resize FILTER')}")
    x, done = images.images, []
    c, h, w = shape
    if x.shape[1] == 1 and c == 3:
        x, _ = np.repeat(x, 3, axis=1), done.append("grey → RGB: the grey channel copied to R, G and B")
    elif x.shape[1] == 3 and c == 1:
        luma = np.tensordot(np.array([0.299, 0.587, 0.114]), x.astype(np.float64), axes=([0], [1]))
        x = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, None]
        done.append("RGB → grey: ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B, rounded")
    size = f"{x.shape[2]}×{x.shape[3]} → {h}×{w}"
    if mapping.resize and x.shape[2:] != (h, w):
        if mapping.resize not in RESIZE_FILTERS:
            raise DataError(f"unknown resize filter {mapping.resize!r}; filters: {', '.join(RESIZE_FILTERS)}")
        x = _resize(x, h, w, RESIZE_FILTERS[mapping.resize])
        done.append(f"resized {size} with Pillow's {mapping.resize} filter (aspect ratio not kept)")
    elif x.shape[2:] != (h, w):
        x, step = _pad_or_crop(x, h, w, images.name)
        done.append(f"{step} {size}")
    return replace(images, images=np.ascontiguousarray(x), transforms=(*images.transforms, *done),
                   name=images.name + " (matched)")


def _pad_or_crop(x: np.ndarray, h: int, w: int, name: str) -> tuple[np.ndarray, str]:
    dh, dw = h - x.shape[2], w - x.shape[3]
    if dh >= 0 and dw >= 0:
        pads = ((0, 0), (0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2))
        return np.pad(x, pads), (f"zero-padded ({pads[2][0]} px top, {pads[2][1]} bottom, {pads[3][0]} left, "
                                 f"{pads[3][1]} right)")
    if dh <= 0 and dw <= 0:
        top, left = -dh // 2, -dw // 2
        return x[:, :, top: top + h, left: left + w], f"centre-cropped (from row {top}, column {left})"
    raise DataError(f"cannot pad or crop {name}'s {x.shape[2]}×{x.shape[3]} images to {h}×{w} (one side grows, the "
                    f"other shrinks); use {arg('ShapeMap(resize=FILTER)', '--resize FILTER')}")


def _resize(x: np.ndarray, h: int, w: int, resample: Image.Resampling) -> np.ndarray:
    def one(image: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        out = np.asarray(pil.resize((w, h), resample), dtype=np.uint8)
        return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)

    return np.stack([one(image) for image in x])


LAYOUTS = ("nchw", "nhwc")
_LOSSLESS_MODES = {"L": None, "RGB": None, "1": "L", "P": "RGB"}  # Pillow mode → conversion (None: as it is)


def to_nchw(array: np.ndarray, where: str, layout: str | None = None) -> np.ndarray:
    """uint8 N×C×H×W from N×H×W, N×H×W×C or N×C×H×W (C = 1 or 3). Integer arrays are accepted only when every value
    is in 0..255 (converted exactly); floats, booleans and anything else are refused, never cast."""
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; use {' or '.join(LAYOUTS)}")
    a = np.asarray(array)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            hint = " (values in [0, 1]? multiply by 255 and round them yourself)" if a.dtype.kind == "f" else ""
            raise DataError(f"{where}: pixel values are {a.dtype}, expected uint8 (0..255); refusing to convert"
                            + hint)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: pixel values {lo}..{hi} lie outside 0..255")
        a = a.astype(np.uint8)
    if a.ndim == 3:
        if layout is not None:
            raise DataError(f"{where}: layout {layout} names a channel axis, but the array is N×H×W {a.shape}")
        return np.ascontiguousarray(a[:, None])
    if a.ndim != 4:
        raise DataError(f"{where}: expected images N×H×W, N×H×W×C or N×C×H×W, got {a.ndim} dimensions {a.shape}")
    first, last = a.shape[1] in (1, 3), a.shape[3] in (1, 3)
    if layout is None:
        if first and last:
            raise DataError(f"{where}: shape {a.shape} could be N×C×H×W or N×H×W×C; say which with "
                            f"{arg('layout=', '--layout ')}nchw or {arg('layout=', '--layout ')}nhwc")
        if not (first or last):
            raise DataError(f"{where}: shape {a.shape} has no axis of 1 or 3 channels (grey or RGB) after N")
        layout = "nchw" if first else "nhwc"
    if layout == "nhwc":
        if not last:
            raise DataError(f"{where}: layout nhwc needs 1 or 3 channels last, got shape {a.shape}")
        a = a.transpose(0, 3, 1, 2)
    elif not first:
        raise DataError(f"{where}: layout nchw needs 1 or 3 channels second, got shape {a.shape}")
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------------------- Python objects
def as_image_set(obj: object, name: str | None = None, *, layout: str | None = None) -> ImageSet:
    """An ImageSet from an ImageSet (as it is), a uint8 NumPy array or torch tensor (layouts as ``to_nchw``), or a
    torchvision-style dataset (``len`` and ``[i]`` giving an image or an (image, label) pair; the image a PIL image,
    a uint8 H×W(×C) array or a uint8 C×H×W tensor). Float images (e.g. after ``ToTensor``) are refused."""
    if isinstance(obj, ImageSet):
        return obj
    label = name or type(obj).__name__
    if isinstance(obj, np.ndarray) or _is_tensor(obj):
        array = obj.detach().cpu().numpy() if _is_tensor(obj) else obj  # type: ignore[union-attr]
        note = () if array.dtype == np.uint8 else (f"converted from {array.dtype} (every value in 0..255: exact)",)
        return ImageSet(to_nchw(array, label, layout), label, f"in-memory array {tuple(array.shape)}", "array",
                        transforms=note)
    if hasattr(obj, "__len__") and hasattr(obj, "__getitem__"):
        n = len(obj)  # type: ignore[arg-type]
        if n == 0:
            raise DataError(f"{label} holds no images")
        items = [_item_image(obj[i], f"{label}[{i}]") for i in range(n)]  # type: ignore[index]
        odd = next((i for i, x in enumerate(items) if x.shape != items[0].shape), None)
        if odd is not None:
            raise DataError(f"{label}[{odd}] is {shape_text(items[odd].shape)} but {label}[0] is "
                            f"{shape_text(items[0].shape)}: the images of a set must share one shape")
        images = np.stack(items)
        root = getattr(obj, "root", None)
        where = f"{type(obj).__name__} of {n} items" + (f" (root {root})" if root else "")
        return ImageSet(images, label, where, "dataset")
    raise DataError(f"cannot read images from a {type(obj).__name__}: pass a uint8 array or tensor, a "
                    f"torchvision-style dataset, or an ImageSet")


def _is_tensor(obj: object) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _item_image(item: object, where: str) -> np.ndarray:
    image = item[0] if isinstance(item, tuple | list) else item
    if isinstance(image, Image.Image):
        if image.mode not in _LOSSLESS_MODES:
            raise DataError(f"{where}: Pillow mode {image.mode}; dgm-ood reads 8-bit grey or RGB images")
        target = _LOSSLESS_MODES[image.mode]
        pixels = np.asarray(image.convert(target) if target else image, dtype=np.uint8)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if _is_tensor(image):  # torchvision's tensors are C×H×W
        array = image.detach().cpu().numpy()  # type: ignore[union-attr]
        return to_nchw(array[None], where, "nchw" if array.ndim == 3 else None)[0]
    if isinstance(image, np.ndarray):  # PIL's convention: H×W or H×W×C
        return to_nchw(image[None], where, "nhwc" if image.ndim == 3 else None)[0]
    raise DataError(f"{where} is a {type(image).__name__}, not an image (PIL image, uint8 array or tensor)")
