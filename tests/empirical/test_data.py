"""Readers on small official-format files (plain, .gz, .xz), root lookup, errors, and the real mirror."""

import hashlib

import numpy as np
import pytest

from empirical.data import registry as data
from empirical.io.errors import DataError
from tests import datafiles
from tests.helpers import SHARED_DATA

SUFFIXES = ["", ".gz", ".xz"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DGM_OOD_DATA", raising=False)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_cifar10_batches(tmp_path, suffix):
    written = datafiles.write_cifar10(tmp_path, n=7, suffix=suffix)
    x, y, _ = data.load("cifar10", "train", tmp_path, allow_nonstandard=True)
    assert x.shape == (35, 3, 32, 32) and x.dtype == np.uint8
    assert np.array_equal(x[:7], written["data_batch_1"][0]) and np.array_equal(y[7:14], written["data_batch_2"][1])
    xt, _, _ = data.load("cifar10", "test", tmp_path, allow_nonstandard=True)
    assert np.array_equal(xt, written["test_batch"][0])


def test_cifar10_official_archive(tmp_path):
    written = datafiles.write_cifar10_archive(tmp_path, n=4)
    x, y, _ = data.load("cifar10", "test", tmp_path, allow_nonstandard=True)
    assert np.array_equal(x, written["test_batch"][0]) and np.array_equal(y, written["test_batch"][1])


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100" / "cifar-100-python"
    folder.mkdir(parents=True)
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    (folder / "test").write_bytes(datafiles.cifar_batch(x, np.array([0, 99, 5, 6, 7]), key=b"fine_labels"))
    xt, yt, _ = data.load("cifar100", "test", tmp_path, allow_nonstandard=True)
    assert np.array_equal(xt, x) and yt.tolist() == [0, 99, 5, 6, 7]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name,folder", [("mnist", "mnist"), ("fashionmnist", "fashion-mnist"),
                                         ("mnist", "MNIST/raw")])
def test_idx(tmp_path, suffix, name, folder):
    written = datafiles.write_idx_dataset(tmp_path, folder, n=6, suffix=suffix)
    for split in ("train", "test"):
        x, y, _ = data.load(name, split, tmp_path, allow_nonstandard=True)
        assert x.shape == (6, 1, 28, 28)
        assert np.array_equal(x[:, 0], written[split][0]) and np.array_equal(y, written[split][1])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_svhn_mat(tmp_path, suffix):
    written = datafiles.write_svhn(tmp_path, n=9, suffix=suffix)
    x, y, _ = data.load("svhn", "test", tmp_path, allow_nonstandard=True)
    raw_x, raw_y = written["test"]
    assert x.shape == (9, 3, 32, 32)
    assert np.array_equal(x, raw_x.transpose(3, 2, 0, 1))
    expected = raw_y.ravel().astype(int)
    expected[expected == 10] = 0
    assert np.array_equal(y, expected) and y.max() <= 9


def test_missing_svhn_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"test_32x32\.mat[\s\S]*svhn/[\s\S]*download") as err:
        data.load("svhn", "test", tmp_path)
    assert str(tmp_path) in str(err.value)


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*cifar10"):
        data.load("imagenet", "test")
    with pytest.raises(DataError, match="unknown split 'valid'"):
        data.load("mnist", "valid")


def test_truncated_idx_is_a_clear_error(tmp_path):
    datafiles.write_idx_dataset(tmp_path, "mnist", n=4)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load("mnist", "test", tmp_path, allow_nonstandard=True)


def test_truncated_xz_is_a_clear_error(tmp_path):
    datafiles.write_cifar10(tmp_path, n=3, suffix=".xz")
    path = tmp_path / "cifar-10" / "cifar-10-batches-py" / "test_batch.xz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt or truncated file .*test_batch.xz"):
        data.load("cifar10", "test", tmp_path, allow_nonstandard=True)


def test_corrupt_pickle_and_mat(tmp_path):
    datafiles.write_cifar10(tmp_path, n=3)
    (tmp_path / "cifar-10" / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="corrupt CIFAR pickle"):
        data.load("cifar10", "test", tmp_path, allow_nonstandard=True)
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="corrupt SVHN file"):
        data.load("svhn", "test", tmp_path, allow_nonstandard=True)


def test_non_official_count_needs_explicit_permission(tmp_path):
    datafiles.write_idx_dataset(tmp_path, "mnist", n=5)
    with pytest.raises(DataError, match="5 images, the official split has 10000"):
        data.load("mnist", "test", tmp_path)


def test_root_lookup_order_and_no_silent_fallback(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    a = datafiles.write_idx_dataset(explicit, "mnist", n=3, seed=1)
    b = datafiles.write_idx_dataset(env, "mnist", n=3, seed=2)
    monkeypatch.setenv("DGM_OOD_DATA", str(env))
    assert np.array_equal(data.load("mnist", "test", explicit, allow_nonstandard=True).images[:, 0], a["test"][0])
    assert np.array_equal(data.load("mnist", "test", allow_nonstandard=True).images[:, 0], b["test"][0])
    assert data.candidate_roots(explicit) == [explicit] and data.candidate_roots() == [env]
    with pytest.raises(DataError, match="does not exist, and it is used alone"):  # a typo never falls back
        data.load("mnist", "test", tmp_path / "typo", allow_nonstandard=True)
    monkeypatch.setenv("DGM_OOD_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"\$DGM_OOD_DATA=.*does not exist"):
        data.load("mnist", "test", allow_nonstandard=True)
    monkeypatch.delenv("DGM_OOD_DATA")
    roots = data.candidate_roots()
    assert roots[0].name == "data" and roots[1].parts[-2:] == ("shared", "data")


def test_cache_returns_the_same_arrays_and_records_the_files(tmp_path):
    datafiles.write_idx_dataset(tmp_path, "mnist", n=4)
    first = data.load("mnist", "test", tmp_path, allow_nonstandard=True)
    assert list((tmp_path / "cache").glob("mnist-test-*.npz"))
    second = data.load("mnist", "test", tmp_path, allow_nonstandard=True)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert first.files == second.files and len(first.files) == 2
    image_file = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    assert first.files[0].path == "$DATA/mnist/t10k-images-idx3-ubyte"
    assert first.files[0].bytes == image_file.stat().st_size
    assert first.files[0].sha256 == hashlib.sha256(image_file.read_bytes()).hexdigest()


REAL = [("cifar10", "train", 50_000, [125.3, 123.0, 113.9]), ("cifar10", "test", 10_000, [126.0, 123.7, 114.9]),
        ("cifar100", "test", 10_000, [129.7, 124.3, 112.7]), ("mnist", "train", 60_000, [33.3]),
        ("mnist", "test", 10_000, [33.8]), ("fashionmnist", "train", 60_000, [72.9]),
        ("fashionmnist", "test", 10_000, [73.1])]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the offline mirror ../shared/data is absent")
@pytest.mark.parametrize("name,split,count,channel_means", REAL)
def test_real_mirror(name, split, count, channel_means):
    """Counts and per-channel means within 0.5 of the mirror README's values."""
    x, y, _ = data.load(name, split, SHARED_DATA)
    assert x.shape == (count, *data.DATASETS[name].shape) and len(y) == count
    assert np.allclose(x.mean(axis=(0, 2, 3)), channel_means, atol=0.5)
