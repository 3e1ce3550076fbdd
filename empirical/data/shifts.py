"""Named, parameterised domain shifts with a severity knob (1..5; 0 is the images unchanged), deterministic for a
seed: a shift of any ImageSet is an ImageSet, its transform recorded.

Two kinds. The common corruptions of Hendrycks & Dietterich, "Benchmarking neural network robustness to common
corruptions and perturbations" (ICLR 2019), that need no image assets, with the per-severity constants of their
CIFAR-10-C generator (``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness), re-implemented
with numpy, scipy and Pillow; for 28×28 grey images the same constants, with the size-dependent ones (motion blur's
radius, the elastic transform's scales) scaled by 28/32. And the shifts that separate hypotheses about the
inversion: contrast scaling and mean shifts (the paper's variance story), flips, a 90° rotation, inversion,
translation, block shuffles (global structure gone, local kept), a fixed pixel permutation (local correlations gone,
every marginal kept) and a channel permutation. Images are shifted in [0, 1] and rounded back to 8 bits.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from empirical.data.imageset import ImageSet
from empirical.io.errors import DataError

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Shift:
    """One shift: ``apply(x, c, rng)`` maps float images N×C×H×W in [0, 1] with the severity's constant ``c``."""

    name: str
    family: str  # noise | blur | weather | digital | hypothesis
    constants: tuple
    apply: Callable[[np.ndarray, object, np.random.Generator], np.ndarray]
    colour_only: bool = False
    scales_with_size: bool = False  # constants in pixels of a 32×32 image: scaled by H/32

    def constant(self, severity: int, size: int) -> object:
        c = self.constants[severity - 1]
        return tuple(v * size / 32 for v in c) if self.scales_with_size and isinstance(c, tuple) else c


# ------------------------------------------------------------------------------------------------- noise
def _gaussian_noise(x, c, rng):
    return x + rng.normal(0.0, c, x.shape)


def _shot_noise(x, c, rng):
    return rng.poisson(x * c) / c


def _impulse_noise(x, c, rng):
    hit = rng.random(x.shape) < c  # salt or pepper, half each, on a share c of the values
    return np.where(hit, (rng.random(x.shape) < 0.5).astype(np.float64), x)


def _speckle_noise(x, c, rng):
    return x + x * rng.normal(0.0, c, x.shape)


# -------------------------------------------------------------------------------------------------- blur
def _blur(x, sigma):
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest")


def _gaussian_blur(x, c, rng):
    return _blur(x, c)


def _defocus_blur(x, c, rng):
    radius, alias = c
    grid = np.arange(-8, 9)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).astype(np.float64)
    kernel = ndimage.gaussian_filter(disk / disk.sum(), alias, mode="constant", truncate=1.0 / max(alias, 1e-9))
    return ndimage.convolve(x, kernel[None, None] / kernel.sum(), mode="mirror")


def _glass_blur(x, c, rng):
    """Blur, swap each pixel with a random neighbour within ``delta`` (``iterations`` sweeps), blur again."""
    sigma, delta, iterations = c
    y = np.rint(np.clip(_blur(x, sigma), 0, 1) * 255) / 255
    n, _, h, w = y.shape
    rows = np.arange(n)
    for _ in range(iterations):
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                di, dj = rng.integers(-delta, delta, size=(2, n))
                a, b = y[rows, :, i, j].copy(), y[rows, :, i + di, j + dj].copy()
                y[rows, :, i, j], y[rows, :, i + di, j + dj] = b, a
    return _blur(y, sigma)


def _motion_blur(x, c, rng):
    """A one-sided line kernel of ``radius`` pixels with Gaussian weights (σ), at an angle drawn in [−45°, 45°]."""
    radius, sigma = c
    steps = np.arange(int(np.ceil(radius)) + 1)
    weights = np.exp(-(steps**2) / (2 * sigma**2))
    weights /= weights.sum()
    out = np.empty_like(x)
    for k, angle in enumerate(np.deg2rad(rng.uniform(-45, 45, len(x)))):
        out[k] = sum(wt * ndimage.shift(x[k], (0, -t * np.sin(angle), -t * np.cos(angle)), order=1, mode="nearest")
                     for t, wt in zip(steps, weights, strict=True))
    return out


