"""Data parallelism on the CPU (gloo): 2 ranks behave like 1 process, bit for bit where it can be and within float
rounding where summation order differs. Ranks are spawned with torch.multiprocessing, or torchrun for the
kill test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from empirical.io import distributed
from empirical.models.evaluation import evaluate
from empirical.models.flows.layers import ActNorm
from empirical.models.registry import build_model
from empirical.training.checkpoint import load_checkpoint
from empirical.training.presets import get_preset
from empirical.training.trainer import train
from tests.faults.conftest import REPO, env_for, write_tiny_idx
from tests.helpers import registry_sets

pytestmark = pytest.mark.slow  # training runs, subprocesses: left out by -m "not slow"

WORLD = 2


def _spawn(fn, tmp: Path, *args) -> None:
    """Run ``fn(rank, tmp, *args)`` on WORLD gloo ranks; each rank saves what it measured under ``tmp``."""
    mp.spawn(_rank_main, args=(fn, tmp, args), nprocs=WORLD, join=True)


def _rank_main(rank: int, fn, tmp: Path, args) -> None:
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=WORLD)
    try:
        fn(rank, tmp, *args)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp-data")
    write_tiny_idx(root, "fashion-mnist", 1)
    return root


def _preset(model: str):
    return get_preset("smoke", model, (1, 28, 28), steps=3)


def _train_rank(rank: int, tmp: Path, data_dir: Path, model: str) -> None:
    result = train(*registry_sets("fashionmnist", data_dir), model, _preset(model), tmp / "ddp", device="cpu",
                   progress=False)
    torch.save(result.model.state_dict(), tmp / f"rank{rank}.pt")


@pytest.mark.parametrize("model", ["cvglow", "vae"])
def test_two_ranks_with_half_batches_train_like_one_process(tiny, tmp_path, model):
    _spawn(_train_rank, tmp_path, tiny, model)
    one = train(*registry_sets("fashionmnist", tiny), model, _preset(model), tmp_path / "one", device="cpu",
                progress=False).model.state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, value in one.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5, msg=f"{name} differs")
    saved = load_checkpoint(tmp_path / "ddp" / "last.pt")  # rank 0's checkpoint: the ranks' common model
    assert saved["step"] == 3 and saved["history"][-1]["ranks"] == WORLD
    assert all(torch.equal(saved["model_state"][k], ranks[0][k]) for k in one)


def _time_limited_rank(rank: int, tmp: Path, data_dir: Path) -> None:
    result = train(*registry_sets("fashionmnist", data_dir), "cvglow",
                   get_preset("smoke", "cvglow", (1, 28, 28), steps=30), tmp / "ddp", device="cpu", progress=False,
                   time_limit=1e-9 if rank == 0 else 1e9)  # only rank 0's clock runs out
    (tmp / f"stopped{rank}.txt").write_text(str(result.step))


def test_a_time_limit_stops_every_rank_at_the_same_step(tiny, tmp_path):
    _spawn(_time_limited_rank, tmp_path, tiny)
    assert [(tmp_path / f"stopped{r}.txt").read_text() for r in range(WORLD)] == ["1", "1"]
    assert load_checkpoint(tmp_path / "ddp" / "last.pt")["step"] == 1


def _actnorm_rank(rank: int, tmp: Path, x: torch.Tensor) -> None:
    layer = ActNorm(x.shape[1])
    layer(distributed.World(rank, WORLD).shard(len(x)).rows(x))
    torch.save(layer.state_dict(), tmp / f"actnorm{rank}.pt")


def test_actnorm_init_over_two_ranks_equals_one_process_init(tmp_path):
    x = torch.randn(7, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1  # 7 rows: an uneven split
    _spawn(_actnorm_rank, tmp_path, x)
    single = ActNorm(3)
    single(x)
    for rank in range(WORLD):
        state = torch.load(tmp_path / f"actnorm{rank}.pt")
        torch.testing.assert_close(state["bias"], single.bias.data, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(state["log_scale"], single.log_scale.data, rtol=1e-6, atol=1e-6)
        assert state["initialized"] == 1


def _evaluate_rank(rank: int, tmp: Path, images: np.ndarray) -> None:
    for family in ("cvglow", "vae"):
        model = build_model(family, _preset(family).model)
        model.load_state_dict(torch.load(tmp / f"{family}.pt"))
        result = evaluate(model, images, batch_size=40, seed=3)
        np.savez(tmp / f"{family}-rank{rank}.npz", log_px=result.log_px, **result.parts)


def test_sharded_evaluation_returns_one_process_per_image_results_in_order(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (110, 1, 28, 28), dtype=np.uint8)  # 3 batches, uneven
    expected, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs: float sums depend on the thread count on some CPUs
    try:
        for family in ("cvglow", "vae"):
            torch.manual_seed(0)
            model = build_model(family, _preset(family).model)
            torch.save(model.state_dict(), tmp_path / f"{family}.pt")
            expected[family] = evaluate(model, images, batch_size=40, seed=3)
    finally:
        torch.set_num_threads(threads)
    _spawn(_evaluate_rank, tmp_path, images)
    for family, want in expected.items():
        for rank in range(WORLD):
            got = np.load(tmp_path / f"{family}-rank{rank}.npz")
            np.testing.assert_array_equal(got["log_px"], want.log_px)
            for k, v in want.parts.items():
                np.testing.assert_array_equal(got[k], v)


def test_evaluate_cli_under_torchrun_writes_one_process_results(tiny, tmp_path):
    ckpt = train(*registry_sets("fashionmnist", tiny), "cvglow", _preset("cvglow"), tmp_path / "model", device="cpu",
                 progress=False).checkpoint
    args = ["-m", "empirical.evaluate", "--checkpoint", str(ckpt), "--dataset", "fashionmnist", "--data-dir",
            str(tiny), "--allow-nonstandard-data"]
    env = env_for(tmp_path, OMP_NUM_THREADS="1")
    runs = {"one": [sys.executable, *args], "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={WORLD}", *args]}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, "--json", str(tmp_path / f"{name}.json")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in runs)
    assert one == two and len(one["bpd"]) == 64


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun worker ``rank`` (a child of ``launcher`` whose environment says RANK=rank)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == launcher and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the worker through /proc")
def test_a_killed_rank_stops_the_job_and_one_process_resumes_it(tiny, tmp_path):
    out = tmp_path / "run"
    args = ["-m", "empirical.train", "--dataset", "fashionmnist", "--model", "cvglow", "--preset", "smoke",
            "--out", str(out), "--data-dir", str(tiny), "--device", "cpu", "--allow-nonstandard-data", "--no-progress"]
    env = env_for(tmp_path, OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 str(WORLD), *args, "--steps", "100000"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists() and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.2)
        assert (out / "last.pt").exists(), launcher.communicate(timeout=30)[1][-3000:]
        os.kill(_rank_pid(launcher.pid, 1), signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "empirical.train" in err and "FAILED" in err and "rank" in err, err[-3000:]
    # the surviving rank says what happened in one line (or, stopped first by torchrun, that it was terminated)
    assert "[rank0]: Traceback" not in err, err[-3000:]
    assert "error: rank 0: another rank of this torchrun job stopped" in err or "terminated:" in err, err[-3000:]
    step = load_checkpoint(out / "last.pt")["step"]  # intact: loads, and at a checkpoint boundary
    assert step > 0 and step % 20 == 0
    resumed = subprocess.run([sys.executable, *args, "--steps", str(step + 20), "--resume"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(out / "last.pt")["step"] == step + 20


GLOO_THREADS = """
import json, os, sys
import torch
from empirical.io import distributed
from empirical.models.registry import build_model
from empirical.training.ddp import data_parallel
from empirical.training.presets import get_preset


