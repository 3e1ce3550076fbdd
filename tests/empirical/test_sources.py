"""Image sources: arrays, folders and Python objects become ImageSets; layouts, parts, the split rule, shape mapping,
provenance and the content digest."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from empirical.data import sources
from empirical.data.imageset import ShapeMap, as_image_set, map_to, to_nchw
from empirical.data.sources import DataOptions, open_in, open_out, synthetic
from empirical.io.errors import DataError
from tests import datafiles


def _grey(n: int, h: int = 28, w: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def _write_pngs(folder, images: np.ndarray, prefix: str = "img") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(images):
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(x if x.ndim == 2 else x.transpose(1, 2, 0)).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("text,path", [("mnist", False), ("noise", False), ("./photos", True), ("a/b", True),
                                       ("x.npy", True), ("x.npz", True), ("x.npz:images", True)])
def test_a_source_is_a_path_exactly_when_it_says_so(text, path):
    assert sources.is_path(text) is path


def test_unknown_registry_names_list_what_is_known():
    with pytest.raises(DataError, match="known datasets: cifar10.*or a path"):
        sources.check_name("imagenet")


# -------------------------------------------------------------------------------------------------- arrays
@pytest.mark.parametrize("text,message", [
    ("noise", "synthetic OUT set; IN needs real training images"),
    ("shift:gaussian_blur:2", "is a shift, an OUT set"),
    ("shift:gaussian_blur:2:fashionmnist", "is a shift, an OUT set"),
])
def test_in_must_be_real_training_images(text, message):
    with pytest.raises(DataError, match=message):
        open_in(text)


@pytest.mark.parametrize("text,message", [("./no/such.npz", "no such file or folder: no/such.npz"),
                                          ("./no/such.npz:images", "no such file or folder: no/such.npz"),
                                          ("shift:hflip:1:./no/such", "no such file or folder: no/such")])
def test_a_path_that_does_not_exist_is_named_before_any_work(text, message):
    with pytest.raises(DataError, match=message):
        sources.check_name(text)


@pytest.mark.parametrize("shape,layout,expected", [((5, 28, 28), None, (5, 1, 28, 28)),
                                                   ((5, 32, 32, 3), None, (5, 3, 32, 32)),
                                                   ((5, 3, 32, 32), None, (5, 3, 32, 32)),
                                                   ((5, 1, 28, 28), None, (5, 1, 28, 28)),
                                                   ((5, 3, 8, 3), "nhwc", (5, 3, 3, 8)),
                                                   ((5, 3, 8, 3), "nchw", (5, 3, 8, 3))])
def test_array_layouts(shape, layout, expected):
    a = np.arange(np.prod(shape), dtype=np.int64).reshape(shape) % 256
    out = to_nchw(a, "a", layout)
    assert out.shape == expected and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    if layout == "nhwc" or (layout is None and shape[-1] == 3 and shape[1] != 3):
        assert np.array_equal(out[1, 2], a[1, ..., 2])  # channel 2 of image 1


@pytest.mark.parametrize("array,message", [
    (np.zeros((4, 3, 8, 3), dtype=np.uint8), "layout=nchw or layout=nhwc"),
    (np.zeros((4, 5, 8, 8), dtype=np.uint8), "no axis of 1 or 3 channels"),
    (np.zeros((4, 8), dtype=np.uint8), "got 2 dimensions"),
    (np.zeros((2, 4, 4), dtype=np.float32), "float32, expected uint8.*multiply by 255"),
    (np.full((2, 4, 4), 256, dtype=np.int64), "values 256..256 lie outside 0..255"),
    (np.full((2, 4, 4), -1, dtype=np.int16), "outside 0..255"),
    (np.zeros((2, 4, 4), dtype=bool), "bool, expected uint8"),
])
def test_bad_arrays_are_refused_with_the_reason(array, message):
    with pytest.raises(DataError, match=message):
        to_nchw(array, "scans.npy")


def test_integer_arrays_within_range_are_read_exactly():
    a = np.array([[[0, 255], [17, 3]]], dtype=np.int64)
    assert np.array_equal(to_nchw(a, "a")[0, 0], a[0])


def test_npy_and_npz_sources(tmp_path):
    images = _grey(30)
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "parts.npz", train=images[:20], test=images[20:])
    np.savez(tmp_path / "one.npz", anything=images)
    np.savez(tmp_path / "many.npz", x=images, y=np.zeros(30))
    train, test = open_in(str(tmp_path / "a.npy"))
    assert len(train) == 27 and len(test) == 3 and "split: every 10th image" in test.transforms[0]
    assert np.array_equal(test.images[:, 0], images[9::10])
    train, test = open_in(str(tmp_path / "parts.npz"))
    assert np.array_equal(train.images[:, 0], images[:20]) and np.array_equal(test.images[:, 0], images[20:])
    assert train.name == "parts.npz-train" and not train.transforms
    out = open_out(str(tmp_path / "one.npz"), (1, 28, 28))
    assert len(out) == 30 and out.name == "one.npz" and out.kind == "npz"
    assert len(open_out(str(tmp_path / "parts.npz"), (1, 28, 28))) == 10  # OUT takes the test part
    with pytest.raises(DataError, match=r"holds 2 arrays \(x, y\).*many.npz:KEY"):
        open_out(str(tmp_path / "many.npz"), (1, 28, 28))
    assert len(open_out(f"{tmp_path / 'many.npz'}:x", (1, 28, 28))) == 30
    with pytest.raises(DataError, match="has no array 'z'"):
        open_out(f"{tmp_path / 'many.npz'}:z", (1, 28, 28))
    record = train.files[0]
    assert record.sha256 == hashlib.sha256((tmp_path / "parts.npz").read_bytes()).hexdigest()


def test_a_pickled_array_is_refused_and_never_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled .object. array.*never unpickles"):
        open_out(str(tmp_path / "obj.npy"), (1, 28, 28))


@pytest.mark.parametrize("content,message", [(b"not numpy", "not a readable NumPy file"), (b"", "not a readable")])
def test_corrupt_array_files(tmp_path, content, message):
    for name in ("bad.npy", "bad.npz"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message):
            open_out(str(tmp_path / name), (1, 28, 28))


def test_missing_paths_and_wrong_suffixes(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        open_out(str(tmp_path / "nothing.npy"), (1, 28, 28))
    (tmp_path / "scans.txt").write_text("x")
    with pytest.raises(DataError, match="must be an .npy or .npz"):
        open_out(str(tmp_path / "scans.txt"), (1, 28, 28))


def test_too_few_images_to_split(tmp_path):
    np.save(tmp_path / "few.npy", _grey(5))
    with pytest.raises(DataError, match="too few to split"):
        open_in(str(tmp_path / "few.npy"))


# ------------------------------------------------------------------------------------------------- folders
def test_flat_and_class_folders_in_sorted_path_order(tmp_path):
    images = _grey(12)
    _write_pngs(tmp_path / "flat", images)
    (tmp_path / "flat" / ".DS_Store").write_bytes(b"\0junk")  # hidden: skipped
    out = open_out(str(tmp_path / "flat"), (1, 28, 28))
    assert np.array_equal(out.images[:, 0], images) and out.kind == "folder"
    (record,) = out.files
    assert record.count == 12 and record.path == str((tmp_path / "flat").resolve())
    _write_pngs(tmp_path / "classes" / "b", images[6:])
    _write_pngs(tmp_path / "classes" / "a", images[:6])
    assert np.array_equal(open_out(str(tmp_path / "classes"), (1, 28, 28)).images[:, 0], images)


def test_a_folder_with_train_and_test_parts_and_rgb_images(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    _write_pngs(tmp_path / "set" / "train", rgb[:4])
    _write_pngs(tmp_path / "set" / "test", rgb[4:])
    train, test = open_in(str(tmp_path / "set"))
    assert np.array_equal(train.images, rgb[:4]) and np.array_equal(test.images, rgb[4:])
    assert train.files != test.files and train.name == "set/-train"


def test_palette_and_bilevel_images_are_converted_losslessly(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    grey = _grey(1)[0]
    Image.fromarray(np.stack([grey] * 3, -1)).convert("P").save(folder / "a.png")
    Image.fromarray(np.stack([grey] * 3, -1)).convert("P").save(folder / "b.gif")
    out = open_out(str(folder), (3, 28, 28))
    assert out.shape == (3, 28, 28)


@pytest.mark.parametrize("case,message", [
    ("empty", "holds no image files"),
    ("text", "readme.txt is not an image file Pillow can read"),
    ("truncated", "corrupt or truncated image .*img000.png"),
    ("sizes", r"different sizes.*1×28×28 \(3 files.*1×20×20 \(1 files, e.g. odd.png"),
    ("rgba", "has an alpha channel"),
    ("sixteen", "Pillow mode I;16"),
])
def test_bad_folders_name_the_file_and_the_problem(tmp_path, case, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    if case == "text":
        _write_pngs(folder, _grey(2))
        (folder / "readme.txt").write_text("notes")
    elif case == "truncated":
        (path,) = _write_pngs(folder, _grey(1))
        path.write_bytes(path.read_bytes()[:60])
    elif case == "sizes":
        _write_pngs(folder, _grey(3))
        Image.fromarray(_grey(1, 20, 20)[0]).save(folder / "odd.png")
    elif case == "rgba":
        Image.new("RGBA", (28, 28)).save(folder / "a.png")
    elif case == "sixteen":
        Image.fromarray(np.zeros((28, 28), dtype=np.uint16)).save(folder / "a.png")
    with pytest.raises(DataError, match=message):
        open_out(str(folder), (1, 28, 28))


# ------------------------------------------------------------------------------------------ Python objects
def test_python_objects(tmp_path):
    images = _grey(4)
    assert np.array_equal(as_image_set(images).images[:, 0], images)
    assert np.array_equal(as_image_set(torch.from_numpy(images)).images[:, 0], images)
    pil = [(Image.fromarray(x), 0) for x in images]  # a torchvision-style dataset: (image, label) items
    assert np.array_equal(as_image_set(pil, "mine").images[:, 0], images)
    tensors = [torch.from_numpy(x)[None] for x in images]  # C×H×W uint8 tensors, as PILToTensor gives
    assert np.array_equal(as_image_set(tensors).images[:, 0], images)
    with pytest.raises(DataError, match="float32.*refusing"):
        as_image_set([(torch.rand(1, 28, 28), 0)])
    with pytest.raises(DataError, match="cannot read images from a int"):
        as_image_set(3)


def test_the_digest_follows_the_content():
    images = _grey(4)
    a, b = as_image_set(images), as_image_set(images.copy())
    assert a.digest == b.digest
    changed = images.copy()
    changed[3, 27, 27] ^= 1
    assert as_image_set(changed).digest != a.digest


# ------------------------------------------------------------------------------------------------ mapping
def test_mapping_is_explicit_and_recorded():
    grey = as_image_set(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28), "g")
    with pytest.raises(DataError, match=r"pass ShapeMap\(match=True\).*or ShapeMap\(resize=FILTER\)") as err:
        map_to(grey, (3, 32, 32))
    assert "pass --match" in err.value.for_cli() and "or --resize FILTER" in err.value.for_cli()  # the commands' words
    rgb = map_to(grey, (3, 32, 32), ShapeMap(match=True))
    assert rgb.shape == (3, 32, 32) and (rgb.images[:, :, :2] == 0).all()
    assert np.array_equal(rgb.images[:, 1, 2:30, 2:30], grey.images[:, 0])
    assert rgb.transforms == ("grey → RGB: the grey channel copied to R, G and B",
                              "zero-padded (2 px top, 2 bottom, 2 left, 2 right) 28×28 → 32×32")
    back = map_to(rgb, (1, 28, 28), ShapeMap(match=True))
    assert np.array_equal(back.images, grey.images) and "centre-cropped" in back.transforms[-1]
    small = map_to(grey, (1, 14, 14), ShapeMap(resize="box"))
    assert small.images[0, 0, 0, 0] == int(grey.images[0, 0, :2, :2].mean() + 0.5)  # the 2×2 box, rounded
    assert "resized 28×28 → 14×14 with Pillow's box filter" in small.transforms[-1]
    with pytest.raises(DataError, match="one side grows, the other shrinks"):
        map_to(grey, (1, 32, 20), ShapeMap(match=True))


def test_synthetic_sets():
    const = synthetic("constant", (3, 8, 8), 5, 0)
    assert const.shape == (3, 8, 8) and (const.images == const.images[:, :, :1, :1]).all()
    noise = synthetic("noise", (1, 8, 8), 5, 0)
    assert noise.images.std() > 30 and "numpy seed 0" in noise.transforms[0]


def test_registry_sets_carry_their_files_and_flags(tmp_path):
    datafiles.write_idx_dataset(tmp_path, "mnist", n=3)
    with pytest.raises(DataError, match="the official split has 60000"):
        open_in("mnist", DataOptions(str(tmp_path)))
    train, test = open_in("mnist", DataOptions(str(tmp_path), allow_nonstandard=True))
    assert train.name == "MNIST-train" and test.nonstandard and len(test.files) == 2
    with pytest.raises(DataError, match=r"pass ShapeMap\(match=True\)"):
        open_out("mnist", (3, 32, 32), ShapeMap(), DataOptions(str(tmp_path), allow_nonstandard=True))