def _zoom_blur(x, c, rng):
    """The mean of the image and its centre zooms by each factor in ``c``."""
    h = x.shape[2]
    total = x.copy()
    for factor in c:
        crop = int(np.ceil(h / factor))
        top = (h - crop) // 2
        zoomed = ndimage.zoom(x[:, :, top:top + crop, top:top + crop], (1, 1, factor, factor), order=1)
        trim = (zoomed.shape[2] - h) // 2
        total += zoomed[:, :, trim:trim + h, trim:trim + h]
    return total / (len(c) + 1)


ZOOMS = tuple(np.arange(1, end, 0.01) for end in (1.06, 1.11, 1.16, 1.21, 1.26))


# ------------------------------------------------------------------------------------------------ weather
def _plasma(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A diamond-square height map of side ``size`` (a power of two) in [0, 1]; roughness falls by ``decay``."""
    grid, step, wibble = np.zeros((size, size)), size, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, 0)
        square = square + np.roll(square, -1, 1)
        grid[half:size:step, half:size:step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centres, corners = grid[half:size:step, half:size:step], grid[0:size:step, 0:size:step]
        left = centres + np.roll(centres, 1, 0) + corners + np.roll(corners, -1, 1)
        grid[0:size:step, half:size:step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        top = centres + np.roll(centres, 1, 1) + corners + np.roll(corners, -1, 0)
        grid[half:size:step, 0:size:step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        step, wibble = half, wibble / decay
    grid -= grid.min()
    return grid / grid.max()


def _fog(x, c, rng):
    strength, decay = c
    h, w = x.shape[2:]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    haze = np.stack([_plasma(32, decay, rng)[:h, :w] for _ in range(len(x))])[:, None]
    return (x + strength * haze) * peak / (peak + strength)


def _brightness(x, c, rng):
    """HSV value + c, hue and saturation kept: every channel scaled by V'/V (a black pixel becomes grey V')."""
    v = x.max(axis=1, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    return np.where(v > 0, x * v_new / np.where(v > 0, v, 1), v_new)


# ------------------------------------------------------------------------------------------------ digital
def _contrast(x, c, rng):
    mean = x.mean(axis=(2, 3), keepdims=True)
    return (x - mean) * c + mean


def _saturate(x, c, rng):
    """HSV saturation × c₀ + c₁, hue and value kept: x' = V − (V − x)·S'/S (grey pixels take hue 0, red)."""
    v, lo = x.max(axis=1, keepdims=True), x.min(axis=1, keepdims=True)
    s = np.where(v > 0, (v - lo) / np.where(v > 0, v, 1), 0.0)
    s_new = np.clip(s * c[0] + c[1], 0, 1)
    red = np.concatenate([v, v * (1 - s_new), v * (1 - s_new)], axis=1)
    return np.where(s > 0, v - (v - x) * s_new / np.where(s > 0, s, 1), red)


def _pil_each(x: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """``fn`` on each image as Pillow sees it (8 bits, L or RGB), back to floats."""
    out = []
    for image in np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8):
        pil = Image.fromarray(image[0] if len(image) == 1 else image.transpose(1, 2, 0))
        result = np.asarray(fn(pil), dtype=np.float64) / 255
        out.append(result[None] if result.ndim == 2 else result.transpose(2, 0, 1))
    return np.stack(out)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _pixelate(image: Image.Image, c: float) -> Image.Image:
    w, h = image.size
    small = image.resize((int(w * c), int(h * c)), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.BOX)


def _elastic(x, c, rng):
    """A random affine move of three anchor points by up to c₂ pixels, then a smooth random displacement field
    (uniform noise blurred by σ = c₁, scaled by c₀), bilinear with reflection."""
    alpha, sigma, shift = c
    n, channels, h, w = x.shape
    out = np.empty_like(x)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    centre, side = np.array([h // 2, w // 2], dtype=np.float64), min(h, w) // 3
    anchors = np.array([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    for k in range(n):
        moved = anchors + rng.uniform(-shift, shift, anchors.shape)
        solve = np.linalg.lstsq(np.c_[moved, np.ones(3)], anchors, rcond=None)[0]  # output → input coordinates
        dy, dx = (ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3) * alpha
                  for _ in range(2))
        qy, qx = yy + dy, xx + dx  # displaced, then moved back through the affine map
        src = [solve[0, 0] * qy + solve[1, 0] * qx + solve[2, 0], solve[0, 1] * qy + solve[1, 1] * qx + solve[2, 1]]
        for ch in range(channels):
            out[k, ch] = ndimage.map_coordinates(x[k, ch], src, order=1, mode="reflect")
    return out


# --------------------------------------------------------------------------------------------- hypotheses
SHARES = (0.2, 0.4, 0.6, 0.8, 1.0)  # for a change that has no degree: the share of images (or pixels) it touches


def _some(op: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """``op`` on a random share ``c`` of the images (the others unchanged)."""
    def apply(x, c, rng):
        chosen = rng.permutation(len(x))[: int(round(c * len(x)))]
        out = x.copy()
        out[chosen] = op(x[chosen])
        return out
    return apply


def _contrast_scale(x, c, rng):
    """x' = m + c·(x − m), m the image's mean: the variance times c², the mean kept (the paper's variance story)."""
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return mean + c * (x - mean)


def _translate(x, c, rng):
    """A circular shift by ``c`` pixels in a random direction per image: every marginal of the image kept."""
    out = np.empty_like(x)
    for k, angle in enumerate(rng.uniform(0, 2 * np.pi, len(x))):
        out[k] = np.roll(x[k], (int(round(c * np.sin(angle))), int(round(c * np.cos(angle)))), axis=(1, 2))
    return out


def _block_shuffle(x, c, rng):
    """The image cut into c × c blocks (c = blocks per side, H divisible by it), the blocks shuffled per image."""
    n, ch, h, w = x.shape
    bh, bw = h // c, w // c
    blocks = x.reshape(n, ch, c, bh, c, bw).transpose(0, 2, 4, 1, 3, 5).reshape(n, c * c, ch, bh, bw)
    blocks = np.stack([b[rng.permutation(c * c)] for b in blocks])
    return blocks.reshape(n, c, c, ch, bh, bw).transpose(0, 3, 1, 4, 2, 5).reshape(n, ch, h, w)


def _pixel_permutation(x, c, rng):
    """One fixed random permutation of a share ``c`` of the pixel positions, the same for every image: local
    correlations gone, every marginal kept."""
    n, ch, h, w = x.shape
    order = np.arange(h * w)
    moved = rng.permutation(h * w)[: int(round(c * h * w))]
    order[moved] = moved[rng.permutation(len(moved))]
    return x.reshape(n, ch, h * w)[:, :, order].reshape(n, ch, h, w)


def _jpeg_each(x, c, rng):
    return _pil_each(x, lambda im: _jpeg(im, c))


def _pixelate_each(x, c, rng):
    return _pil_each(x, lambda im: _pixelate(im, c))


PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))  # every order of R, G, B but the identity
SHIFTS: dict[str, Shift] = {s.name: s for s in (
    Shift("gaussian_noise", "noise", (0.04, 0.06, 0.08, 0.09, 0.10), _gaussian_noise),
    Shift("shot_noise", "noise", (500, 250, 100, 75, 50), _shot_noise),
    Shift("impulse_noise", "noise", (0.01, 0.02, 0.03, 0.05, 0.07), _impulse_noise),
    Shift("speckle_noise", "noise", (0.06, 0.1, 0.12, 0.16, 0.2), _speckle_noise),
    Shift("defocus_blur", "blur", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), _defocus_blur),
    Shift("gaussian_blur", "blur", (0.4, 0.6, 0.7, 0.8, 1.0), _gaussian_blur),
    Shift("glass_blur", "blur", ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)), _glass_blur),
    Shift("motion_blur", "blur", ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)), _motion_blur, scales_with_size=True),
    Shift("zoom_blur", "blur", ZOOMS, _zoom_blur),
    Shift("fog", "weather", ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)), _fog),
    Shift("brightness", "weather", (0.05, 0.1, 0.15, 0.2, 0.3), _brightness),
    Shift("contrast", "digital", (0.75, 0.5, 0.4, 0.3, 0.15), _contrast),
    Shift("saturate", "digital", ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)), _saturate, colour_only=True),
    Shift("pixelate", "digital", (0.95, 0.9, 0.85, 0.75, 0.65), _pixelate_each),
    Shift("jpeg", "digital", (80, 65, 58, 50, 40), _jpeg_each),
    Shift("elastic_transform", "digital", ((0, 0, 2.56), (1.6, 6.4, 2.24), (2.56, 1.92, 1.92), (3.2, 1.28, 1.6),
                                           (3.2, 0.96, 0.96)), _elastic, scales_with_size=True),
    Shift("contrast_scale", "hypothesis", (0.8, 0.6, 0.4, 0.2, 0.0), _contrast_scale),
    Shift("mean_shift", "hypothesis", (0.05, 0.1, 0.2, 0.3, 0.4), lambda x, c, rng: x + c),
    Shift("hflip", "hypothesis", SHARES, _some(lambda x: x[..., ::-1])),
    Shift("vflip", "hypothesis", SHARES, _some(lambda x: x[..., ::-1, :])),
    Shift("rot90", "hypothesis", SHARES, _some(lambda x: np.rot90(x, 1, axes=(2, 3)))),
    Shift("invert", "hypothesis", SHARES, _some(lambda x: 1 - x)),
    Shift("translate", "hypothesis", ((1,), (2,), (3,), (4,), (6,)), lambda x, c, rng: _translate(x, c[0], rng),
          scales_with_size=True),
    Shift("block_shuffle", "hypothesis", (2, 4, "H/4", "H/2", "H"), lambda x, c, rng: _block_shuffle(x, c, rng)),
    Shift("pixel_permutation", "hypothesis", SHARES, _pixel_permutation),
    Shift("channel_permutation", "hypothesis", PERMUTATIONS, lambda x, c, rng: x[:, list(c)], colour_only=True),
)}


