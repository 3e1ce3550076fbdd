"""The shift sweep: every cell's gap is the measured difference of mean bits/dim, the summary is computed from the
cells, and the command writes its report and heat maps all together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from empirical.data.imageset import ImageSet
from empirical.data.shifts import shift_images
from empirical.models.evaluation import evaluate
from empirical.models.registry import build_model
from empirical.training.presets import get_preset
from tests.faults.conftest import assert_one_line_error, cli
from tests.helpers import randomize
from verify.sweep import Cell, summary, sweep


@pytest.fixture(scope="module")
def flow():
    return randomize(build_model("cvglow", get_preset("smoke", "cvglow", (1, 28, 28)).model), 0).eval()


def _set(n: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(40, 200, (n, 1, 28, 28), dtype=np.uint8), f"set{seed}", "test", "array")


def test_each_cell_is_the_measured_gap_and_auroc(flow):
    in_test, heldout = _set(12, 0), _set(10, 1)
    cells = sweep(flow, in_test, heldout, shifts=("contrast_scale", "hflip", "saturate"), severities=(1, 5), limit=10)
    assert [(c.shift, c.severity) for c in cells] == [("contrast_scale", 1), ("contrast_scale", 5), ("hflip", 1),
                                                      ("hflip", 5)]  # saturate is colour only: skipped on grey
    base = in_test.head(10)
    out = shift_images(base, "contrast_scale", 5, 0)
    expected = evaluate(flow, base.images).bpd.mean() - evaluate(flow, out.images).bpd.mean()
    assert cells[1].gap_bpd == pytest.approx(expected, abs=1e-9)
    assert {"likelihood", "typicality", "complexity_png", "dose"} <= set(cells[0].auroc)
    assert all(0 <= v <= 1 for c in cells for v in c.auroc.values())


def test_the_summary_is_computed_from_the_cells():
    up = Cell("a", "hypothesis", 1, 0.5, 0.1, 3.0, {"complexity_png": 0.4})
    down = Cell("b", "noise", 1, -0.5, 0.1, 4.0, {"complexity_png": 0.9})
    flat = Cell("a", "hypothesis", 2, 0.1, 0.1, 3.0, {"complexity_png": 0.6})
    facts = summary([up, flat, down])
    assert facts["inverts_somewhere"] == ["a"] and facts["inverts_everywhere"] == []
    assert facts["recommended_worst_auroc_by_family"] == {"hypothesis": 0.4, "noise": 0.9}


def test_the_command_writes_the_report_and_refuses_bad_choices(world, tmp_path):
    args = ("verify.shifts", "fashionmnist", "--checkpoint", world["ckpt"]["cvglow"], "--data-dir", world["data"],
            "--allow-nonstandard-data", "--limit", "8", "--out", tmp_path / "r")
    proc = cli(*args, "--shifts", "contrast_scale,pixel_permutation", "--severities", "1,5", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"report.md", "results.json", "gap.png",
                                                            "auroc_recommended.png", "auroc_likelihood.png"}
    written = json.loads((tmp_path / "r" / "results.json").read_text())
    assert len(written["cells"]) == 4 and written["provenance"]["command"].startswith("python -m verify.shifts")
    assert "| contrast_scale | hypothesis |" in (tmp_path / "r" / "report.md").read_text()
    assert_one_line_error(cli(*args, "--shifts", "blurry", tmp=tmp_path), "--shifts: unknown blurry")
    assert_one_line_error(cli(*args, "--severities", "0,7", tmp=tmp_path), "--severities takes whole numbers")


def test_the_best_worst_case_over_families_is_computed_from_the_cells():
    cells = [Cell("a", "noise", 1, 0.0, 0.1, 3.0, {"x": 0.9, "y": 0.6}),
             Cell("b", "blur", 1, 0.0, 0.1, 3.0, {"x": 0.3, "y": 0.7}),
             Cell("b", "blur", 2, 0.0, 0.1, 3.0, {"x": 0.5, "y": 0.7})]
    facts = summary(cells)
    assert facts["auroc_by_family"]["x"] == {"noise": 0.9, "blur": 0.4, "worst": 0.4}
    assert facts["best_worst_case"] == "y"  # worst 0.6 against x's 0.4


def test_a_sweep_of_one_score_still_measures_the_gap(flow):
    from empirical.ood.suite import choose_scores

    cells = sweep(flow, _set(12, 0), None, shifts=("invert",), severities=(5,), limit=10,
                  choice=choose_scores("complexity_png"))
    assert list(cells[0].auroc) == ["complexity_png"] and cells[0].gap_bpd != 0
