"""What produces the gap: each intervention on a case with a known answer, the entropy decomposition's identity, the
complexity predictor's fit, the contrast curve of a quadratic model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from empirical.ood.scores import compressed_bits
from tests.empirical.test_contract import Gaussian
from verify import explain


def _two_level(n: int, low: int, high: int) -> np.ndarray:
    """n images 1×4×4 whose every dimension takes ``low`` and ``high`` equally often (alternating over images)."""
    values = np.where(np.arange(n)[:, None] % 2 == 0, low, high) * np.ones((n, 16))
    return values.reshape(n, 1, 4, 4).astype(np.uint8)


def test_moment_matching_maps_each_dimension_onto_the_target_moments():
    rng = np.random.default_rng(0)
    q = rng.integers(60, 120, (500, 1, 4, 4)).astype(np.uint8)
    q[:, 0, 0, 0] = 77  # a constant dimension: σ_q = 0 takes the target mean
    target = (np.full((1, 4, 4), 128.0), np.full((1, 4, 4), 30.0))
    both, clipped = explain.match_moments(q, target)
    mu, sd = explain.moments(both)
    assert np.allclose(mu[0, 1:, 1:], 128, atol=0.6) and np.allclose(sd[0, 1:, 1:], 30, atol=0.6)
    assert (both[:, 0, 0, 0] == 128).all() and clipped == 0.0
    mean_only, _ = explain.match_moments(q, target, variance=False)
    assert np.allclose(explain.moments(mean_only)[1], explain.moments(q)[1], atol=0.6)
    var_only, _ = explain.match_moments(q, target, mean=False)
    assert np.allclose(explain.moments(var_only)[0][0, 1:, 1:], explain.moments(q)[0][0, 1:, 1:], atol=0.6)


def test_under_a_gaussian_model_moment_matching_removes_the_gap_exactly():
    """log N(x; μ, σ²) per dimension depends on the data only through their first two moments: OUT matched to
    IN-test's per-dimension moments is IN-test itself here, so the gap that survives is exactly 0."""
    model = Gaussian(mean=0.3, std=0.2)
    in_test, out_test = _two_level(200, 100, 140), _two_level(200, 115, 125)  # equal means, σ 20 against 5
    seed, device = 0, torch.device("cpu")
    from empirical.models.evaluation import evaluate

    lp = {k: evaluate(model, v, seed=seed).log_px for k, v in (("in", in_test), ("out", out_test))}
    result = explain.interventions(model, in_test, out_test, lp["in"], lp["out"], 16, seed=seed, device=device)
    assert result["measured"]["gap_nats"] > 1  # lower variance: the higher likelihood, as the paper says
    assert result["rows"]["moments"]["gap_nats"] == 0.0 and result["rows"]["moments"]["share"] == 0.0
    assert result["rows"]["variance"]["share"] == 0.0  # the means were equal already
    assert result["rows"]["mean"]["share"] == pytest.approx(1.0)  # matching the means changes nothing
    assert result["rows"]["gaussian"]["n"] == 200


def test_the_entropy_decomposition_sums_to_the_gap():
    e = explain.entropy_decomposition(in_bpd=3.8, out_bpd=2.9, out_own_bpd=1.6, in_train_bpd=3.7)
    assert e["entropy_difference_bpd"] - e["kl_difference_bpd"] == pytest.approx(e["gap_bpd"]) == pytest.approx(0.9)
    assert e["entropy_difference_bpd"] == pytest.approx(2.2) and e["kl_out_bpd"] == pytest.approx(1.3)
    assert e["dominant"] == "entropy"


def test_the_complexity_predictor_recovers_an_exact_linear_relation():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (60, 1, 8, 8)).astype(np.uint8) // rng.integers(1, 64, (60, 1, 1, 1)).astype(np.uint8)
    in_test, out_test = train[:20], train[20:40] // 4
    log_px = 3.0 - 0.5 * compressed_bits(train, "png")
    c = explain.complexity_prediction(train, log_px, in_test, out_test, log_px[:20], 64)
    assert c["slope_nats_per_bit"] == pytest.approx(-0.5) and c["intercept_nats"] == pytest.approx(3.0)
    expected = -0.5 * (compressed_bits(out_test, "png").mean() - compressed_bits(in_test, "png").mean())
    assert c["gap_nats"] == pytest.approx(expected) and c["r2_in_train"] == pytest.approx(1.0)


def test_the_complexity_predictor_refuses_images_that_all_compress_alike():
    """One compressed length for every IN-train image leaves the slope unidentified: no number, a reason."""
    train = np.zeros((30, 1, 8, 8), dtype=np.uint8)
    log_px = np.random.default_rng(2).normal(size=30)
    out_test = np.random.default_rng(3).integers(0, 256, (10, 1, 8, 8)).astype(np.uint8)
    c = explain.complexity_prediction(train, log_px, train[:10], out_test, log_px[:10], 64)
    assert c["gap_nats"] is None and c["gap_bpd"] is None and "no slope to fit" in c["reason"]


def test_contrast_scaling_of_a_quadratic_model_follows_its_second_order_curve():
    from theory.predict import to_model_space
    from theory.quadratic import exact_quadratic

    model = Gaussian(mean=0.45, std=0.3)
    images = np.random.default_rng(2).normal(120, 30, (400, 1, 4, 4)).clip(0, 255).round().astype(np.uint8)
    same, clipped = explain.scale_contrast(images, 1.0)
    assert np.array_equal(same, images) and clipped == 0.0
    quad = exact_quadratic(model, to_model_space(images.mean(0, dtype=np.float64)).numpy().ravel())
    curve = explain.contrast_curve(model, {"in_test": images}, seed=0, device=torch.device("cpu"), quad=quad)
    measured, predicted = curve["measured"]["in_test"], curve["second_order"]["in_test"]
    assert measured[curve["s"].index(1.0)] == 0.0
    assert np.allclose(measured, predicted, atol=0.05)  # exact for a quadratic, up to the noise's sample mean
    assert measured[0] > 0 > measured[-1]  # less contrast: closer to the mean, higher density


@pytest.mark.slow
def test_compare_with_entropy_trains_outs_model_and_the_terms_sum_to_the_gap(tmp_path, monkeypatch):
    import json

    from empirical.cli import run_cli
    from tests.faults.conftest import write_tiny_idx
    from verify import compare

    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    for folder, seed in (("fashion-mnist", 1), ("mnist", 2)):
        write_tiny_idx(tmp_path / "data", folder, seed)
    common = ["--preset", "smoke", "--data-dir", str(tmp_path / "data"), "--allow-nonstandard-data", "--runs-dir",
              str(tmp_path / "runs")]
    assert run_cli(compare.main, ["fashionmnist", "mnist", "--entropy", "--out", str(tmp_path / "r"), *common]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    e = res["explain"]["entropy"]
    assert e["entropy_difference_bpd"] - e["kl_difference_bpd"] == pytest.approx(res["gap_bpd"])
    assert e["h_in_bpd"] == pytest.approx(res["bpd"]["in_test"]) and len(list((tmp_path / "runs" / "models")
                                                                               .iterdir())) == 2
    assert "Entropy decomposition" in (tmp_path / "r" / "report.md").read_text()
    assert run_cli(compare.main, ["fashionmnist", "noise", "--entropy", "--out", str(tmp_path / "n"), *common]) == 2
