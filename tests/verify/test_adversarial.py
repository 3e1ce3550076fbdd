"""Adversarial examples: every attack stays inside its ε-ball and in 0..255, the adaptive loss raises log p, the
detection thresholds come from clean held-out images only, PixelDefend's p-value is the rank it should be, the
classifier resumes bit for bit, its cache is sealed, its shipped weights serve exactly their run, and the command
writes its report."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from empirical.data.imageset import ImageSet
from empirical.io.errors import CheckpointError, DgmOodError
from empirical.models.classifier import ClassifierConfig, SmallCNN
from empirical.models.registry import build_model
from empirical.ood import attacks
from empirical.ood.scores import pixeldefend_pvalue
from empirical.training import shipped
from empirical.training.classifier import cached_classifier, classifier_preset, find_shipped, train_classifier
from empirical.training.presets import get_preset
from tests.faults.conftest import cli
from tests.helpers import randomize
from verify.attacking import Attacked, attack_all, detect

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def flow():
    return randomize(build_model("cvglow", get_preset("smoke", "cvglow", SHAPE).model), 0).eval()


@pytest.fixture(scope="module")
def classifier():
    return randomize(SmallCNN(ClassifierConfig(SHAPE, width=4, hidden=8)), 1, scale=0.05).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8))


def _inside(clean: torch.Tensor, adv: torch.Tensor, eps: float) -> None:
    assert adv.dtype == torch.uint8 and adv.shape == clean.shape
    assert (adv.int() - clean.int()).abs().max() <= eps


@settings(max_examples=8, deadline=None)
@given(eps=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_every_attack_stays_in_its_eps_ball_and_in_0_to_255(classifier, flow, eps, seed):
    x, y = _images(4, seed), torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    _inside(x, attacks.fgsm(classifier, x, y, eps), eps)
    _inside(x, attacks.pgd(classifier, x, y, eps, steps=3, generator=gen), eps)
    _inside(x, attacks.pgd(classifier, x, y, eps, steps=2, generator=gen, density=flow, lam=10.0), eps)
    _inside(x, attacks.toward_typical(flow, x, 5.0, eps, steps=2), eps)
    _inside(x, attacks.margin_adaptive(classifier, x, y, eps, flow, 1.0, steps=2), eps)


def test_the_adaptive_loss_raises_log_p(classifier, flow):
    x, y = _images(16, 3), torch.zeros(16, dtype=torch.long)

    def log_p(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float(attacks.log_density_per_dim(flow, images.float()).mean())

    plain = attacks.pgd(classifier, x, y, 8, generator=torch.Generator().manual_seed(0))
    adaptive = attacks.pgd(classifier, x, y, 8, generator=torch.Generator().manual_seed(0), density=flow, lam=100.0)
    assert log_p(adaptive) > log_p(plain) and log_p(adaptive) > log_p(x)


@pytest.mark.parametrize("images, labels, eps, match", [
    (lambda x: x.float() / 255, lambda y: y, 2, "uint8 image tensors N×C×H×W .* got torch.float32"),
    (lambda x: x[:, 0], lambda y: y, 2, r"got torch.uint8 of shape \(4, 28, 28\)"),
    (lambda x: x, lambda y: y[:3], 2, "one integer label per image: 4 images"),
    (lambda x: x, lambda y: y, -2, "0 < ε ≤ 255"),
    (lambda x: x, lambda y: y, 0, "0 < ε ≤ 255"),
])
def test_an_attack_refuses_what_it_would_get_silently_wrong(classifier, flow, images, labels, eps, match):
    x, y = _images(4, 0), torch.zeros(4, dtype=torch.long)
    for attack in (attacks.fgsm, attacks.pgd, lambda c, i, lab, e: attacks.margin_adaptive(c, i, lab, e, flow, 1.0)):
        with pytest.raises(DgmOodError, match=match):
            attack(classifier, images(x), labels(y), eps)


def test_the_margin_is_the_best_other_logit_minus_the_true_one():
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    assert attacks.margin(logits, torch.tensor([1, 0, 2])).tolist() == [-1.0, 2.0, -4.0]


class _Constant(nn.Module):
    """A classifier whose logits do not depend on the image (but stay differentiable in it)."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + 0 * x.flatten(1).sum(1, keepdim=True)


