"""Detectors as objects: each equals its score function on the model's own evaluations, fits on held-out IN images
only, saves and loads without pickle, and shares one evaluation per image set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from empirical.io.errors import DgmOodError
from empirical.models.contract import describe
from empirical.models.evaluation import evaluate
from empirical.models.registry import build_model
from empirical.ood import scores
from empirical.ood.detectors import (
    RECOMMENDED,
    WAIC,
    Complexity,
    Detector,
    DetectorError,
    DoSE,
    LatentTerm,
    LevelRatio,
    Likelihood,
    LikelihoodRatio,
    Typicality,
)
from empirical.ood.features import ModelPass, statistics
from empirical.ood.suite import choose_scores, detectors_for
from empirical.training.presets import get_preset
from tests.helpers import randomize
from verify.detection import build, detection


def flow(seed: int) -> torch.nn.Module:
    return randomize(build_model("cvglow", get_preset("smoke", "cvglow", (1, 28, 28), seed=seed).model), seed).eval()


def images(n: int, seed: int, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (n, 1, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def sets():
    return {"heldout": images(12, 1), "in_test": images(10, 2), "out_test": images(8, 3, high=64)}


def test_each_detector_is_its_score_function_on_the_models_evaluations(sets):
    model = flow(0)
    ev = {k: evaluate(model, v, seed=0) for k, v in sets.items()}
    entropy = float(ev["heldout"].bpd.mean())
    x = sets["out_test"]
    assert np.array_equal(Likelihood(model).score(x), ev["out_test"].bpd)
    typicality = Typicality(model).fit(sets["heldout"])
    assert typicality.entropy == entropy
    assert np.array_equal(typicality.score(x), scores.typicality(ev["out_test"].bpd, entropy))
    assert np.array_equal(Complexity(model, "png").score(x), scores.complexity(
        ev["out_test"].bpd, scores.compressed_bits(x, "png"), 784))
    assert np.array_equal(DoSE(model).fit(sets["heldout"]).score(x),
                          scores.dose(statistics(ev["heldout"]), statistics(ev["out_test"])))
    assert np.array_equal(LatentTerm(model, "latent_top").score(x), -ev["out_test"].parts["latent_top"])
    background = flow(1)
    assert np.array_equal(LikelihoodRatio(model, background).score(x),
                          ev["out_test"].bpd - evaluate(background, x, seed=0).bpd)


def test_a_detector_that_needs_held_out_images_refuses_to_score_before_fit(sets):
    with pytest.raises(DetectorError, match="fit"):
        Typicality(flow(0)).score(sets["in_test"])


def test_fit_learns_from_the_held_out_images_only(sets):
    det = Typicality(flow(0)).fit(sets["heldout"])
    before = det.entropy
    det.score(sets["out_test"])
    assert det.entropy == before
    assert det.entropy != Typicality(flow(0)).fit(sets["out_test"]).entropy


def test_save_and_load_round_trip_without_pickle(sets, tmp_path):
    model = flow(0)
    for det in (Typicality(model), DoSE(model)):
        det.fit(sets["heldout"])
        path = det.save(tmp_path / f"{det.name}.npz")
        with np.load(path, allow_pickle=False) as z:  # plain arrays and a JSON header
            assert "header" in z.files
        again = type(det)(model).load(path)
        assert np.array_equal(again.score(sets["out_test"]), det.score(sets["out_test"]))
    with pytest.raises(DetectorError, match="typicality"):
        DoSE(model).load(tmp_path / "typicality.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DetectorError, match="not a saved detector"):
        Typicality(model).load(tmp_path / "junk.npz")


def test_detectors_on_one_model_pass_evaluate_each_set_once(sets, monkeypatch):
    from empirical.ood import features

    calls = []

    def counted(model, x, **kw):
        calls.append(len(x))
        return evaluate(model, x, **kw)

    monkeypatch.setattr(features, "evaluate", counted)
    shared = ModelPass(flow(0))
    for det in (Likelihood(shared), Complexity(shared, "png"), LatentTerm(shared, "latent_top"), LevelRatio(shared)):
        det.score(sets["in_test"])
        det.score(sets["in_test"].copy())  # the same content in another array
    assert calls == [len(sets["in_test"])]


def test_waic_needs_two_models_and_reads_each_members_log_likelihood(sets):
    with pytest.raises(DetectorError):
        WAIC([flow(0)])
    members = [flow(0), flow(1)]
    log_px = np.stack([evaluate(m, sets["in_test"], seed=0).log_px for m in members])
    assert np.array_equal(WAIC(members).score(sets["in_test"]), scores.waic(log_px))


def test_a_flow_gets_every_cheap_detector_with_the_recommended_first(sets):
    model = ModelPass(flow(0))
    names = [d.name for d in detectors_for(model, describe(model.model), model(sets["in_test"]).parts, heldout=True)]
    assert names[0] == RECOMMENDED
    assert {"likelihood", "typicality", "complexity_jpegxl", "dose", "latent_top", "level_ratio"} <= set(names)
    without = [d.name for d in detectors_for(model, describe(model.model), [], heldout=False)]
    assert "typicality" not in without and "dose" not in without


def test_one_vocabulary_of_scores():
    assert choose_scores("cheap").names is None and choose_scores("all").level == "all"
    assert choose_scores("likelihood,typicality").names == ("likelihood", "typicality")
    assert choose_scores("likelihood,waic").level == "all" and choose_scores("gradient").level == "model"
    assert choose_scores("latent_top").level == "cheap"
    with pytest.raises(DgmOodError, match="unknown score nonsense"):
        choose_scores("likelihood,nonsense")


class PixelMean(Detector):
    """A new score is one class: S(x) = |mean pixel − its mean on held-out IN images|."""

    name, needs_fit = "pixel_mean", True

    def _fit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {"mean": np.array(images.mean())}

    def _score(self, images: np.ndarray) -> np.ndarray:
        return np.abs(images.reshape(len(images), -1).mean(1) - self.fitted["mean"])


def test_a_new_score_is_one_class_and_joins_the_detection_table(sets):
    from empirical.data.imageset import as_image_set

    in_test, out_test, heldout = (as_image_set(sets[k], k) for k in ("in_test", "out_test", "heldout"))
    dets = build(flow(0), in_test, heldout, choice=choose_scores("likelihood"))
    dets.append(PixelMean().fit(heldout))
    det, per_image = detection(dets, in_test, out_test, heldout)
    assert list(det["scores"]) == ["likelihood", "pixel_mean"]
    assert det["scores"]["pixel_mean"]["auroc"] == 1.0  # OUT (pixels < 64) is far darker than IN
    assert per_image["pixel_mean"][1].shape == (len(out_test),)


def test_a_detection_of_one_score_alone_needs_no_other_detector(sets):
    from empirical.data.imageset import as_image_set

    in_test, out_test = as_image_set(sets["in_test"], "in"), as_image_set(sets["out_test"], "out")
    det, _ = detection([WAIC([flow(0), flow(1)])], in_test, out_test, None)
    assert list(det["scores"]) == ["waic"] and det["ensemble"]["k"] == 2 and det["batch_typicality"] == []


@pytest.mark.parametrize("make", [Typicality, DoSE])
def test_a_detector_that_fits_needs_two_held_out_images(make):
    with pytest.raises(DetectorError, match=r"give at least 2, got 1"):
        make(flow(0)).fit(images(1, 0))


@pytest.mark.parametrize("make", [lambda: Typicality("flow.pt"), lambda: LikelihoodRatio(flow(0), None),
                                  lambda: WAIC([flow(0), 3])])
def test_a_detector_of_something_that_is_not_a_model_says_so(make):
    with pytest.raises(DgmOodError, match="a detector reads a density model"):
        make()
