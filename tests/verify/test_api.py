"""verify.api.compare from Python: an outside model with a known answer goes through every part that applies to
it; importing and writing figures leaves the caller's matplotlib alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from empirical.data.imageset import as_image_set
from tests.empirical.test_contract import Gaussian
from tests.faults.conftest import REPO
from verify.api import compare


def _images(n: int, mean: float, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.normal(mean, spread, (n, 1, 4, 4))), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def gaussian_result(tmp_path_factory):
    in_train, in_test = _images(400, 128, 40, 0), _images(300, 128, 40, 1)
    out_test = _images(300, 120, 15, 2)  # lower variance: the paper's story, on a model where it is exact
    heldout = _images(100, 128, 40, 3)
    result = compare(Gaussian(mean=0.5, std=0.25), in_train, in_test, as_image_set(out_test, "narrow"),
                     heldout=heldout, seed=0)
    out = tmp_path_factory.mktemp("api") / "report"
    return result, result.write(out), out


def test_a_quadratic_model_is_predicted_exactly_by_the_second_order(gaussian_result):
    result, _, _ = gaussian_result
    res = result.results
    rows = {r["row"]: r for r in res["ledger"]["rows"] if r["row"] != 2}
    measured = rows[1]["gap_nats"]
    assert measured > 1  # lower variance under this model: a higher likelihood
    # log p is exactly quadratic: the Taylor expansion is exact, up to the dequantisation noise's sample mean
    assert rows[3]["gap_nats"] == pytest.approx(measured, abs=0.05)
    assert rows[4]["gap_nats"] == pytest.approx(rows[3]["gap_nats"], rel=1e-9)  # its own linear path
    assert rows[5]["gap_nats"] == pytest.approx(rows[3]["terms"]["trace_term"], rel=1e-9)
    assert rows[6]["gap_nats"] == pytest.approx(rows[5]["gap_nats"], rel=1e-6)  # diagonal H: diagonal Σ loses nothing
    assert rows[7]["gap_nats"] is None and "Glow" in rows[7]["note"]
    assert res["prediction"]["closed_form"]["gap_nats"] == pytest.approx(rows[6]["gap_nats"], rel=1e-6)
    assert res["hessian_spectrum"]["positive"] == 0


def test_the_report_says_what_ran_and_why_the_rest_did_not(gaussian_result):
    result, written, out = gaussian_result
    parts = {p["part"]: p for p in written["applicability"]}
    assert parts["closed form, ledger rows 4–6"]["ran"] and parts["detection: typicality and the batch test"]["ran"]
    assert not parts["density and volume terms"]["ran"] and "log_prob_parts" in parts["density and volume terms"]["why"]
    assert not parts["detection: likelihood ratio"]["ran"]
    report = (out / "report.md").read_text()
    assert "What did not run, and why" in report and "(outside model)" in report
    assert json.loads((out / "results.json").read_text())["data"]["out_test"]["name"] == "narrow"
    assert set(result.detection.scores) == {"likelihood", "typicality", "complexity_png", "complexity_jpegxl",
                                               "dose"}
    assert result.detection_table().startswith("| score | AUROC")
    assert {p.name for p in out.iterdir()} >= {"report.md", "results.json", "per_image.npz", "roc.png", "contrast.png"}
    assert "## What produces the gap" in report and "No entropy decomposition" in report
    assert written["explain"]["summary"].startswith("Matching OUT's per-dimension means and standard deviations")
    assert written["prediction"]["input_complexity"]["gap_nats"] is not None
    assert not list(out.glob(".staging-*"))


def test_typed_results_and_a_write_that_changes_nothing(gaussian_result):
    result, written, out = gaussian_result
    assert result.gap.bpd == written["gap_bpd"] and result.gap.nats == written["gap_nats"]
    assert result.ledger.summary == written["ledger"]["summary"] and result.ledger.to_dict() == written["ledger"]
    assert result.detection.to_dict() == written["detection"]
    assert result.predictions["closed_form"].gap_bpd == written["prediction"]["closed_form"]["gap_bpd"]
    assert "figures" not in result.results and "out_dir" not in result.results  # write returned a new dict
    assert written["figures"] == sorted(written["figures"], key=written["figures"].index) and all(
        "/" not in f for f in written["figures"])
    with np.load(out / "per_image.npz") as z:
        for name, (s_in, s_out) in result.scores.items():
            assert np.array_equal(z[f"score_{name}_in_test"], s_in) and np.array_equal(z[f"score_{name}_out_test"],
                                                                                       s_out)


def test_held_out_images_that_are_the_scored_images_are_refused():
    in_test = _images(50, 128, 40, 1)
    with pytest.raises(Exception, match="heldout: the held-out images are the in_test images themselves"):
        compare(Gaussian(), _images(100, 128, 40, 0), in_test, _images(50, 120, 15, 2), heldout=in_test)


def test_sets_must_have_the_models_shape():
    with pytest.raises(Exception, match="are 1×5×5 but the model takes 1×4×4.*map_to"):
        compare(Gaussian(), _images(20, 128, 40, 0), _images(20, 128, 40, 1), np.zeros((5, 5, 5), dtype=np.uint8))


def test_importing_the_api_and_writing_figures_changes_no_global_state(tmp_path):
    code = f"""