def _log_p(flow, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return attacks.log_density_per_dim(flow, images.float())


def test_once_the_classifier_is_wrong_the_margin_attacker_only_raises_log_p(flow):
    x, y = _images(8, 5), torch.zeros(8, dtype=torch.long)
    wrong = _Constant([0.0, 5.0])  # wrong by 5 > κ from the start: the clamped margin has no gradient
    adv = attacks.margin_adaptive(wrong, x, y, 8, flow, 1.0, steps=6)
    _inside(x, adv, 8)
    assert (_log_p(flow, adv) > _log_p(flow, x)).all()
    shorter = attacks.margin_adaptive(wrong, x, y, 8, flow, 1.0, steps=2)  # it keeps the best iterate, so more
    assert (_log_p(flow, adv) >= _log_p(flow, shorter) - 1e-6).all()      # steps never end lower


@pytest.mark.parametrize("parts", [("log_px", "latent_top"), ("latent_top",)])
def test_the_margin_attacker_can_raise_the_top_latent_term_as_well_or_alone(flow, parts):
    x, y = _images(8, 7), torch.zeros(8, dtype=torch.long)
    wrong = _Constant([0.0, 5.0])  # fooled from the start: every step raises the gain alone

    def top(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return flow.log_prob_parts((images.float() + 0.5) / 256)["latent_top"]

    plain = attacks.margin_adaptive(wrong, x, y, 8, flow, 1.0, steps=6)
    with_top = attacks.margin_adaptive(wrong, x, y, 8, flow, 1.0, steps=6, parts=parts)
    _inside(x, with_top, 8)
    gain = attacks.density_gain(flow, with_top.float(), parts)
    assert (gain >= attacks.density_gain(flow, plain.float(), parts) - 1e-6).float().mean() > 0.5
    assert top(with_top).mean() > top(x).mean()
    with torch.no_grad():  # the gain is the named parts' sum per dimension
        got = flow.log_prob_parts((with_top.float() + 0.5) / 256)
        expected = sum(got[p] for p in parts) / with_top[0].numel()
    assert torch.allclose(attacks.density_gain(flow, with_top.float(), parts).detach(), expected, atol=1e-5)
    with pytest.raises(DgmOodError, match=r"no smooth log_prob_parts \['latent_nosuch'\]"):
        attacks.margin_adaptive(wrong, x, y, 8, flow, 1.0, steps=1, parts=("log_px", "latent_nosuch"))


def test_an_image_the_margin_attacker_never_fools_gets_its_last_iterate(flow):
    x, y = _images(4, 6), torch.zeros(4, dtype=torch.long)
    right = _Constant([9.0, 0.0])  # always right: nothing fools it
    adv = attacks.margin_adaptive(right, x, y, 4, flow, 1.0, steps=3)
    _inside(x, adv, 4)
    assert not torch.equal(adv, x)  # the steps still moved it (up log p), and the last iterate is returned


def test_a_density_that_is_not_smooth_is_refused_by_the_adaptive_attack(classifier):
    pixelcnn = build_model("pixelcnn", get_preset("smoke", "pixelcnn", SHAPE).model).eval()
    with pytest.raises(Exception, match="not differentiable"):
        attacks.pgd(classifier, _images(2, 0), torch.zeros(2, dtype=torch.long), 2, density=pixelcnn, lam=1.0)


def test_pixeldefend_p_values_are_ranks_among_held_out_images():
    held = np.array([1.0, 2.0, 3.0, 4.0])
    assert pixeldefend_pvalue(held, np.array([0.5, 2.0, 3.5, 9.0])).tolist() == [1.0, 4 / 5, 2 / 5, 1 / 5]


def test_thresholds_come_from_clean_held_out_images_only(flow):
    def image_set(seed: int, n: int = 12) -> ImageSet:
        return ImageSet(_images(n, seed).numpy(), f"s{seed}", "test", "array")

    heldout, clean = image_set(1, 20), image_set(2)
    one = [Attacked("a", image_set(3), 0.5, {})]
    other = [Attacked("b", image_set(4), 0.5, {}), Attacked("c", image_set(5), 0.5, {})]
    first, second = detect(flow, heldout, clean, one), detect(flow, heldout, clean, other)
    assert first["thresholds"] == second["thresholds"]  # the adversarial images never move a threshold
    for name, cut in first["thresholds"].items():
        held_scores = next(v for k, v in _scores(flow, heldout).items() if k == name)
        assert cut == pytest.approx(np.quantile(held_scores, 0.95))
    assert all(0 <= r <= 1 for r in first["attacks"]["a"]["detection_rate"].values())


def _scores(model, images: ImageSet) -> dict:
    from verify.detection import build

    return {d.name: d.score(images) for d in build(model, images, images)}


def test_the_classifier_resumes_bit_for_bit_and_its_cache_is_sealed(tmp_path):
    train, y_train, test, y_test = _tiny_sets()
    preset = classifier_preset("smoke", SHAPE)
    whole, _ = train_classifier(train, y_train, test, y_test, preset, tmp_path / "whole")
    often = replace(preset, checkpoint_every=10)
    _interrupted(train, y_train, test, y_test, often, tmp_path / "resumed", stop=10)
    resumed, payload = train_classifier(train, y_train, test, y_test, often, tmp_path / "resumed")
    assert payload["step"] == preset.steps and [h["step"] for h in payload["history"]] == [10, 20, 30]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    model, ckpt = cached_classifier(train, y_train, test, y_test, preset, tmp_path / "runs")
    again, same = cached_classifier(train, y_train, test, y_test, preset, tmp_path / "runs")
    assert same == ckpt and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                   again.state_dict().values(), strict=True))
    ckpt.write_bytes(ckpt.read_bytes()[:-8] + b"\0" * 8)  # damaged after it was sealed
    cached_classifier(train, y_train, test, y_test, preset, tmp_path / "runs")
    assert list(ckpt.parent.glob("last.pt.corrupt-*"))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), target=st.floats(1.0, 9.0))
