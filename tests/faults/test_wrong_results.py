"""Paths that used to end with exit 0 and a wrong or mislabelled result: each now gives the right result or a
one-line error with exit 2."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from empirical.data import registry as data
from empirical.io.atomic import write_json
from empirical.io.errors import DgmOodError, TrainingError
from empirical.training import trainer as train_mod
from empirical.training.checkpoint import load_checkpoint, save_checkpoint
from empirical.training.loading import model_from_checkpoint
from empirical.training.presets import get_preset
from empirical.training.trainer import train
from tests import datafiles
from tests.faults.conftest import assert_one_line_error, cli, env_for, snapshot
from tests.helpers import registry_sets
from verify.predictions import _without_non_finite

COMPARE = "verify.compare"


def _compare(world, tmp, *args, **kw):
    return cli(COMPARE, *args, "--preset", "smoke", "--data-dir", world["data"], "--allow-nonstandard-data",
               "--runs-dir", tmp / "runs", "--out", tmp / "report", tmp=tmp, **kw)


# 1. the checkpoint is the truth ----------------------------------------------------------------------------
def test_checkpoint_trained_on_another_dataset_is_refused(world, tmp_path):
    proc = _compare(world, tmp_path, "mnist", "fashionmnist", "--checkpoint", world["ckpt"]["cvglow"])
    assert_one_line_error(proc, "trained on fashionmnist, not on mnist")
    assert not (tmp_path / "report" / "results.json").exists()


@pytest.mark.parametrize("family", ["glow", "pixelcnn"])
def test_family_comes_from_the_checkpoint(world, tmp_path, family):
    proc = _compare(world, tmp_path, "fashionmnist", "mnist", "--checkpoint", world["ckpt"][family])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    assert res["model"] == family and f"under {family}" in (tmp_path / "report" / "report.md").read_text()


def test_contradicting_model_flag_is_refused(world, tmp_path):
    proc = _compare(world, tmp_path, "fashionmnist", "mnist", "--checkpoint", world["ckpt"]["glow"],
                    "--model", "cvglow")
    assert_one_line_error(proc, "is a glow checkpoint, not cvglow")


def test_shipped_weights_name_their_family_through_their_card(world, tmp_path):
    from empirical.training.shipped import WEIGHTS

    proc = _compare(world, tmp_path, "fashionmnist", "mnist", "--checkpoint",
                    str(WEIGHTS / "fashionmnist-cvglow-cpu.safetensors"), "--model", "pixelcnn")
    assert_one_line_error(proc, "is a cvglow checkpoint, not pixelcnn")


# 2. non-finite numbers ---------------------------------------------------------------------------------------
def test_nan_weights_stop_the_run_without_a_verdict(world, tmp_path):
    payload = load_checkpoint(world["ckpt"]["cvglow"])
    key = next(k for k, v in payload["model_state"].items() if v.is_floating_point() and v.numel() > 1)
    payload["model_state"][key][0] = float("nan")
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, {k: v for k, v in payload.items() if k != "format"})
    proc = _compare(world, tmp_path, "fashionmnist", "mnist", "--checkpoint", bad)
    assert_one_line_error(proc, "non-finite weights", key)
    assert not (tmp_path / "report" / "results.json").exists()


def test_results_json_is_strict(tmp_path):
    with pytest.raises(DgmOodError, match="non-finite"):
        write_json(tmp_path / "r.json", {"gap": float("nan")})
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.iterdir())


def test_a_non_finite_prediction_is_reported_as_na():
    theory = {"prediction": {"closed_form": {"gap_nats": 3.0}, "exact_second_order": {"gap_nats": math.inf},
                             "averaged_curvature": None}, "quadratic_check": None, "graying": [0.0, math.nan],
              "closed": [1.0, 2.0], "hessian_spectrum": None, "linear_path_check": None}
    clean = _without_non_finite(theory)
    assert clean["prediction"]["exact_second_order"] is None and clean["graying"] is None
    assert clean["prediction"]["closed_form"] == {"gap_nats": 3.0}
    assert "exact_second_order" in clean["prediction"]["note"] and "graying" in clean["prediction"]["note"]


# 3. an inf/NaN gradient never reaches a checkpoint ---------------------------------------------------------
def _poison(monkeypatch, after: int, what: str) -> None:
    """From the ``after``-th backward pass on, an inf gradient in the model's first parameter (``grad``); or at the
    ``after``-th optimizer step, a NaN in it (``param``)."""
    calls = {"n": 0}

    def count() -> bool:
        calls["n"] += 1
        return calls["n"] >= after

    if what == "grad":
        real_build = train_mod.build_model

        def build(*a, **k):
            model = real_build(*a, **k)
            next(model.parameters()).register_hook(lambda g: g * math.inf if count() else g)
            return model

        monkeypatch.setattr(train_mod, "build_model", build)
    else:
        real_step = torch.optim.Adam.step

        def step(self, *a, **k):
            out = real_step(self, *a, **k)
            if count() and calls["n"] == after:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(math.nan)
            return out

        monkeypatch.setattr(torch.optim.Adam, "step", step)


@pytest.mark.parametrize("what,after,message", [
    ("grad", 3, "gradient became non-finite"),  # caught before the optimizer step
    ("param", 20, "parameters became non-finite"),  # on the step before a save (40): caught before writing
])
def test_non_finite_training_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch, what, after, message):
    out = tmp_path / "run"
    shutil.copytree(world["ckpt"]["cvglow"].parent, out)
    before = snapshot(out)
    _poison(monkeypatch, after, what)
    preset = get_preset("smoke", "cvglow", (1, 28, 28), steps=60)
    with pytest.raises(TrainingError, match=rf"{message}.*last good checkpoint is .*\(step 20\)"):
        train(*registry_sets("fashionmnist", world["data"]), "cvglow", preset, out, resume=True, progress=False)
    assert snapshot(out)["last.pt"] == before["last.pt"]
    model, *_ = model_from_checkpoint(out / "last.pt")  # loads: every weight finite


# 4. the data directory named is the one used, and reports say which files were read ------------------------
def test_data_dir_typo_is_an_error_not_a_fallback(world, tmp_path):
    proc = cli(COMPARE, "fashionmnist", "mnist", "--preset", "smoke", "--data-dir", tmp_path / "typo",
               "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", tmp=tmp_path)
    assert_one_line_error(proc, "does not exist", "used alone")
    proc = cli(COMPARE, "fashionmnist", "mnist", "--preset", "smoke", "--allow-nonstandard-data", "--runs-dir",
               tmp_path / "runs", tmp=tmp_path, env=env_for(tmp_path, DGM_OOD_DATA=str(tmp_path / "nowhere")))
    assert_one_line_error(proc, "$DGM_OOD_DATA")
    assert not (tmp_path / "runs" / "models").exists() or not any((tmp_path / "runs" / "models").iterdir())


def test_reports_record_the_files_read(world, tmp_path):
    proc = _compare(world, tmp_path, "fashionmnist", "mnist", "--checkpoint", world["ckpt"]["cvglow"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    for key, folder in (("in_test", "fashion-mnist"), ("out_test", "mnist")):
        files = res["data_files"][key]
        assert {os.path.basename(f["path"]) for f in files} == {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}
        for f in files:
            raw = (world["data"] / folder / os.path.basename(f["path"])).read_bytes()
            assert f["sha256"] == hashlib.sha256(raw).hexdigest() and f["bytes"] == len(raw)
    assert "data read (path, bytes, SHA-256" in (tmp_path / "report" / "report.md").read_text()


# 5. the decoded-array cache is keyed by content and verified -----------------------------------------------
@pytest.fixture
def idx_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DGM_OOD_KEY_FILE", str(tmp_path / "config" / "cache-key"))
    written = datafiles.write_idx_dataset(tmp_path / "data", "mnist", n=6)
    return tmp_path / "data", written


def _cached_entry(root, tmp_path):
    """Load once so the cache holds the split; its entry's path and fields."""
    data.load("mnist", "test", root, allow_nonstandard=True)
    (entry,) = (tmp_path / "cache").glob("mnist-test-*.npz")
    with np.load(entry) as z:
        return entry, dict(z)


