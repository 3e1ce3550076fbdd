"""Every shift: the shape and dtype kept, deterministic for a seed, severity 0 the identity, a severity that orders
a simple statistic of the images, and a shift as a source (``shift:NAME:SEVERITY[:SOURCE]``) everywhere OUT is."""

from __future__ import annotations

import numpy as np
import pytest

from empirical.data.imageset import ImageSet
from empirical.data.shifts import SEVERITIES, SHIFTS, UNORDERED, parse_source, shift_images
from empirical.data.sources import check_name, open_out
from empirical.io.errors import DataError


def _images(shape: tuple[int, int, int], n: int = 24) -> ImageSet:
    """Smooth blobs on a grey ground: structure to blur, shuffle and permute, away from 0 and 255."""
    rng = np.random.default_rng(0)
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, c, h, w), np.uint8)
    for k in range(n):
        cy, cx, r = rng.uniform(h / 4, 3 * h / 4), rng.uniform(w / 4, 3 * w / 4), rng.uniform(h / 8, h / 3)
        blob = 60 + 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        out[k] = np.clip(blob[None] * rng.uniform(0.7, 1.3, (c, 1, 1)) + rng.normal(0, 4, (c, h, w)), 0, 255)
    return ImageSet(out, f"blobs {c}×{h}×{w}", "test", "array")


GREY, COLOUR = _images((1, 28, 28)), _images((3, 32, 32))
CASES = [(name, base) for name, s in SHIFTS.items() for base in (GREY, COLOUR) if not (s.colour_only and base is GREY)]
ID = [f"{name}-{base.shape[0]}x{base.shape[1]}" for name, base in CASES]


def _statistic(name: str, base: ImageSet, shifted: ImageSet) -> float:
    """What a severity should raise: block shuffles lower the correlation of neighbouring pixels, the rest move the
    images further from the originals (mean absolute change)."""
    x = shifted.images.astype(np.float64)
    if name == "block_shuffle":
        a, b = x[..., :, :-1].ravel(), x[..., :, 1:].ravel()
        return -float(np.corrcoef(a, b)[0, 1])
    return float(np.abs(x - base.images).mean())


@pytest.mark.parametrize("name,base", CASES, ids=ID)
def test_a_shift_keeps_the_shape_and_dtype_and_is_deterministic(name, base):
    for severity in SEVERITIES:
        shifted = shift_images(base, name, severity, seed=3)
        assert shifted.images.shape == base.images.shape and shifted.images.dtype == np.uint8
        assert np.array_equal(shifted.images, shift_images(base, name, severity, seed=3).images)
        assert shifted.transforms[-1].startswith(f"shift {name}") and "seed 3" in shifted.transforms[-1]
    assert shift_images(base, name, 0) is base  # severity 0: the images themselves


@pytest.mark.parametrize("name,base", [c for c in CASES if c[0] not in UNORDERED],
                         ids=[i for c, i in zip(CASES, ID, strict=True) if c[0] not in UNORDERED])
def test_severity_orders_a_simple_statistic(name, base):
    values = [_statistic(name, base, shift_images(base, name, s, seed=1)) for s in (0, *SEVERITIES)]
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] > values[0]


@pytest.mark.parametrize("name", ["gaussian_noise", "hflip", "pixel_permutation"])
def test_another_seed_gives_other_draws(name):
    assert not np.array_equal(shift_images(COLOUR, name, 3, seed=0).images,
                              shift_images(COLOUR, name, 3, seed=1).images)


def test_the_hypothesis_shifts_do_what_they_claim():
    x = COLOUR.images.astype(np.int64)
    assert np.array_equal(shift_images(COLOUR, "invert", 5).images, 255 - x)
    assert np.array_equal(np.sort(shift_images(COLOUR, "pixel_permutation", 5).images.reshape(24, 3, -1)),
                          np.sort(COLOUR.images.reshape(24, 3, -1)))  # every marginal kept
    scaled = shift_images(COLOUR, "contrast_scale", 2).images.astype(np.float64)
    ratio = scaled.reshape(24, -1).std(1) / x.reshape(24, -1).std(1)  # each image's spread times 0.6, its mean kept
    assert np.allclose(ratio, 0.6, atol=0.02) and np.allclose(scaled.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.6)
    assert np.array_equal(shift_images(COLOUR, "channel_permutation", 5).images, COLOUR.images[:, ::-1])


def test_bad_shifts_are_one_clear_error():
    with pytest.raises(DataError, match="unknown shift 'blurry'"):
        shift_images(GREY, "blurry", 1)
    with pytest.raises(DataError, match="from 0 to 5, got 6"):
        shift_images(GREY, "fog", 6)
    with pytest.raises(DataError, match="saturate changes colour"):
        shift_images(GREY, "saturate", 1)
    with pytest.raises(DataError, match="is not a shift"):
        parse_source("shift:fog:nine")


def test_a_shift_is_a_source_of_in_test_or_of_another_set(tmp_path):
    assert parse_source("shift:contrast:3") == ("contrast", 3, None)
    assert parse_source("shift:fog:2:mnist") == ("fog", 2, "mnist")
    check_name("shift:jpeg:4")
    out = open_out("shift:contrast:3", (1, 28, 28), in_test=GREY)
    assert np.array_equal(out.images, shift_images(GREY, "contrast", 3).images)
    assert out.source == f"shift:contrast:3:{GREY.source}"
    np.save(tmp_path / "other.npy", GREY.images[:, 0])
    of_file = open_out(f"shift:hflip:5:{tmp_path / 'other.npy'}", (1, 28, 28))
    assert np.array_equal(of_file.images, GREY.images[..., ::-1]) and of_file.files[0].sha256
    with pytest.raises(DataError, match="shifts IN-test, which was not given"):
        open_out("shift:contrast:3", (1, 28, 28))