def test_toward_typical_from_a_smaller_ball_never_ends_farther_from_the_target(flow, seed, target):
    x = _images(3, seed)

    def distance(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            bpd = (np.log(256) - attacks.log_density_per_dim(flow, images.float()).numpy()) / np.log(2)
        return np.abs(bpd - target)

    small = attacks.toward_typical(flow, x, target, 1, steps=2)
    large = attacks.toward_typical(flow, x, target, 4, steps=2, start=small)
    _inside(x, large, 4)
    assert np.all(distance(small) <= distance(x) + 1e-5) and np.all(distance(large) <= distance(small) + 1e-5)


def test_the_best_lambda_attacker_keeps_the_fooling_image_of_highest_log_p(classifier, flow):
    from verify.attacking import _best_lambda

    clean = ImageSet(_images(6, 0).numpy(), "c", "test", "array")
    x, y = torch.from_numpy(clean.images), torch.zeros(6, dtype=torch.long)
    fooled = [np.array(m, bool) for m in ([1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 0], [0, 1, 1, 0, 1, 0])]
    tried = [Attacked(f"t{i}", clean.derived(_images(6, i + 1).numpy(), f"t{i}", "t"), 0.5, {}, True, f)
             for i, f in enumerate(fooled)]
    best = _best_lambda(classifier, flow, clean, x, y, torch.ones(6, dtype=torch.bool), tried, "best")
    with torch.no_grad():
        log_p = torch.stack([attacks.log_density_per_dim(flow, torch.from_numpy(t.images.images).float())
                             for t in tried]).numpy()
    for i in range(6):
        options = [k for k in range(3) if fooled[k][i]]
        k = max(options, key=lambda k: log_p[k, i]) if options else 2  # none fooled: the largest λ's image
        assert np.array_equal(best.images.images[i], tried[k].images.images[i])


def _tiny_sets(seed: int = 0):
    rng = np.random.default_rng(seed)
    train = ImageSet(rng.integers(0, 256, (64, *SHAPE), dtype=np.uint8), "tr", "train", "array")
    test = ImageSet(rng.integers(0, 256, (16, *SHAPE), dtype=np.uint8), "te", "test", "array")
    return train, rng.integers(0, 10, 64), test, rng.integers(0, 10, 16)


def test_a_shipped_classifier_serves_exactly_its_run_and_retrain_skips_it(tmp_path, monkeypatch):
    train, y_train, test, y_test = _tiny_sets()
    preset = classifier_preset("smoke", SHAPE)
    trained, ckpt = cached_classifier(train, y_train, test, y_test, preset, tmp_path / "runs", command="python -m x")
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(shipped, "WEIGHTS", folder)
    s = shipped.export(ckpt, folder=folder)
    assert s.card["model"] == "cnn" and s.card["made_by"]["command"] == "python -m x" and shipped.check() == []
    assert 0 <= s.card["made_by"]["test_accuracy"] <= 1
    model, path = cached_classifier(train, y_train, test, y_test, preset, tmp_path / "fresh")
    assert path == s.weights and not (tmp_path / "fresh").exists()
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    _, path = cached_classifier(train, y_train, test, y_test, preset, tmp_path / "runs", retrain=True)
    assert path == ckpt  # --retrain: the runs cache (or training), never the shipped file
    assert find_shipped(train, test, classifier_preset("smoke", SHAPE, seed=1)) is None
    assert find_shipped(*_tiny_sets(1)[::2], preset) is None  # other images
    with pytest.raises(CheckpointError, match="is a classifier"):
        s.load()
    with pytest.raises(CheckpointError, match="is a classifier"):
        shipped.retrain(s, tmp_path / "again")
    s.weights.write_bytes(s.weights.read_bytes()[:-4] + b"\0" * 4)
    with pytest.raises(CheckpointError, match="missing or damaged"):
        cached_classifier(train, y_train, test, y_test, preset, tmp_path / "fresh")


def test_a_classifier_in_training_mode_is_refused():
    x = ImageSet(_images(2, 0).numpy(), "x", "test", "array")
    with pytest.raises(DgmOodError, match="training mode"):
        attack_all(SmallCNN(ClassifierConfig(SHAPE, width=4, hidden=8)).train(), x, np.zeros(2))


class _Flat(nn.Module):
    """A user's classifier: a linear layer on the flattened pixels, with ``classes`` logits (or a 1-D output)."""

    def __init__(self, classes: int, flat: bool = False):
        super().__init__()
        self.layer, self.flat = nn.Linear(784, classes), flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x.flatten(1))
        return out.sum(1) if self.flat else out


