"""Processes that die or are stopped: nothing saved is lost, and a resumed run is the uninterrupted run, bit for bit."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from empirical.models.registry import MODELS
from empirical.training.checkpoint import load_checkpoint, save_checkpoint
from empirical.training.loading import model_from_checkpoint
from empirical.training.presets import get_preset
from empirical.training.trainer import train
from tests.faults.conftest import REPO, env_for
from tests.helpers import registry_sets

pytestmark = pytest.mark.slow  # training runs, subprocesses: left out by -m "not slow"

SLOW_SECOND_SAVE = """
import sys, time, torch
from empirical.training import checkpoint
path = sys.argv[1]
checkpoint.save_checkpoint(path, {"model_state": {"w": torch.ones(3)}, "step": 1})
def slow(obj, f):
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)
torch.save = slow
checkpoint.save_checkpoint(path, {"model_state": {"w": torch.zeros(3)}, "step": 2})
"""


def test_kill_9_during_a_checkpoint_write(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SECOND_SAVE, str(path)], cwd=REPO, env=env_for(tmp_path),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()  # SIGKILL: no cleanup can run in the writer
    proc.wait()
    assert load_checkpoint(path)["step"] == 1 and torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(3))
    assert len(list(tmp_path.glob(".last.pt.*.tmp"))) == 1  # the dead writer's temp file
    save_checkpoint(path, {"model_state": {}, "step": 3})  # the next write removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_sigterm_during_training_stops_cleanly_and_resumes(world, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "empirical.train", "--dataset", "fashionmnist", "--preset", "smoke", "--data-dir",
           str(world["data"]), "--allow-nonstandard-data", "--no-progress", "--out", str(out), "--steps", "100000"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env_for(tmp_path), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err[-2000:]
    assert not list(out.glob(".*.tmp"))
    step = load_checkpoint(out / "last.pt")["step"]
    model_from_checkpoint(out / "last.pt")
    assert step >= 20
    done = subprocess.run([*cmd[:-1], str(step + 20), "--resume"], cwd=tmp_path, env=env_for(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(out / "last.pt")["step"] == step + 20


@pytest.mark.parametrize("model", MODELS)
def test_resume_is_bit_for_bit_the_uninterrupted_run(world, tmp_path, model):
    sets = registry_sets("fashionmnist", world["data"])
    train(*sets, model, get_preset("smoke", model, (1, 28, 28), steps=40), tmp_path / "a", progress=False)
    train(*sets, model, get_preset("smoke", model, (1, 28, 28), steps=20), tmp_path / "b", progress=False)
    train(*sets, model, get_preset("smoke", model, (1, 28, 28), steps=40), tmp_path / "b", resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in "ab")
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    assert [h["test_bpd"] for h in a["history"]] == [h["test_bpd"] for h in b["history"]]