def gloo_threads():
    tasks = (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    return sorted(name for name in tasks if "gloo" in name)


device = distributed.init_from_env("cpu")
try:
    ddp = data_parallel(build_model("cvglow", get_preset("smoke", "cvglow", (1, 28, 28)).model), device)
    during = gloo_threads()
    del ddp
finally:
    distributed.shutdown()
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"during": during, "after": gloo_threads()}, f)
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads through /proc")
def test_leaving_the_group_ends_gloo_threads_after_ddp(tmp_path):
    """torch 2.15: torch._dynamo, imported by DDP after the group exists, kept the group and its threads alive past
    destroy_process_group, to the interpreter's exit; init_from_env imports it first."""
    (tmp_path / "threads.py").write_text(GLOO_THREADS)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
                           str(tmp_path / "threads.py"), str(tmp_path)], cwd=REPO,
                          env=env_for(tmp_path, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)):
        assert rank["during"] and rank["after"] == [], rank


@pytest.mark.slow
def test_the_shift_sweep_under_torchrun_writes_the_one_process_numbers(tiny, tmp_path):
    ckpt = train(*registry_sets("fashionmnist", tiny), "cvglow", _preset("cvglow"), tmp_path / "model", device="cpu",
                 progress=False).checkpoint
    args = ["-m", "verify.shifts", "fashionmnist", "--checkpoint", str(ckpt), "--data-dir", str(tiny),
            "--allow-nonstandard-data", "--shifts", "invert,contrast_scale", "--severities", "1,4", "--limit", "10",
            "--scores", "likelihood,typicality"]
    env = env_for(tmp_path, OMP_NUM_THREADS="1")
    runs = {"one": [sys.executable, *args], "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={WORLD}", *args]}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, "--out", str(tmp_path / name)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "results.json").read_text()) for n in runs)
    assert one["cells"] == two["cells"] and len(next(iter(one["cells"].values()))) == 4
