"""Bad input that used to end in a traceback (or a misleading message): a one-line error with exit 2, checked
before any work is wasted and without touching what was saved."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil

import pytest

from empirical.training.checkpoint import load_checkpoint, save_checkpoint
from tests import datafiles
from tests.faults.conftest import assert_one_line_error, cli, env_for, snapshot

TRAIN = "empirical.train"


def _train(world, tmp, *args):
    return cli(TRAIN, "--dataset", "fashionmnist", "--preset", "smoke", "--data-dir", world["data"],
               "--allow-nonstandard-data", "--no-progress", *args, tmp=tmp)


def test_a_corrupt_deflate_stream_inside_a_gz(tmp_path):
    datafiles.write_idx_dataset(tmp_path / "data", "mnist", n=4, suffix=".gz")
    path = tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[20:40] = b"\xff" * 20  # the header stays valid; the deflate stream does not
    path.write_bytes(bytes(raw))
    with gzip.open(path) as f, pytest.raises(Exception):  # noqa: B017 (zlib.error or BadGzipFile, as torch would hit)
        f.read()
    proc = cli("verify.compare", "mnist", "noise", "--preset", "smoke", "--data-dir", tmp_path / "data",
               "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", tmp=tmp_path)
    assert_one_line_error(proc, "corrupt or truncated file", "t10k-images-idx3-ubyte.gz")


@pytest.mark.parametrize("labels,what", [({"a": 1}, "got dict"), (["0", "1"], "got list of str"),
                                         (b"\x00\x01", "got bytes")])
def test_cifar_labels_of_the_wrong_python_type(tmp_path, labels, what):
    import numpy as np

    folder = tmp_path / "data" / "cifar-10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / stem).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}))
    proc = cli(TRAIN, "--dataset", "cifar10", "--preset", "smoke", "--data-dir", tmp_path / "data",
               "--allow-nonstandard-data", "--out", tmp_path / "run", tmp=tmp_path)
    assert_one_line_error(proc, "labels must be a list of ints", what)


def test_out_under_a_regular_file_fails_before_training(world, tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = cli("verify.compare", "fashionmnist", "mnist", "--preset", "smoke", "--data-dir", world["data"],
               "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", "--out", tmp_path / "afile" / "report",
               tmp=tmp_path)
    assert_one_line_error(proc, "--out", "afile")
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_runs_dir_under_a_regular_file(world, tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = cli("verify.compare", "fashionmnist", "mnist", "--preset", "smoke", "--data-dir", world["data"],
               "--allow-nonstandard-data", "--runs-dir", tmp_path / "afile", "--out", tmp_path / "report",
               tmp=tmp_path)
    assert_one_line_error(proc, "--runs-dir", "afile")


@pytest.mark.parametrize("args,needles", [
    (["--lr", "-1"], ["lr must be a finite number > 0", "--lr", "-1"]),
    (["--lr", "nan"], ["lr must be a finite number > 0"]),
    (["--steps", "0"], ["steps must be a whole number ≥ 1", "--steps"]),
    (["--batch-size", "0"], ["batch_size must be a whole number ≥ 1", "--batch-size"]),
    (["--warmup", "0"], ["warmup must be a whole number ≥ 1"]),
    (["--train-subset", "-5"], ["--train-subset must be ≥ 1"]),
])
def test_bad_training_settings(world, tmp_path, args, needles):
    proc = _train(world, tmp_path, "--out", tmp_path / "run", *args)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_negative_limit(world, tmp_path):
    proc = cli("empirical.evaluate", "--checkpoint", world["ckpt"]["cvglow"], "--dataset", "mnist", "--data-dir",
               world["data"], "--limit", "-3", tmp=tmp_path)
    assert_one_line_error(proc, "--limit must be ≥ 1", "-3")


def test_a_checkpoint_whose_config_does_not_match_its_tensors(world, tmp_path):
    payload = load_checkpoint(world["ckpt"]["cvglow"])
    payload["model_config"]["hidden"] = 32  # the tensors were made with 16
    save_checkpoint(tmp_path / "odd.pt", {k: v for k, v in payload.items() if k != "format"})
    proc = cli("empirical.evaluate", "--checkpoint", tmp_path / "odd.pt", "--dataset", "mnist", "--data-dir",
               world["data"], tmp=tmp_path)
    last = assert_one_line_error(proc, "does not match the model its config describes", "shapes differ")
    assert len(proc.stderr.strip().splitlines()) == 1, last


def test_resume_accepts_a_lower_learning_rate_and_records_it(world, tmp_path):
    """The NaN message advises --resume --lr/--warmup: that advice works, and the change is recorded."""
    run = tmp_path / "run"
    shutil.copytree(world["ckpt"]["cvglow"].parent, run)
    proc = _train(world, tmp_path, "--model", "cvglow", "--out", run, "--resume", "--steps", "40", "--lr", "5e-4",
                  "--warmup", "20", "--eval-every", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = load_checkpoint(run / "last.pt")
    assert payload["step"] == 40 and payload["train_config"]["lr"] == 5e-4
    assert [h["step"] for h in payload["history"]] == [20, 25, 30, 35, 40]  # --eval-every: the curve's points
    assert payload["schedule_changes"] == [{"step": 20, "lr": [2e-3, 5e-4], "warmup": [10, 20]}]
    assert json.loads((run / "hparams.json").read_text())["schedule_changes"] == payload["schedule_changes"]
    before = snapshot(run)
    proc = _train(world, tmp_path, "--model", "cvglow", "--out", run, "--resume", "--steps", "60", "--batch-size", "8")
    assert_one_line_error(proc, "other hyperparameters", "--lr, --warmup and --eval-every")
    assert snapshot(run) == before


def test_in_equal_to_out_says_the_sets_are_identical(world, tmp_path):
    proc = cli("verify.compare", "fashionmnist", "fashionmnist", "--checkpoint", world["ckpt"]["cvglow"], "--preset",
               "smoke", "--data-dir", world["data"], "--allow-nonstandard-data", "--out", tmp_path / "r", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["gap_nats"] == 0.0 and "same images" in res["verdict"] and "same sign" not in res["verdict"]
    assert set(res["agreement"].values()) == {None}


def test_world_size_without_torchrun(world, tmp_path):
    proc = cli(TRAIN, "--dataset", "fashionmnist", "--preset", "smoke", "--data-dir", world["data"],
               "--allow-nonstandard-data", "--out", tmp_path / "run", tmp=tmp_path,
               env=env_for(tmp_path, WORLD_SIZE="2"))
    assert_one_line_error(proc, "WORLD_SIZE=2", "torchrun", "RANK")
    assert not (tmp_path / "run" / "last.pt").exists()
