"""Issue 20, the newer surfaces tried as a hostile or careless user would: every case ends in a correct result or a
one-line ``error: …`` with exit 2, before any work, and no saved file changes."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil

import pytest
import torch

from empirical.cli import run_cli
from empirical.training.checkpoint import load_checkpoint, save_checkpoint
from tests import datafiles
from tests.faults.conftest import assert_one_line_error, cli, snapshot, write_tiny_idx

TRAIN, COMPARE, DETECT, EVALUATE, PREDICT, TABLE, TRANSFER = (
    "empirical.train", "verify.compare", "verify.detect", "empirical.evaluate", "theory.predict", "verify.table",
    "empirical.transfer")


def _data(world):
    return ("--data-dir", world["data"], "--allow-nonstandard-data")


def _copy_run(world, tmp, model="cvglow"):
    run = tmp / "run"
    shutil.copytree(world["ckpt"][model].parent, run)
    return run


# ------------------------------------------------------------------------- 1. resume on other data or settings
def test_resume_on_other_data_is_refused_and_nothing_changes(world, tmp_path):
    run = _copy_run(world, tmp_path)
    other = tmp_path / "other"
    write_tiny_idx(other, "fashion-mnist", 9)
    before = snapshot(run)
    proc = cli(TRAIN, "--dataset", "fashionmnist", "--model", "cvglow", "--preset", "smoke", "--out", run, "--resume",
               "--steps", "40", "--data-dir", other, "--allow-nonstandard-data", tmp=tmp_path)
    assert_one_line_error(proc, "was trained on other data")
    assert snapshot(run) == before


def test_resume_with_another_training_subset_is_refused(world, tmp_path):
    run = _copy_run(world, tmp_path)
    before = snapshot(run)
    proc = cli(TRAIN, "--dataset", "fashionmnist", "--model", "cvglow", "--preset", "smoke", "--out", run, "--resume",
               "--steps", "40", "--train-subset", "10", *_data(world), tmp=tmp_path)
    assert_one_line_error(proc, "was trained on 48 images", "--train-subset")
    assert snapshot(run) == before


# ------------------------------------------------------------------------------ 6. fewer steps than done
def test_resume_with_fewer_steps_than_done_keeps_the_record(world, tmp_path):
    run = _copy_run(world, tmp_path)
    before = snapshot(run)
    proc = cli(TRAIN, "--dataset", "fashionmnist", "--model", "cvglow", "--preset", "smoke", "--out", run, "--resume",
               "--steps", "10", *_data(world), tmp=tmp_path)
    assert_one_line_error(proc, "has already done 20 steps", "--steps ≥ 20")
    assert snapshot(run) == before


# --------------------------------------------------------------------------- 3. PLUMBING in verify.detect
def test_detect_labels_plumbing_runs(world, tmp_path):
    proc = cli(DETECT, "fashionmnist", "mnist", "noise", "--checkpoint", world["ckpt"]["cvglow"], *_data(world),
               "--json", tmp_path / "d.json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PLUMBING RUN" in proc.stdout
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["plumbing"] is True and set(saved["detection"]) == {"mnist", "noise"}


# ------------------------------------------------------------------------- 4. theory.predict's IN is checked
def test_predict_refuses_a_checkpoint_of_another_dataset(world, tmp_path):
    proc = cli(PREDICT, "mnist", "fashionmnist", "--checkpoint", world["ckpt"]["cvglow"], *_data(world),
               "--json", tmp_path / "p.json", tmp=tmp_path)
    assert_one_line_error(proc, "trained on fashionmnist, not on mnist")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("args,needle", [(("--samples", "-5"), "--samples must be ≥ 1"),
                                         (("--seed", "-1"), "--seed must be")])
def test_predict_settings(world, tmp_path, args, needle):
    proc = cli(PREDICT, "fashionmnist", "mnist", "--checkpoint", world["ckpt"]["cvglow"], *args, *_data(world),
               tmp=tmp_path)
    assert_one_line_error(proc, needle)


def test_predict_with_a_pixelcnn_says_why(world, tmp_path):
    proc = cli(PREDICT, "fashionmnist", "mnist", "--checkpoint", world["ckpt"]["pixelcnn"], *_data(world),
               tmp=tmp_path)
    assert_one_line_error(proc, "pixelcnn", "second-order theory does not apply")


# ---------------------------------------------------------------------- 5. one finite check for every command
@pytest.fixture
def overflowing(world, tmp_path):
    """Finite weights whose outputs overflow: 80 added to one actnorm log-scale."""
    payload = load_checkpoint(world["ckpt"]["cvglow"])
    state = payload["model_state"]
    key = next(k for k in state if k.endswith("actnorm.log_scale"))
    state[key] = state[key] + 80.0
    path = tmp_path / "overflow" / "last.pt"
    save_checkpoint(path, {k: v for k, v in payload.items() if k != "format"})
    return path


@pytest.mark.parametrize("module", [EVALUATE, DETECT, COMPARE])
def test_an_overflowing_model_gives_no_number_in_any_command(world, tmp_path, overflowing, module):
    args = {EVALUATE: ("--checkpoint", overflowing, "--dataset", "mnist"),
            DETECT: ("fashionmnist", "mnist", "--checkpoint", overflowing),
            COMPARE: ("fashionmnist", "mnist", "--checkpoint", overflowing, "--out", tmp_path / "r")}[module]
    proc = cli(module, *args, *_data(world), tmp=tmp_path)
    assert_one_line_error(proc, "non-finite log-likelihood")
    assert not (tmp_path / "r" / "results.json").exists()


# ------------------------------------------------------------------------------ output paths, before work
@pytest.mark.parametrize("module,args", [
    (TABLE, ("--preset", "smoke", "--in", "fashionmnist", "--out", "{file}/table")),
    (DETECT, ("fashionmnist", "mnist", "--checkpoint", "{ckpt}", "--json", "{file}/d.json")),
    (PREDICT, ("fashionmnist", "mnist", "--checkpoint", "{ckpt}", "--json", "{file}/p.json")),
    (EVALUATE, ("--checkpoint", "{ckpt}", "--dataset", "mnist", "--json", "{file}/e.json")),
    (EVALUATE, ("--checkpoint", "{ckpt}", "--dataset", "mnist", "--json", "{long}.json")),
    (COMPARE, ("fashionmnist", "mnist", "--preset", "smoke", "--out", "{bytes}")),
])
def test_output_paths_are_checked_before_any_work(world, tmp_path, module, args):
    (tmp_path / "afile").write_text("in the way")
    values = {"file": str(tmp_path / "afile"), "ckpt": str(world["ckpt"]["cvglow"]), "long": "x" * 236}
    argv = [a.format(**values) if "{bytes}" not in a else os.fsdecode(b"report-\xff") for a in args]
    proc = cli(module, *argv, *_data(world), "--runs-dir", tmp_path / "runs", tmp=tmp_path) \
        if module in (TABLE, COMPARE) else cli(module, *argv, *_data(world), tmp=tmp_path)
    assert_one_line_error(proc, {TABLE: "--out", DETECT: "--json", PREDICT: "--json", COMPARE: "UTF-8"}.get(
        module, "--json"))
    assert not (tmp_path / "runs").exists() and (tmp_path / "afile").read_text() == "in the way"


@pytest.mark.parametrize("module,args,needle", [
    ("verify.adversarial", ("fashionmnist", "--ood", "nosuch"), "unknown dataset 'nosuch'"),
    ("verify.adversarial", ("fashionmnist", "--ood", "./missing.npz"), "no such file or folder: missing.npz"),
    ("verify.shifts", ("fashionmnist", "--other-set", "./missing.npz"), "no such file or folder: missing.npz"),
    (COMPARE, ("fashionmnist", "./missing.npz:images"), "no such file or folder: missing.npz"),
])
def test_a_second_set_that_does_not_exist_is_refused_before_any_work(world, tmp_path, module, args, needle):
    proc = cli(module, *args, *_data(world), "--runs-dir", tmp_path / "runs", tmp=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("module,args,needle", [
    ("verify.shifts", ("--scores", "likelihood_ratio"), "asks for likelihood_ratio, which need a background model"),
    ("verify.shifts", ("--scores", "all"), "asks for the set all"),
    ("verify.shifts", ("--scores", "none"), "needs at least one score"),
    ("verify.shifts", ("--severities", "2,2"), "--severities names 2 more than once"),
    ("verify.shifts", ("--shifts", "hflip,vflip,hflip"), "--shifts names hflip more than once"),
    ("verify.adversarial", ("--scores", "model"), "asks for the set model"),
    ("verify.adversarial", ("--scores", "typicality,waic"), "asks for waic"),
])
def test_the_one_model_experiments_refuse_what_they_cannot_compute_before_any_work(world, tmp_path, module, args,
                                                                                    needle):
    proc = cli(module, "fashionmnist", *args, *_data(world), "--runs-dir", tmp_path / "runs", tmp=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "runs").exists()


def test_a_sweep_whose_scores_apply_to_no_model_writes_no_report(world, tmp_path):
    proc = cli("verify.shifts", "fashionmnist", "--checkpoint", world["ckpt"]["cvglow"], "--scores", "latent_nosuch",
               "--shifts", "hflip", "--severities", "1", "--limit", "4", "--other-set", "none", *_data(world),
               "--out", tmp_path / "r", tmp=tmp_path)
    assert_one_line_error(proc, "none of these scores applies to")
    assert not (tmp_path / "r" / "report.md").exists()


def test_a_bad_checkpoint_is_refused_before_the_classifier_trains(world, tmp_path):
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    proc = cli("verify.adversarial", "mnist", "--checkpoint", tmp_path / "bad.pt", "--preset", "smoke", *_data(world),
               "--runs-dir", tmp_path / "runs", tmp=tmp_path)
    assert_one_line_error(proc, "bad.pt")
    assert not (tmp_path / "runs" / "classifiers").exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_previous_report(world, tmp_path, monkeypatch, capsys):
    """ENOSPC simulated by a writer that fails after a few files (no root mounts): the report folder keeps the
    previous run's files, all of them, unchanged."""
    from empirical.io import atomic
    from verify import compare

    out = tmp_path / "report"
    argv = ["fashionmnist", "mnist", "--checkpoint", str(world["ckpt"]["cvglow"]), "--data-dir", str(world["data"]),
            "--allow-nonstandard-data", "--out", str(out)]
    assert run_cli(compare.main, argv) == 0
    before = snapshot(out)
    real, calls = atomic.atomic_write, {"n": 0}

    def full_disk(path, write):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(atomic, "atomic_write", full_disk)
    for module in ("verify.api", "verify.figures", "verify.report"):
        monkeypatch.setattr(f"{module}.atomic_write", full_disk, raising=False)
    capsys.readouterr()
    assert run_cli(compare.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no space left on the device") and "Traceback" not in "\n".join(err)
    assert snapshot(out) == before and not list(out.glob(".staging-*"))


# ----------------------------------------------------------------------------------------- --arch values
@pytest.mark.parametrize("model,arch,needle", [
    ("cvglow", "hidden=0", "hidden must be a whole number from 1 to 4,096, got 0"),
    ("cvglow", "hidden=-1", "hidden must be a whole number from 1 to 4,096, got -1"),
    ("cvglow", "hidden=abc", "hidden must be a whole number from 1 to 4,096, got 'abc'"),
    ("cvglow", "hidden=1.5", "hidden must be a whole number from 1 to 4,096, got 1.5"),
    ("cvglow", "hidden=100000000", "hidden must be a whole number from 1 to 4,096, got 100000000"),
    ("pixelcnn", "blocks=100000", "blocks must be a whole number from 0 to 256"),
    ("glow", "levels=0", "levels must be a whole number from 1 to 256"),
    ("glow", "levels=-1", "levels must be a whole number from 1 to 256"),
    ("glow", "coupling=foo", "coupling must be one of affine, additive"),
    ("glow", "lu=maybe", "lu must be true or false, got 'maybe'"),
    ("pixelcnn", "kernel=2", "kernel must be odd"),
    ("vae", "eval_samples=0", "eval_samples must be a whole number ≥ 1"),
])
def test_arch_values_are_validated_up_front(world, tmp_path, model, arch, needle):
    proc = cli(TRAIN, "--dataset", "fashionmnist", "--model", model, "--preset", "smoke", "--arch", arch,
               "--out", tmp_path / "run", *_data(world), tmp=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ other inputs
def test_an_idx_header_whose_dimensions_overflow(tmp_path):
    datafiles.write_idx_dataset(tmp_path / "data", "mnist", n=4)
    path = tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[4:16] = (2**32 - 1).to_bytes(4, "big") * 3  # 4294967295³ bytes claimed
    path.write_bytes(bytes(raw))
    proc = cli(COMPARE, "mnist", "noise", "--preset", "smoke", "--data-dir", tmp_path / "data",
               "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", tmp=tmp_path)
    assert_one_line_error(proc, "t10k-images-idx3-ubyte", "an official file holds at most 60000 items")


def test_a_gzip_bomb_is_refused_after_reading_what_an_official_file_can_hold(tmp_path):
    datafiles.write_idx_dataset(tmp_path / "data", "mnist", n=4)
    path = tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte"
    header = path.read_bytes()[:16]
    path.unlink()
    with gzip.open(path.with_suffix(".gz"), "wb", compresslevel=1) as f:  # 64 MiB of zeros in a few kB
        f.write(header)
        for _ in range(64):
            f.write(bytes(2**20))
    proc = cli(COMPARE, "mnist", "noise", "--preset", "smoke", "--data-dir", tmp_path / "data",
               "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", tmp=tmp_path)
    assert_one_line_error(proc, "holds more than", "decompressed")


@pytest.mark.parametrize("args,needle", [(("--seed", "-1"), "--seed must be"),
                                         (("--device", "cuda"), "CUDA device"),
                                         (("--device", "tpu"), "'tpu' is not a device name")])
def test_seed_and_device_before_training(world, tmp_path, args, needle):
    if args[1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = cli(COMPARE, "fashionmnist", "mnist", "--preset", "smoke", *args, *_data(world), "--runs-dir",
               tmp_path / "runs", "--out", tmp_path / "r", tmp=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "runs").exists()


def test_a_table_of_nothing_but_missing_svhn(world, tmp_path):
    proc = cli(TABLE, "--in", "svhn", "--preset", "smoke", *_data(world), "--runs-dir", tmp_path / "runs",
               "--out", tmp_path / "t", tmp=tmp_path)
    assert_one_line_error(proc, "nothing to tabulate", "SVHN")


# ------------------------------------------------------------------------------------------- transfer
@pytest.fixture
def split_run(world, tmp_path):
    run = _copy_run(world, tmp_path)
    proc = cli(TRANSFER, "split", run / "last.pt", "--max-mib", "0.01", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return run, run / "last.pt.parts.json"


@pytest.mark.parametrize("change,needle", [
    (lambda m: m.update(file="hparams.json"), "must describe 'last.pt'"),
    (lambda m: m.pop("file"), "must describe 'last.pt'"),
    (lambda m: m.update(parts=["last.pt.part-000"]), "each with name, bytes and sha256"),
    (lambda m: m.update(parts=[{"name": "last.pt.part-000"}]), "each with name, bytes and sha256"),
    (lambda m: m["parts"][0].update(name="../hparams.json"), "not a file of last.pt beside it"),
])
def test_join_trusts_no_name_from_the_manifest(split_run, tmp_path, change, needle):
    run, manifest = split_run
    spec = json.loads(manifest.read_text())
    change(spec)
    manifest.write_text(json.dumps(spec))
    (run / "last.pt").unlink()
    before = snapshot(tmp_path)
    assert_one_line_error(cli(TRANSFER, "join", manifest, tmp=tmp_path), needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_split_takes_regular_files_only(tmp_path, kind):
    path = tmp_path / "pipe"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    assert_one_line_error(cli(TRANSFER, "split", path, tmp=tmp_path, timeout=60), "not a regular file")
