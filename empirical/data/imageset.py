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