def test_a_wrong_cache_entry_is_rebuilt(idx_root, tmp_path, capsys):
    root, written = idx_root
    entry, fields = _cached_entry(root, tmp_path)
    np.savez(entry, **{**fields, "images": np.zeros_like(fields["images"])})  # valid .npz, wrong pixels
    got = data.load("mnist", "test", root, allow_nonstandard=True)
    assert np.array_equal(got.images[:, 0], written["test"][0])
    assert "does not match its source" in capsys.readouterr().err
    entry.write_bytes(b"garbage")  # an unreadable entry is rebuilt too
    assert np.array_equal(data.load("mnist", "test", root, allow_nonstandard=True).images[:, 0], written["test"][0])


def test_a_cache_entry_failing_validation_is_rebuilt_not_blamed_on_the_source(idx_root, tmp_path, capsys):
    root, _ = idx_root
    entry, fields = _cached_entry(root, tmp_path)
    images, labels = fields["images"][:, :, :20], fields["labels"]  # self-consistent, but not 28×28
    source = str(fields["source_sha256"])  # sealed with this user's key, as an older reader's entry would be
    np.savez(entry, images=images, labels=labels, source_sha256=fields["source_sha256"],
             seal=np.array(data._seal(data._cache_key(), source, data._arrays_digest(images, labels))))
    got = data.load("mnist", "test", root, allow_nonstandard=True)
    assert got.images.shape == (6, 1, 28, 28) and "failed validation" in capsys.readouterr().err