import matplotlib
matplotlib.use("svg")
matplotlib.rcParams["font.size"] = 7.0
before = (matplotlib.get_backend(), dict(matplotlib.rcParams))
import torch
torch.manual_seed(5)
expected = torch.rand(2)
torch.manual_seed(5)
import verify.api, verify.figures, verify.compare, verify.detect, verify.table
import numpy as np
verify.figures.graying_curve([0, 1], [0.0, 1.0], {{}}, __import__("pathlib").Path({str(tmp_path / "g.png")!r}))
after = (matplotlib.get_backend(), dict(matplotlib.rcParams))
assert before == after, [k for k in before[1] if before[1][k] != after[1].get(k)] or (before[0], after[0])
assert torch.equal(torch.rand(2), expected)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_the_model_tier_adds_the_gradient_score_and_every_score_has_an_interval():
    in_train, in_test, out_test = _images(200, 128, 40, 0), _images(150, 128, 40, 1), _images(150, 120, 15, 2)
    result = compare(Gaussian(), in_train, in_test, out_test, heldout=_images(100, 128, 40, 3), detection="model",
                     explain=False)
    det = result.detection
    assert list(det.scores)[0] == det.recommended == "complexity_png"
    assert {"gradient", "dose"} <= set(det.scores) and "likelihood_regret" not in det.scores
    for r in det.scores.values():
        assert r.auroc_ci95[0] <= r.auroc <= r.auroc_ci95[1] and 0 <= r.fpr80 <= r.fpr95 <= 1
    assert result.results["explain"] is None


def test_a_background_model_and_an_ensemble_add_their_scores_and_their_origin(tmp_path):
    in_train, in_test, out_test = _images(200, 128, 40, 0), _images(150, 128, 40, 1), _images(150, 120, 15, 2)
    result = compare(Gaussian(), in_train, in_test, out_test, heldout=_images(100, 128, 40, 3), explain=False,
                     background=Gaussian(std=0.5), ensemble=[Gaussian(mean=0.45), Gaussian(mean=0.55)])
    assert {"likelihood_ratio", "waic"} <= set(result.detection.scores)
    assert result.detection.settings["ensemble_k"] == 3  # this model and the two passed in
    assert result.results["extra_model_sources"] == {"background": ["Gaussian (passed in)"],
                                                     "ensemble": ["Gaussian (passed in)"] * 2}
    result.write(tmp_path / "r")
    report = (tmp_path / "r" / "report.md").read_text()
    assert "- likelihood ratio's background model: Gaussian (passed in)" in report
    assert "- WAIC's ensemble member 2: Gaussian (passed in)" in report
    parts = result.detection.ensemble["waic_parts_nats"]["out_test"]
    assert f"{parts['var_log_px']:,.1f} / {parts['median_var_log_px']:,.1f} on OUT-test" in report