@pytest.mark.parametrize("model, labels, match", [
    (_Flat(2), [0, 5, 9, 1], "labels run up to 9 but the classifier gives 2 logits"),
    (_Flat(10, flat=True), [0, 5, 9, 1], r"logits of shape \(images, classes\); got \(2,\)"),
    (_Flat(10), [0, 5, 9], r"4 non-negative integers, one per image; got int64 of shape \(3,\)"),
    (_Flat(10), [0.0, 5.0, 9.0, 1.0], "non-negative integers"),
    (_Flat(10), [0, -1, 9, 1], "non-negative integers"),
])
def test_a_classifier_or_labels_that_do_not_fit_are_refused_by_name(model, labels, match):
    clean = ImageSet(_images(4, 0).numpy(), "c", "test", "array")
    with pytest.raises(DgmOodError, match=match):
        attack_all(model.eval(), clean, np.array(labels))


def _interrupted(train, y_train, test, y_test, preset, out, stop: int):
    """Train ``preset`` but stop (as Ctrl-C would) right after the checkpoint at step ``stop``."""
    from empirical.training import classifier as module

    real = module.save_checkpoint

    def save_then_stop(path, payload):
        real(path, payload)
        if payload["step"] == stop:
            raise KeyboardInterrupt

    module.save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train_classifier(train, y_train, test, y_test, preset, out)
    finally:
        module.save_checkpoint = real