# Shifts whose published or chosen constants order no one simple statistic of the images: the benchmark's glass blur
# (σ 0.05 → 0.4 → 0.25 → 0.4 with one or two sweeps), saturate (desaturation, then oversaturation), the elastic
# transform (the affine move shrinks while the displacement grows), and the five orders of the channels.
UNORDERED = ("glass_blur", "saturate", "elastic_transform", "channel_permutation")


def _resolved(shift: Shift, severity: int, size: int) -> object:
    c = shift.constant(severity, size)
    return {"H/4": size // 4, "H/2": size // 2, "H": size}.get(c, c) if isinstance(c, str) else c


def shift_images(images: ImageSet, name: str, severity: int, seed: int = 0) -> ImageSet:
    """``images`` under the shift ``name`` at ``severity`` (0: unchanged), drawn from a generator seeded by (seed,
    name, severity); the shift, its constant and the seed are recorded among the transforms."""
    shift = SHIFTS.get(name)
    if shift is None:
        raise DataError(f"unknown shift {name!r}; shifts: {', '.join(SHIFTS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= max(SEVERITIES):
        raise DataError(f"the severity of a shift is a whole number from 0 to {max(SEVERITIES)}, got {severity!r}")
    if shift.colour_only and images.shape[0] != 3:
        raise DataError(f"{name} changes colour, and {images.name} images are grey")
    if severity == 0:
        return images
    c = _resolved(shift, severity, images.shape[1])
    if name == "block_shuffle" and images.shape[1] % c:
        raise DataError(f"block_shuffle at severity {severity} cuts {c} blocks per side, which does not divide "
                        f"{images.name}'s {images.shape[1]} rows")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), severity])
    out = shift.apply(images.images.astype(np.float64) / 255, c, rng)
    shown = f"{len(c)} zoom factors up to {max(c):.2f}" if isinstance(c, np.ndarray) else c
    return replace(images, images=np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8),
                   name=f"{images.name} ({name} {severity})", source=f"shift:{name}:{severity}:{images.source}",
                   transforms=(*images.transforms, f"shift {name} ({shift.family}) at severity {severity}: constant "
                                                   f"{shown}, seed {seed}"))


PREFIX = "shift:"


def parse_source(text: str) -> tuple[str, int, str | None]:
    """``shift:NAME:SEVERITY`` (of IN-test) or ``shift:NAME:SEVERITY:SOURCE`` (of SOURCE's test part) → (name,
    severity, source or None); a DataError that names the known shifts otherwise."""
    name, _, rest = text[len(PREFIX):].partition(":")
    severity, _, base = rest.partition(":")
    if name not in SHIFTS or not severity.isdigit() or not 0 <= int(severity) <= max(SEVERITIES):
        raise DataError(f"{text!r} is not a shift: write shift:NAME:SEVERITY[:SOURCE] with a severity from 0 to "
                        f"{max(SEVERITIES)} and NAME one of {', '.join(SHIFTS)}")
    return name, int(severity), base or None
