"""The benchmark scripts run and write what they promise (no timing is asserted)."""

import csv
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from empirical.training.presets import get_preset
from empirical.training.trainer import train
from tests import datafiles
from tests.helpers import registry_sets

pytestmark = pytest.mark.slow  # training runs, subprocesses: left out by -m "not slow"

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str) -> str:
    """Run ``bench/<script> args`` and return its stdout; a failure shows the script's stderr."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True)
    assert done.returncode == 0, f"bench/{script} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


def test_throughput_prints_a_table():
    out = bench("throughput.py", "--preset", "smoke", "--iters", "1", "--batch", "4", "--dataset", "mnist")
    assert "train img/s" in out and "GFLOP/img" in out


def test_throughput_on_cpu_times_compile_and_channels_last(tmp_path):
    bench("throughput.py", "--preset", "smoke", "--iters", "1", "--batch", "4", "--dataset", "mnist", "--device", "cpu",
          "--cpu-variants", "--json", str(tmp_path / "t.json"))
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [(r["compile"], r["channels_last"]) for r in rows] == [(False, False), (True, False), (False, True)]
    assert all(r["train_img_s"] > 0 and r["eval_img_s"] > 0 for r in rows)


def test_score_memory_measures_two_sizes_in_fresh_processes(tmp_path):
    out = bench("score_memory.py", "--preset", "smoke", "--dataset", "fashionmnist", "--images", "4", "--batch", "4",
                "--json", str(tmp_path / "m.json"))
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert [r["images"] for r in rows] == [4, 16] and all(r["peak_mib"] > 0 and r["img_s"] > 0 for r in rows)
    assert "peak growth per extra image" in out


FAKE_ANCHOR = """
import torch
from torch import nn


class Glow(nn.Module):  # the reference's constructor and forward signature, not its model
    def __init__(self, image_shape, hidden_channels, K, L, actnorm_scale, flow_permutation, flow_coupling,
                 LU_decomposed, y_classes, learn_top, y_condition):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x, (x * self.scale).flatten(1).pow(2).mean(1), None
