"""The benchmark scripts run and write what they promise (no timing is asserted)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from empirical.presets import get_preset
from empirical.train import train
from tests import datafiles

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_prints_a_table():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--preset", "smoke", "--iters", "1",
                          "--batch", "4", "--dataset", "mnist"], capture_output=True, text=True, check=True).stdout
    assert "train img/s" in out and "GFLOP/img" in out


def test_scaling_launches_one_and_two_processes_with_torchrun(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "scaling.py"), "--preset", "smoke", "--dataset",
                          "mnist", "--iters", "1", "--ranks", "1", "2", "--json", str(tmp_path / "s.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "processes" in out and "ratio" in out
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [r["ranks"] for r in rows] == [1, 2] and rows[0]["ratio"] == 1.0 and all(r["img_s"] > 0 for r in rows)


def test_time_to_bpd_keeps_wall_clock_across_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    datafiles.write_idx_dataset(tmp_path / "data", "mnist", n=64)
    run = tmp_path / "run"
    for steps in (20, 40):
        preset = get_preset("smoke", "glow", (1, 28, 28), steps=steps)
        train("mnist", "glow", preset, run, data_dir=str(tmp_path / "data"), resume=steps > 20,
              allow_nonstandard=True, progress=False)
    from bench.time_to_bpd import main

    assert main([str(run / "last.pt"), "--out", str(tmp_path / "curve")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "curve.csv")))
    assert [int(r["step"]) for r in rows] == [20, 40]
    assert float(rows[1]["seconds"]) > float(rows[0]["seconds"])
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("script", ["throughput.py", "time_to_bpd.py", "scaling.py"])
def test_scripts_have_help(script):
    assert subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True).returncode == 0
