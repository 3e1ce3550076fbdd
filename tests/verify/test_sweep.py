"""The shift sweep: every cell's gap is the measured difference of mean bits/dim, its predictions are the theory's
closed form and the complexity fit, the summary and the model-or-data verdicts are computed from the cells, and
the command writes its report and figures all together."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from empirical.data.imageset import ImageSet
from empirical.data.shifts import shift_images
from empirical.models.evaluation import evaluate
from empirical.models.registry import build_model
from empirical.training.presets import get_preset
from tests.faults.conftest import assert_one_line_error, cli
from tests.helpers import randomize
from theory.predict import closed_form
from theory.quadratic import Moments
from verify.agreement import IN_TEST, RANK_AGREEMENT, complexity_r2, rank_agreement, rank_r_squared, spearman, verdicts
from verify.sweep import Cell, Shifted, Sweep, best_worst_case, complexity_prediction, shifted_sets, summary, sweep


@pytest.fixture(scope="module")
def flow():
    return randomize(build_model("cvglow", get_preset("smoke", "cvglow", (1, 28, 28)).model), 0).eval()


def _set(n: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(40, 200, (n, 1, 28, 28), dtype=np.uint8), f"set{seed}", "test", "array")


def test_each_cell_is_the_measured_gap_and_auroc(flow):
    in_test, heldout = _set(12, 0), _set(10, 1)
    shifted = shifted_sets(in_test, shifts=("contrast_scale", "hflip", "saturate"), severities=(1, 5), limit=10)
    cells = sweep(flow, shifted, heldout).cells
    assert [(c.shift, c.severity) for c in cells] == [("contrast_scale", 1), ("contrast_scale", 5), ("hflip", 1),
                                                      ("hflip", 5)]  # saturate is colour only: skipped on grey
    base = in_test.head(10)
    out = shift_images(base, "contrast_scale", 5, 0)
    expected = evaluate(flow, base.images).bpd.mean() - evaluate(flow, out.images).bpd.mean()
    assert cells[1].gap_bpd == pytest.approx(expected, abs=1e-9)
    assert {"likelihood", "typicality", "complexity_png", "dose"} <= set(cells[0].auroc)
    assert all(0 <= v <= 1 for c in cells for v in c.auroc.values())


def test_the_closed_form_prediction_is_the_theorys(flow):
    shifted = shifted_sets(_set(12, 0), shifts=("contrast_scale",), severities=(3,), limit=12)
    cell = sweep(flow, shifted, None).cells[0]
    theory = closed_form(flow, Moments.of_images(shifted.base.images),
                         Moments.of_images(shifted.sets[("contrast_scale", 3)].images))
    assert cell.predicted["closed_form"] == pytest.approx(theory["gap_bpd"], rel=1e-9)
    assert "complexity" not in cell.predicted  # no held-out images: no fit


def test_the_complexity_prediction_of_an_exact_line():
    bits = np.array([1.0, 2.0, 3.0, 4.0])
    assert complexity_prediction(bits, 2 + 3 * bits, np.array([2.0, 2.0]), np.array([1.0, 0.0])) == \
        pytest.approx(3 * (2.0 - 0.5))  # a simpler OUT (lower L) is predicted a lower bits/dim: a positive gap


def test_rank_agreement_and_r2_of_known_cases():
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert rank_r_squared(x, 2 * x + 1) == pytest.approx(1.0) and np.isnan(rank_r_squared(x, np.ones(10)))
    assert rank_r_squared(x, np.where(x == 9, 1e12, x)) == pytest.approx(1.0)  # one huge value changes no rank

    def made(label, out):
        cells = [Cell("s", "noise", v, 0.3, 0.1, 3.0, {}, {}) for v in (1, 2)]
        return Sweep(label, cells, x, {("s", 1): out, ("s", 2): out})

    a, same, reversed_ = made("a", x), made("b", x**2), made("c", -x)
    table = rank_agreement([a, same, reversed_])
    assert table["s"] == {"a ~ b": pytest.approx(1.0), "a ~ c": pytest.approx(-1.0), "b ~ c": pytest.approx(-1.0)}
    assert table[IN_TEST]["a ~ b"] == pytest.approx(1.0)
    assert verdicts([a, same])["s"]["driver"] == "data" and verdicts([a, reversed_])["s"]["driver"] == "model"
    assert verdicts([a])["s"]["driver"] is None and RANK_AGREEMENT == 0.7
    assert verdicts([a, same])["s"]["inverts_in"] == ["a", "b"]  # 0.3 > 2 × 0.1 in both
    shifted = Shifted(None, {}, {("", 0): x, ("s", 1): x, ("s", 2): 2 * x})
    assert complexity_r2(a, shifted)[IN_TEST] == pytest.approx(1.0)


def test_the_summary_is_computed_from_the_cells():
    up = Cell("a", "hypothesis", 1, 0.5, 0.1, 3.0, {"complexity_png": 0.4}, {})
    down = Cell("b", "noise", 1, -0.5, 0.1, 4.0, {"complexity_png": 0.9}, {})
    flat = Cell("a", "hypothesis", 2, 0.1, 0.1, 3.0, {"complexity_png": 0.6}, {})
    facts = summary([up, flat, down])
    assert facts["inverts_somewhere"] == ["a"] and facts["inverts_everywhere"] == []
    assert facts["recommended_worst_auroc_by_family"] == {"hypothesis": 0.4, "noise": 0.9}


def test_the_command_writes_the_report_and_refuses_bad_choices(world, tmp_path):
    args = ("verify.shifts", "fashionmnist", "--checkpoint", world["ckpt"]["cvglow"], "--data-dir", world["data"],
            "--allow-nonstandard-data", "--limit", "8", "--out", tmp_path / "r")
    proc = cli(*args, "--shifts", "contrast_scale,pixel_permutation", "--severities", "1,5", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name for p in (tmp_path / "r").iterdir()} - {".run-files"} == {
        "report.md", "results.json", "gap_cvglow-fashionmnist.png", "gap_curves.png", "auroc_curves.png",
        "auroc_recommended.png", "auroc_likelihood.png"}  # one model (a checkpoint): no agreement figure
    written = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [len(v) for v in written["cells"].values()] == [4]
    assert written["provenance"]["command"].startswith("python -m verify.shifts")
    assert "| contrast_scale | hypothesis |" in (tmp_path / "r" / "report.md").read_text()
    assert_one_line_error(cli(*args, "--shifts", "blurry", tmp=tmp_path), "--shifts: unknown blurry")
    assert_one_line_error(cli(*args, "--severities", "0,7", tmp=tmp_path), "--severities takes whole numbers")
    assert_one_line_error(cli(*args, "--all-models", tmp=tmp_path), "--all-models trains or reuses our three")


@pytest.mark.slow
def test_all_models_and_another_sets_flow_rank_the_same_images(world, tmp_path):
    """--all-models trains (smoke) our three families on IN and the flow of the other set; every model is evaluated
    on the same shifted images, and the agreement and verdicts are computed over all four."""
    proc = cli("verify.shifts", "fashionmnist", "--all-models", "--preset", "smoke", "--data-dir", world["data"],
               "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", "--limit", "6", "--shifts",
               "invert,contrast_scale", "--severities", "2,4", "--scores", "likelihood", "--out", tmp_path / "r",
               tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.loads((tmp_path / "r" / "results.json").read_text())
    labels = ["cvglow (FashionMNIST)", "pixelcnn (FashionMNIST)", "vae (FashionMNIST)", "cvglow (MNIST)"]
    assert list(written["cells"]) == labels and written["limit"] == 6
    assert len(written["agreement"]["invert"]) == 6 and set(written["verdicts"]) == {"invert", "contrast_scale"}
    assert all(v["driver"] in ("data", "model") for v in written["verdicts"].values())
    assert (tmp_path / "r" / "agreement.png").is_file()
    assert "## Model or data" in (tmp_path / "r" / "report.md").read_text()


def test_the_best_worst_case_over_families_is_computed_from_the_cells():
    cells = [Cell("a", "noise", 1, 0.0, 0.1, 3.0, {"x": 0.9, "y": 0.6}, {}),
             Cell("b", "blur", 1, 0.0, 0.1, 3.0, {"x": 0.3, "y": 0.7}, {}),
             Cell("b", "blur", 2, 0.0, 0.1, 3.0, {"x": 0.5, "y": 0.7}, {})]
    facts = summary(cells)
    assert facts["auroc_by_family"]["x"] == {"noise": 0.9, "blur": 0.4, "worst": 0.4}
    assert facts["best_worst_case"] == "y"  # worst 0.6 against x's 0.4


def test_a_sweep_of_one_score_still_measures_the_gap(flow):
    from empirical.ood.suite import choose_scores

    shifted = shifted_sets(_set(12, 0), shifts=("invert",), severities=(5,), limit=10)
    cells = sweep(flow, shifted, None, choice=choose_scores("complexity_png")).cells
    assert list(cells[0].auroc) == ["complexity_png"] and cells[0].gap_bpd != 0


def test_the_rule_takes_the_best_worst_case_over_every_model_among_the_scores_all_have():
    flow = {"x": {"noise": 0.9, "worst": 0.9}, "y": {"noise": 0.7, "worst": 0.7},
            "latent": {"noise": 1.0, "worst": 1.0}}
    other = {"x": {"blur": 0.5, "worst": 0.5}, "y": {"blur": 0.6, "worst": 0.6}}
    assert best_worst_case([flow]) == "latent"
    assert best_worst_case([flow, other]) == "y"  # x's worst over both is 0.5; latent is not every model's
    assert best_worst_case([]) is None
    with_likelihood = {**other, "likelihood": {"blur": 0.99, "worst": 0.99}}
    assert best_worst_case([with_likelihood]) == "y"  # the score under test is no candidate
    assert best_worst_case([with_likelihood], exclude=()) == "likelihood"


def test_a_missing_partner_set_skips_the_agreement_and_one_named_is_an_error(world, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["data"] / "fashion-mnist", data / "fashion-mnist")  # no MNIST beside it
    args = ("verify.shifts", "fashionmnist", "--preset", "smoke", "--data-dir", data, "--allow-nonstandard-data",
            "--runs-dir", tmp_path / "runs", "--limit", "6", "--shifts", "invert", "--severities", "2",
            "--scores", "likelihood")
    proc = cli(*args, "--out", tmp_path / "r", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: no rank agreement across training sets" in proc.stderr
    assert list(json.loads((tmp_path / "r" / "results.json").read_text())["cells"]) == ["cvglow (FashionMNIST)"]
    assert_one_line_error(cli(*args, "--other-set", "mnist", "--out", tmp_path / "r2", tmp=tmp_path), "mnist")


def test_a_run_names_the_commit_it_started_at(monkeypatch):
    from verify import results
    from verify.runs import provenance

    monkeypatch.setattr(results, "git_commit", lambda: "a" * 40)
    start = results.Provenance("python -m verify.shifts x")
    monkeypatch.setattr(results, "git_commit", lambda: "b" * 40)  # the checkout moves on during the run
    assert provenance(start, torch.device("cpu"))["commit"] == "a" * 40


def test_heatmap_cells_are_written_white_on_the_dark_ends_only():
    from verify.shift_figures import text_colour

    assert [text_colour(v) for v in (0.0, 0.15, 0.25, 0.5, 0.75, 0.85, 1.0)] == [
        "white", "white", "black", "black", "black", "white", "white"]


def test_heatmap_colours_are_linear_but_for_a_heavy_tail():
    from matplotlib.colors import SymLogNorm

    from verify.shift_figures import colour_norm

    plain = colour_norm(np.array([0.3, -1.2, 2.0]), 0.0, None)
    assert (plain.vmin, plain.vmax) == (-2.0, 2.0) and not isinstance(plain, SymLogNorm)
    auroc = colour_norm(np.array([0.3, 0.9]), 0.5, None)
    assert (auroc.vmin, auroc.vmax) == pytest.approx((0.1, 0.9))
    heavy = colour_norm(np.array([0.3, -1.2, 2.0, -1.3e18]), 0.0, None)  # a flow's bits/dim far outside its data
    assert isinstance(heavy, SymLogNorm) and heavy.vmin == -1.3e18 and heavy(-1.2) < 0.5 < heavy(2.0)
    assert (colour_norm(np.array([5.0]), 0.0, (-1.0, 1.0)).vmin, colour_norm(np.array([]), 0.0, None).vmax) == (
        -1.0, 1.0)


def test_a_symmetric_log_colour_bar_has_a_few_decades_per_side():
    from verify.shift_figures import symlog_ticks

    assert symlog_ticks(1.9, 1.3e18) == [-1e16, -1e11, -1e6, -10.0, 0.0, 10.0, 1e6, 1e11, 1e16]
    assert symlog_ticks(0.5, 300.0) == [-100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0]


def test_heatmap_cell_text_stays_short_for_huge_values():
    from verify.shift_figures import cell_text

    assert [cell_text(v, "{:+.2f}") for v in (0.27, -28.71, 999.0, -1352.36, -7133389.62, -1.33e18, 4.2e21)] == [
        "+0.27", "-28.71", "+999.00", "-1.4e3", "-7.1e6", "-1.3e18", "+4.2e21"]


def test_a_heatmap_with_an_outlier_is_drawn(tmp_path):
    from verify.shift_figures import heatmap

    values = np.array([[0.3, -1.2, np.nan], [-2.5, 0.8, -1.3e18]])  # one cell 10¹⁸ away, as a flow can give
    path = heatmap(values, ["a", "b"], [1, 2, 3], "gap", "bpd", tmp_path / "h.png")
    assert path.stat().st_size > 1000
