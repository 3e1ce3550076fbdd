"""Random bytes and random truncations of official-format files never load: every one is a DataError."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from empirical.data import registry as data
from empirical.io.errors import DataError
from tests import datafiles

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
IMAGES = datafiles.idx_bytes(np.arange(5 * 28 * 28, dtype=np.uint64).reshape(5, 28, 28) % 256, 2051)
LABELS = datafiles.idx_bytes(np.arange(5) % 10, 2049)
CIFAR = datafiles.cifar_batch(np.zeros((4, 3, 32, 32), np.uint8), np.arange(4))


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _idx_folder(root, images: bytes, suffix: str = "") -> None:
    folder = root / "mnist"
    folder.mkdir(exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    (folder / f"t10k-images-idx3-ubyte{suffix}").write_bytes(gzip.compress(images) if suffix else images)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(LABELS)


def _cifar_folder(root, raw: bytes) -> None:
    folder = root / "cifar-10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_batch").write_bytes(raw)


def _refused(name: str, root) -> None:
    with pytest.raises(DataError):
        data.load(name, "test", root, allow_nonstandard=True, use_cache=False)


def test_the_unfuzzed_files_load(root):
    _idx_folder(root, IMAGES)
    assert data.load("mnist", "test", root, allow_nonstandard=True).images.shape == (5, 1, 28, 28)
    _cifar_folder(root, CIFAR)
    assert data.load("cifar10", "test", root, allow_nonstandard=True).images.shape == (4, 3, 32, 32)


@FUZZ
@given(raw=st.binary(max_size=4000))
def test_random_bytes_as_idx(root, raw):
    _idx_folder(root, raw)
    _refused("mnist", root)


@FUZZ
@given(cut=st.integers(0, len(IMAGES) - 1), gz=st.booleans())
def test_truncated_idx(root, cut, gz):
    _idx_folder(root, IMAGES[:cut], ".gz" if gz else "")
    _refused("mnist", root)


@FUZZ
@given(cut=st.integers(0, 2000), gz_bytes=st.binary(min_size=1, max_size=8))
def test_truncated_or_damaged_gzip(root, cut, gz_bytes):
    folder = root / "mnist"
    folder.mkdir(exist_ok=True)
    packed = gzip.compress(IMAGES)
    damaged = packed[:cut] + gz_bytes + packed[cut + len(gz_bytes):] if cut < len(packed) - 20 else packed[:cut]
    if _decompresses(damaged) and gzip.decompress(damaged) == IMAGES:
        return  # the damage fell on bytes that do not matter (the header's timestamp): the file is fine
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(damaged)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(LABELS)
    _refused("mnist", root)


def _decompresses(raw: bytes) -> bool:
    try:
        gzip.decompress(raw)
    except Exception:
        return False
    return True


@FUZZ
@given(raw=st.binary(max_size=4000))
def test_random_bytes_as_a_cifar_pickle(root, raw):
    _cifar_folder(root, raw)
    _refused("cifar10", root)


@FUZZ
@given(cut=st.integers(0, len(CIFAR) - 1))
def test_truncated_cifar_pickle(root, cut):
    _cifar_folder(root, CIFAR[:cut])
    _refused("cifar10", root)


@FUZZ
@given(value=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.binary(max_size=3), st.integers(), max_size=3)))
def test_well_formed_pickles_of_the_wrong_shape(root, value):
    _cifar_folder(root, pickle.dumps({b"data": value, b"labels": value}))
    _refused("cifar10", root)