@pytest.mark.slow
def test_the_command_writes_its_report(world, tmp_path):
    proc = cli("verify.adversarial", "fashionmnist", "--checkpoint", world["ckpt"]["cvglow"], "--preset", "smoke",
               "--data-dir", world["data"], "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", "--limit", "8",
               "--scores", "likelihood,typicality,complexity_png,latent_top", "--top", "--out", tmp_path / "r",
               tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads((tmp_path / "r" / "results.json").read_text())
    assert list(written["attacks"]) == ["fgsm ε=2/255", "fgsm ε=8/255", "pgd ε=2/255", "pgd ε=8/255",
                                        "adaptive ε=8/255 λ=1", "adaptive ε=8/255 λ=10", "adaptive ε=8/255 λ=100",
                                        "adaptive ε=8/255 best λ", "margin ε=8/255 best λ",
                                        "margin+top ε=8/255 best λ", "margin top-only ε=8/255 best λ"]
    rates = {k: v["success_rate"] for k, v in written["attacks"].items()}
    tried = [v for k, v in rates.items() if k.startswith(("pgd ε=8", "adaptive")) and "best" not in k]
    assert rates["adaptive ε=8/255 best λ"] >= max(tried)  # it fools every image one of its runs fooled
    rows = next(iter(written["detection"].values()))["attacks"]
    assert all((r["fooled_auroc"] is None) == (r["fooled"] == 0) for r in rows.values())
    assert all(v["linf_max"] <= 8 / 255 + 1e-9 for v in written["attacks"].values())
    assert written["toward_typical"] and written["provenance"]["command"].startswith("python -m verify.adversarial")
    written_files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"report.md", "examples.png", "roc_pgd.png", "roc_adaptive.png"} <= written_files


@pytest.mark.slow
def test_your_classifier_is_attacked_with_its_weights_and_one_that_does_not_fit_is_named(world, tmp_path, monkeypatch):
    (tmp_path / "myclassifier.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(784, classes))

        def flat():
            return nn.Sequential(build(), nn.Flatten(0))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    save_file(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), str(tmp_path / "w.safetensors"))
    common = ["fashionmnist", "--checkpoint", world["ckpt"]["cvglow"], "--preset", "smoke", "--data-dir", world["data"],
              "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", "--limit", "4", "--ood", "none",
              "--scores", "likelihood"]
    try:
        proc = cli("verify.adversarial", *common, "--classifier-factory", "myclassifier:build", "--classifier-weights",
                   tmp_path / "w.safetensors", "--out", tmp_path / "r", tmp=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        written = json.loads((tmp_path / "r" / "results.json").read_text())
        assert written["classifier"].startswith("myclassifier:build with weights") and "margin ε=8/255 best λ" in \
            written["attacks"]
        proc = cli("verify.adversarial", *common, "--classifier-factory", "myclassifier:flat", "--out", tmp_path / "r2",
                   tmp=tmp_path)
        assert proc.returncode == 2 and "logits of shape (images, classes); got (20,)" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        sys.modules.pop("myclassifier", None)


def test_the_figures_show_pgd_and_the_margin_attacker_on_log_p():
    from verify.attack_report import _strongest

    names = ["fgsm ε=8/255", "pgd ε=2/255", "pgd ε=8/255", "adaptive ε=8/255 best λ", "margin ε=8/255 best λ",
             "margin+top ε=8/255 best λ", "margin top-only ε=8/255 best λ"]
    assert (_strongest(names, False), _strongest(names, True)) == ("pgd ε=8/255", "margin ε=8/255 best λ")
    assert _strongest(names[:4], True) == "adaptive ε=8/255 best λ" and _strongest(names[:1], False) is None


def test_the_report_says_which_margin_attackers_ran_on_the_top_latent():
    from verify.attack_report import _top_variants

    def facts(names, scores):
        rows = {n: {"auroc": dict.fromkeys(scores, 0.5)} for n in names}
        return {"attacks": dict.fromkeys(names), "adaptive_against": "cvglow",
                "detection": {"cvglow": {"attacks": rows}}}

    both = facts(["margin ε=8/255 best λ", "margin+top ε=8/255 best λ", "margin top-only ε=8/255 best λ"],
                 ["likelihood", "latent_top"])
    assert "margin+top" in _top_variants(both) and "margin top-only" in _top_variants(both)
    assert "`--top` does" in _top_variants(facts(["margin ε=8/255 best λ"], ["likelihood", "latent_top"]))
    assert _top_variants(facts(["margin ε=8/255 best λ"], ["likelihood"])) == ""  # no top latent to attack


def test_an_unknown_margin_attacker_is_named():
    clean = ImageSet(_images(4, 0).numpy(), "c", "test", "array")
    with pytest.raises(DgmOodError, match="unknown margin attacker 'top'; known: 'margin', 'margin\\+top'"):
        attack_all(_Constant([0.0, 5.0]).eval(), clean, np.zeros(4, dtype=np.int64), margins=("top",))