def test_a_forged_cache_entry_with_matching_digests_is_rebuilt(idx_root, tmp_path, capsys):
    """Write access to the cache is not enough: an entry rewritten with its digests recomputed lacks the seal that
    only the user's key (kept outside the cache folder) can make."""
    root, written = idx_root
    entry, fields = _cached_entry(root, tmp_path)
    forged = np.full_like(fields["images"], 9)
    digest = data._arrays_digest(forged, fields["labels"])
    np.savez(entry, images=forged, labels=fields["labels"], source_sha256=fields["source_sha256"],
             arrays_sha256=np.array(digest), seal=np.array(data._seal(b"\0" * 32, str(fields["source_sha256"]),
                                                                       digest)))
    got = data.load("mnist", "test", root, allow_nonstandard=True)
    assert np.array_equal(got.images[:, 0], written["test"][0])
    assert "does not match its source" in capsys.readouterr().err
    assert (tmp_path / "config" / "cache-key").stat().st_mode & 0o777 == 0o600


def test_a_changed_source_with_its_mtime_restored_is_read_again(idx_root):
    root, written = idx_root
    data.load("mnist", "test", root, allow_nonstandard=True)
    path = root / "mnist" / "t10k-images-idx3-ubyte"
    stat = path.stat()
    new = np.full((6, 28, 28), 7, dtype=np.uint8)
    path.write_bytes(datafiles.idx_bytes(new, 2051))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert np.array_equal(data.load("mnist", "test", root, allow_nonstandard=True).images[:, 0], new)


# 6. pixel arrays of another dtype are refused, never cast ----------------------------------------------------
@pytest.mark.parametrize("pixels", [np.full((3, 3072), 300, dtype=np.int64), np.full((3, 3072), 0.5, dtype=np.float32)])
def test_non_uint8_cifar_pixels_are_refused(tmp_path, pixels):
    folder = tmp_path / "data" / "cifar-10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / stem).write_bytes(pickle.dumps({b"data": pixels, b"labels": [0, 1, 2]}))
    proc = cli("empirical.train", "--dataset", "cifar10", "--preset", "smoke", "--data-dir", tmp_path / "data",
               "--allow-nonstandard-data", "--out", tmp_path / "run", tmp=tmp_path)
    assert_one_line_error(proc, f"pixel data are {pixels.dtype}, expected uint8")
    assert not (tmp_path / "run").exists()