"""


def test_throughput_times_a_reference_glow_beside_ours(tmp_path):
    (tmp_path / "anchor").mkdir()
    (tmp_path / "anchor" / "model.py").write_text(FAKE_ANCHOR)
    out = bench("throughput.py", "--preset", "smoke", "--model", "glow", "--iters", "1", "--batch", "4", "--dataset",
                "mnist", "--anchor", str(tmp_path / "anchor"), "--json", str(tmp_path / "t.json"))
    assert "reference Glow (anchor" in out and "ours/reference" in out
    anchor = json.loads((tmp_path / "t.json").read_text())["anchor"]
    assert anchor["params"] == 1 and anchor["ours_params"] > 1 and anchor["train_ratio_fp32"] > 0


def test_scaling_launches_one_and_two_processes_with_torchrun(tmp_path):
    out = bench("scaling.py", "--preset", "smoke", "--dataset", "mnist", "--iters", "1", "--ranks", "1", "2", "--json",
                str(tmp_path / "s.json"))
    assert "processes" in out and "ratio" in out
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [r["ranks"] for r in rows] == [1, 2] and rows[0]["ratio"] == 1.0 and all(r["img_s"] > 0 for r in rows)


def test_time_to_bpd_keeps_wall_clock_across_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    datafiles.write_idx_dataset(tmp_path / "data", "mnist", n=64)
    run = tmp_path / "run"
    for steps in (20, 40):
        preset = get_preset("smoke", "glow", (1, 28, 28), steps=steps)
        train(*registry_sets("mnist", tmp_path / "data"), "glow", preset, run, resume=steps > 20, progress=False)
    from bench.time_to_bpd import main

    assert main([str(run / "last.pt"), "--out", str(tmp_path / "curve")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "curve.csv")))
    assert [int(r["step"]) for r in rows] == [20, 40]
    assert float(rows[1]["seconds"]) > float(rows[0]["seconds"])
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("script", ["throughput.py", "time_to_bpd.py", "scaling.py"])
def test_scripts_have_help(script):
    assert subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True).returncode == 0


GPU_FILES = {**{f"cifar-10/cifar-10-batches-py/data_batch_{i}.xz": 900 for i in range(1, 6)},
             "cifar-10/cifar-10-batches-py/test_batch.xz": 900, "cifar-100/cifar-100-python/test.xz": 900,
             "mnist/t10k-images-idx3-ubyte.gz": 100, "mnist/t10k-labels-idx1-ubyte.gz": 10}


def test_gpu_session_plan_fits_one_call_per_part_and_the_device_budget(tmp_path, monkeypatch):
    from bench import gpu_session as gs

    monkeypatch.setattr(gs, "DEV", tmp_path / ".devdata")
    monkeypatch.setattr(gs, "slim", lambda: None)  # the repository's own index stays as it is
    monkeypatch.setattr(gs, "restore", lambda: False)
    monkeypatch.setattr("empirical.io.provenance.git_commit", lambda: "0" * 40)
    monkeypatch.setattr(gs, "CALL_BYTES", 3000)
    monkeypatch.setattr(gs, "MARGIN", 0)
    monkeypatch.setattr(gs, "tree_bytes", lambda: 500)
    for rel, n in {**{f"data/{k}": v for k, v in GPU_FILES.items()}, "wheels/imagecodecs.whl": 1000,
                   "anchor/model.py": 12}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(bytes(n))
    (tmp_path / "data" / "cifar-100" / "cifar-100-python" / "train.xz").write_bytes(bytes(900))  # not read: stays
    gs.main(["pack", "--data-root", str(tmp_path / "data"), "--anchor", str(tmp_path / "anchor"), "--wheels",
             str(tmp_path / "wheels")])
    plan = json.loads((tmp_path / ".devdata" / "part-1" / "plan.json").read_text())  # travels with part 1
    parts = [{rel: n for rel, n in p["files"]} for p in plan["parts"]]
    assert all(sum(p.values()) <= 2500 for p in parts)  # a part and the working tree fit one call
    assert {"wheels/imagecodecs.whl", "data/anchors/anchor/model.py"} <= set(parts[0])  # the benchmark's needs first
    assert sorted(rel for p in parts for rel in p if rel.startswith("data/") and "anchors" not in rel) == sorted(
        f"data/{k}" for k in GPU_FILES)  # each file the pairs read, once, and nothing else
    b = plan["budget"]
    assert b["total"] <= b["device_seconds"] and b["waiting"] <= b["collect_calls"] * gs.COLLECT_WAIT
    gs.main(["stage"])
    staged = tmp_path / ".devdata" / "data"
    assert {str(f.relative_to(staged)) for f in staged.rglob("*") if f.is_file()} == {*GPU_FILES,
                                                                                     "anchors/anchor/model.py"}


def test_gpu_session_pack_refuses_a_missing_data_root_or_reference_in_one_line(tmp_path, monkeypatch, capsys):
    from bench import gpu_session as gs

    monkeypatch.setattr(gs, "DEV", tmp_path / ".devdata")
    monkeypatch.setattr(gs, "slim", lambda: None)
    monkeypatch.setattr(gs, "restore", lambda: False)
    monkeypatch.setattr("empirical.io.provenance.git_commit", lambda: "0" * 40)
    (tmp_path / "anchor").mkdir()
    (tmp_path / "anchor" / "model.py").write_text("")
    with pytest.raises(SystemExit, match=r"CIFAR-10 train split not found.*\(--data-root\)"):
        gs.main(["pack", "--data-root", str(tmp_path / "nothing"), "--anchor", str(tmp_path / "anchor")])
    with pytest.raises(SystemExit, match=r"no reference Glow in .*\(--anchor\)"):
        gs.main(["pack", "--data-root", str(tmp_path), "--anchor", str(tmp_path / "no-anchor")])
    assert not (tmp_path / ".devdata").exists()  # nothing packed


def test_gpu_session_pack_that_fails_after_slimming_restores_the_index(tmp_path, monkeypatch):
    from bench import gpu_session as gs

    calls = []
    monkeypatch.setattr(gs, "DEV", tmp_path / ".devdata")
    monkeypatch.setattr(gs, "slim", lambda: calls.append("slim"))
    monkeypatch.setattr(gs, "restore", lambda: calls.append("restore") or False)
    monkeypatch.setattr("empirical.io.provenance.git_commit", lambda: "0" * 40)
    monkeypatch.setattr(gs, "tree_bytes", lambda: 500)
    monkeypatch.setattr(gs, "CALL_BYTES", 1000)  # no data file fits a part
    monkeypatch.setattr(gs, "MARGIN", 0)
    for rel, n in {**{f"data/{k}": v for k, v in GPU_FILES.items()}, "anchor/model.py": 12}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(bytes(n))
    with pytest.raises(SystemExit, match="is larger than a part"):
        gs.main(["pack", "--data-root", str(tmp_path / "data"), "--anchor", str(tmp_path / "anchor")])
    assert calls == ["restore", "slim", "restore"]


def test_gpu_session_pack_refuses_uncommitted_changes(monkeypatch):
    from bench import gpu_session as gs

    monkeypatch.setattr(gs, "restore", lambda: False)
    monkeypatch.setattr("empirical.io.provenance.git_commit", lambda: "0" * 40 + "-dirty")
    with pytest.raises(SystemExit, match="commit first"):
        gs.main(["pack"])


def test_gpu_session_slim_leaves_results_and_weights_out_of_the_calls_and_restore_puts_them_back(tmp_path):
    from bench import gpu_session as gs

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True,  # noqa: E731
                                    text=True).stdout
    git("init", "-q")
    for rel in ("results/r/report.md", "empirical/weights/w.safetensors", "empirical/code.py", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / ".git" / "info").mkdir(exist_ok=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("/.whl/")  # a developer's own line, without a newline
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    travelling = lambda: sorted(git("ls-files", "--cached", "--others", "--exclude-standard").split())  # noqa: E731
    gs.slim(tmp_path)
    gs.slim(tmp_path)  # twice is once
    assert travelling() == ["README.md", "empirical/code.py"]
    assert (tmp_path / "results" / "r" / "report.md").is_file()  # only git's index changed
    assert gs.restore(tmp_path) and not gs.restore(tmp_path)
    assert travelling() == ["README.md", "empirical/code.py", "empirical/weights/w.safetensors",
                            "results/r/report.md"]
    assert git("status", "--porcelain") == ""
    assert (tmp_path / ".git" / "info" / "exclude").read_text() == "/.whl/\n"


def test_gpu_session_finish_unpacks_what_collect_returned(tmp_path, monkeypatch, capsys):
    from bench import gpu_session as gs

    monkeypatch.setattr(gs, "DEV", tmp_path / ".devdata")
    monkeypatch.setattr(gs, "restore", lambda: True)
    out = tmp_path / ".devdata" / "out"
    (out / "compare" / "pair").mkdir(parents=True)
    (out / "compare" / "pair" / "report.md").write_text("# report\n")
    (out / "session.log").write_text("log\n")
    (out / "session.json").write_text(json.dumps({"done": True, "started": 0, "plan": {"driver": 1}, "steps": []}))
    monkeypatch.setenv("OUT", str(tmp_path / "OUT"))
    gs.main(["collect", "--wait", "0"])
    gs.main(["finish", str(tmp_path / "OUT"), "--into", str(tmp_path / "gpu")])
    assert (tmp_path / "gpu" / "compare" / "pair" / "report.md").read_text() == "# report\n"
    assert {"session.json", "session.log"} <= {f.name for f in (tmp_path / "gpu").iterdir()}
    assert "git's index restored" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not empty"):
        gs.main(["finish", str(tmp_path / "OUT"), "--into", str(tmp_path / "gpu")])
    with pytest.raises(SystemExit, match="results.tar.gz.parts.json not found"):
        gs.main(["finish", str(tmp_path), "--into", str(tmp_path / "gpu2")])


def test_gpu_session_collect_returns_at_most_8_files_that_rebuild_the_results(tmp_path, monkeypatch):
    from bench import gpu_session as gs
    from empirical.io.transfer import joined_bytes

    monkeypatch.setattr(gs, "DEV", tmp_path / ".devdata")
    out = tmp_path / ".devdata" / "out"
    (out / "compare" / "pair").mkdir(parents=True)
    (out / "compare" / "pair" / "report.md").write_text("# report\n")
    (out / "compare" / "pair" / "per_image.npz").write_bytes(bytes(100))
    (out / "throughput.json").write_text("{}")
    (out / "session.log").write_text("log\n")
    steps = [{"step": "train", "seconds": 1.0, "budget": 2, "exit": [0]}]
    (out / "session.json").write_text(json.dumps({"done": True, "started": 0, "plan": {"driver": 1}, "steps": steps}))
    monkeypatch.setenv("OUT", str(tmp_path / "OUT"))
    gs.main(["collect", "--wait", "0"])
    returned = sorted(f.name for f in (tmp_path / "OUT").iterdir())
    assert len(returned) <= 8 and {"session.json", "session.log", "results.tar.gz.parts.json"} <= set(returned)
    with tarfile.open(fileobj=io.BytesIO(joined_bytes(tmp_path / "OUT" / "results.tar.gz.parts.json"))) as tar:
        assert sorted(tar.getnames()) == ["compare/pair/report.md", "throughput.json"]  # per-image arrays stay


def test_profile_of_the_main_jobs_stages(world, tmp_path):
    from bench.profile_main_job import main as profile_main

    assert profile_main(["--checkpoint", str(world["ckpt"]["cvglow"]), "--training-from",
                         str(world["ckpt"]["cvglow"]), "--data-dir", str(world["data"]), "--allow-nonstandard-data",
                         "--json", str(tmp_path / "p.json")]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [r["stage"].split(" ")[0] for r in rows] == ["open", "load", "training", "evaluation", "theory",
                                                        "explaining", "detection", "report,"]
    assert all(r["seconds"] >= 0 for r in rows) and [r["measured"] for r in rows].count(False) == 1
