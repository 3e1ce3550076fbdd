"""Data safety and security: nothing saved is deleted, nothing loaded runs code, modes follow the umask, one
writer per run folder."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from empirical.io.atomic import write_json
from empirical.io.locking import LOCK_NAME, run_lock
from empirical.training.checkpoint import load_checkpoint, save_checkpoint
from empirical.training.presets import get_preset
from tests.faults.conftest import REPO, assert_one_line_error, cli, env_for, snapshot
from tests.helpers import registry_sets
from verify.runs import run_name


def _cached_dir(world, tmp, model="cvglow"):
    sets = registry_sets("fashionmnist", world["data"])
    return tmp / "runs" / "models" / run_name(*sets, model, get_preset("smoke", model, (1, 28, 28)))


def _compare(world, tmp, *args):
    return cli("verify.compare", "fashionmnist", "mnist", "--preset", "smoke", "--data-dir", world["data"],
               "--allow-nonstandard-data", "--runs-dir", tmp / "runs", "--out", tmp / "report", *args, tmp=tmp)


# 7. only a checkpoint proven corrupt is moved aside (renamed, never deleted); an unreadable one is an error ----
@pytest.mark.slow
def test_a_corrupt_cached_checkpoint_is_moved_aside_and_retrained(world, tmp_path):
    folder = _cached_dir(world, tmp_path)
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"\x00 not a checkpoint")
    proc = _compare(world, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (aside,) = folder.glob("last.pt.corrupt-*")
    assert aside.read_bytes() == b"\x00 not a checkpoint" and "moved it aside" in proc.stderr
    assert load_checkpoint(folder / "last.pt")["step"] == 40


def test_an_unreadable_cached_checkpoint_is_an_error_and_kept(world, tmp_path):
    folder = _cached_dir(world, tmp_path)
    (folder / "last.pt").mkdir(parents=True)  # not readable as a file (permission denied behaves alike)
    (folder / "last.pt" / "keep").write_text("precious")
    before = snapshot(tmp_path / "runs")
    assert_one_line_error(_compare(world, tmp_path), "last.pt is not a file")
    assert snapshot(tmp_path / "runs") == before


# 8. loading never executes code from a file --------------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": 1, "model_state": {}, "x": _Payload(marker)}, buf)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    proc = cli("empirical.evaluate", "--checkpoint", tmp_path / "evil.pt", "--dataset", "noise", tmp=tmp_path)
    assert_one_line_error(proc, "refused to load", "system")
    assert not marker.exists()


def test_a_cifar_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "data" / "cifar-10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    evil = pickle.dumps({b"data": _Payload(marker), b"labels": [0]})
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / stem).write_bytes(evil)
    proc = cli("empirical.train", "--dataset", "cifar10", "--preset", "smoke", "--data-dir", tmp_path / "data",
               "--allow-nonstandard-data", "--out", tmp_path / "run", tmp=tmp_path)
    assert_one_line_error(proc, "refused to unpickle", "system")
    assert not marker.exists()


# 9. modes follow the umask; an interrupted write leaves no temp file ---------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_and_json_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ck.pt", {"model_state": {}, "step": 1})
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("ck.pt", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_an_interrupted_json_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    write_json(tmp_path / "r.json", {"v": 1})

    def interrupted(fd):
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, which the CLIs turn into the same) mid-write

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(tmp_path / "r.json", {"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert '"v": 1' in (tmp_path / "r.json").read_text()


# 10. one writer per run folder ---------------------------------------------------------------------------------------
def _hold_lock(folder, seconds):
    code = ("import sys, time; from empirical.io.locking import run_lock\n"
            f"with run_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep({seconds})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env_for(folder.parent),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_training_in_the_same_folder_is_refused_with_the_holder(world, tmp_path):
    folder = tmp_path / "run"
    holder = _hold_lock(folder, 60)
    try:
        proc = cli("empirical.train", "--dataset", "fashionmnist", "--preset", "smoke", "--data-dir", world["data"],
                   "--allow-nonstandard-data", "--out", folder, tmp=tmp_path)
        assert_one_line_error(proc, f"in use by process {holder.pid}")
        assert not (folder / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_waiting_run_proceeds_when_the_holder_finishes_even_by_kill_9(tmp_path, capsys):
    folder = tmp_path / "run"
    holder = _hold_lock(folder, 60)
    t0 = time.time()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])
    with run_lock(folder, wait=True, what="a test"):
        assert time.time() - t0 >= 0.9
        assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
    holder.wait()
    assert f"waiting for process {holder.pid}" in capsys.readouterr().err


@pytest.mark.slow
def test_two_identical_compares_train_once(world, tmp_path):
    """The second waits for the first, then reuses its model."""
    cmd = [sys.executable, "-m", "verify.compare", "fashionmnist", "mnist", "--preset", "smoke", "--data-dir",
           str(world["data"]), "--allow-nonstandard-data", "--runs-dir", str(tmp_path / "runs")]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / f"r{i}")], cwd=tmp_path, env=env_for(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("step 40: train bpd" in e for e in errs) == 1  # one of them trained; the other reused
    bpd = [np.load(tmp_path / f"r{i}" / "per_image.npz")["in_test_log_px_nats"] for i in range(2)]
    assert np.array_equal(*bpd)
