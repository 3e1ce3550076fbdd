"""A report folder holds exactly one run's files, and a failed run changes none of them (issue: stale artefacts,
a table's figure written outside the all-or-none write)."""

from __future__ import annotations

import numpy as np
import pytest

from empirical.io.atomic import RUN_FILES, staged
from tests.empirical.test_contract import Gaussian
from verify.api import compare


def _images(n: int, mean: float, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.normal(mean, spread, (n, 1, 4, 4))), 0, 255).astype(np.uint8)


def test_a_rerun_with_fewer_figures_leaves_none_of_the_earlier_runs(tmp_path):
    sets = (_images(200, 128, 40, 0), _images(100, 128, 40, 1), _images(100, 120, 15, 2))
    out = tmp_path / "report"
    (tmp_path / "report").mkdir()
    (out / "notes.txt").write_text("mine")  # a file of the user's: never touched
    compare(Gaussian(), *sets, heldout=_images(50, 128, 40, 3), explain=False).write(out)
    assert (out / "roc.png").exists() and (out / "scores.png").exists()
    written = compare(Gaussian(), *sets, detection=None, explain=False).write(out)
    names = {p.name for p in out.iterdir()}
    assert "roc.png" not in names and "scores.png" not in names
    assert names == {*written["figures"], "report.md", "results.json", "per_image.npz", RUN_FILES, "notes.txt"}


def test_a_failed_staged_write_leaves_the_earlier_run_whole(tmp_path):
    with staged(tmp_path) as stage:
        (stage / "a.png").write_text("first")
        (stage / "table.md").write_text("first")
    with pytest.raises(RuntimeError), staged(tmp_path) as stage:
        (stage / "table.md").write_text("second")
        raise RuntimeError("the figure failed")
    assert (tmp_path / "a.png").read_text() == "first" and (tmp_path / "table.md").read_text() == "first"
