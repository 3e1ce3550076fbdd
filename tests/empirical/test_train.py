"""The trainer through its CLI on a small official-format dataset: loss goes down, resume, NaN stop."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from empirical import train as train_cli
from empirical.cli import run_cli
from empirical.data import registry as data
from empirical.data.sources import synthetic
from empirical.io.errors import CheckpointError, TrainingError
from empirical.models.evaluation import evaluate
from empirical.models.registry import MODELS
from empirical.training import steps as steps_mod
from empirical.training import trainer as train_mod
from empirical.training.checkpoint import load_checkpoint, save_checkpoint
from empirical.training.loading import model_from_checkpoint
from empirical.training.presets import get_preset
from tests import datafiles
from tests.helpers import registry_sets


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    # structured images (a blurred blob per image) so there is something to learn
    yy, xx = np.mgrid[:28, :28]
    imgs = []
    for _ in range(256):
        cy, cx = rng.integers(8, 20, 2)
        blob = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30)
        imgs.append(np.clip(blob + rng.integers(0, 8, (28, 28)), 0, 255))
    imgs = np.array(imgs, dtype=np.uint8)
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    labels = np.zeros(256, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(datafiles.idx_bytes(imgs, 2051))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(datafiles.idx_bytes(labels, 2049))
    return tmp_path / "data"


def _cli(tiny_data, out, *extra):
    return run_cli(train_cli.main, ["--dataset", "fashionmnist", "--preset", "smoke", "--out", str(out), "--data-dir",
                           str(tiny_data), "--allow-nonstandard-data", "--no-progress", *extra])


def test_train_resume_and_loss_goes_down(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert _cli(tiny_data, out, "--steps", "20") == 0
    first = load_checkpoint(out / "last.pt")
    assert first["step"] == 20
    hparams = json.loads((out / "hparams.json").read_text())
    assert hparams["model_config"]["levels"] == 2 and hparams["train_config"]["steps"] == 20
    assert _cli(tiny_data, out, "--steps", "40", "--resume") == 0
    second = load_checkpoint(out / "last.pt")
    assert second["step"] == 40
    bpds = [h["test_bpd"] for h in second["history"]]
    assert bpds[-1] < bpds[0], f"test bpd did not go down: {bpds}"


def test_existing_run_needs_resume(tiny_data, tmp_path):
    assert _cli(tiny_data, tmp_path / "r", "--steps", "5") == 0
    assert _cli(tiny_data, tmp_path / "r", "--steps", "5") == 2  # clear error, no traceback


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    assert _cli(tiny_data, out, "--steps", "20") == 0
    good = load_checkpoint(out / "last.pt")["step"]
    real = steps_mod.bits_per_dim
    calls = {"n": 0}

    def poisoned(log_px, dims):
        calls["n"] += 1
        value = real(log_px, dims)
        return value * float("nan") if calls["n"] > 3 else value

    monkeypatch.setattr(steps_mod, "bits_per_dim", poisoned)
    preset = get_preset("smoke", "glow", (1, 28, 28), steps=40)
    with pytest.raises(TrainingError, match=r"loss became nan at step 2\d.*last good checkpoint"):
        train_mod.train(*registry_sets("fashionmnist", tiny_data), "glow", preset, out, resume=True, progress=False)
    assert load_checkpoint(out / "last.pt")["step"] == good


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model_state": {}, "step": 1})

    def boom(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model_state": {}, "step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_evaluate_is_deterministic_and_leaves_input_untouched(tiny_data, tmp_path):
    assert _cli(tiny_data, tmp_path / "e", "--steps", "5") == 0
    model, *_ = model_from_checkpoint(tmp_path / "e" / "last.pt")
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 28, 28), dtype=np.uint8)
    before = images.copy()
    a = evaluate(model, images, batch_size=4, seed=3)
    b = evaluate(model, images, batch_size=4, seed=3)
    assert np.array_equal(images, before)
    assert np.array_equal(a.bpd, b.bpd) and np.allclose(a.log_px, a.parts["density"] + a.parts["volume"])
    assert not np.array_equal(a.bpd, evaluate(model, images, seed=4).bpd)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_on_tiny_data(tiny_data, tmp_path, model):
    """One trainer serves all families: a short run lowers the test bpd and the checkpoint reloads."""
    out = tmp_path / model
    assert _cli(tiny_data, out, "--model", model, "--steps", "40") == 0
    payload = load_checkpoint(out / "last.pt")
    bpds = [h["test_bpd"] for h in payload["history"]]
    assert bpds[-1] < bpds[0], f"{model}: test bpd did not go down: {bpds}"
    reloaded, *_ = model_from_checkpoint(out / "last.pt")
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    result = evaluate(reloaded, images)
    assert np.isfinite(result.bpd).all() and (result.bpd > 0).all()


def test_random_hflip_mirrors_about_half_the_images_and_nothing_else():
    x = torch.randint(0, 256, (400, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y = steps_mod.random_hflip(x, torch.Generator().manual_seed(2))
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert ((y == x).flatten(1).all(1) | mirrored).all()  # each image is itself or its mirror image
    assert 150 < int(mirrored.sum()) < 250
    assert torch.equal(y, steps_mod.random_hflip(x, torch.Generator().manual_seed(2)))  # a function of the generator


@pytest.mark.parametrize("dataset,writer,flipped", [("cifar10", "write_cifar10", True),
                                                    ("mnist", "write_idx_dataset", False)])
def test_hflip_applies_to_mirror_symmetric_datasets_only(tmp_path, monkeypatch, dataset, writer, flipped):
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    args = (tmp_path / "data",) if writer == "write_cifar10" else (tmp_path / "data", "mnist")
    getattr(datafiles, writer)(*args, n=40)
    info = data.dataset_info(dataset)
    preset = get_preset("smoke", "cvglow", info.shape, steps=2, hflip=True, holdout=4)
    train_mod.train(*registry_sets(dataset, tmp_path / "data"), "cvglow", preset, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "hparams.json").read_text())["hflip"] is flipped


def test_a_time_limit_stops_with_an_evaluated_checkpoint_that_resume_continues(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(tiny_data, out, "--steps", "30", "--time-limit", "1e-9") == 0  # out of time after one step
    stopped = load_checkpoint(out / "last.pt")
    assert stopped["step"] == 1 and stopped["history"][-1]["step"] == 1
    assert "step 1," in capsys.readouterr().out
    assert _cli(tiny_data, out, "--steps", "30", "--resume") == 0
    assert load_checkpoint(out / "last.pt")["step"] == 30
    assert _cli(tiny_data, tmp_path / "other", "--time-limit", "0") == 2  # a one-line error, nothing trained
    assert not (tmp_path / "other" / "last.pt").exists()


def test_a_checkpoint_written_before_a_training_field_existed_still_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert _cli(tiny_data, out, "--steps", "20") == 0
    payload = load_checkpoint(out / "last.pt")
    del payload["train_config"]["hflip"]  # as written by the code before the field was added
    save_checkpoint(out / "last.pt", payload)
    assert _cli(tiny_data, out, "--steps", "40", "--resume") == 0
    assert load_checkpoint(out / "last.pt")["step"] == 40


def test_learning_rate_warms_up_then_decays_along_a_cosine_to_zero():
    cfg = get_preset("smoke", "cvglow", (1, 28, 28), steps=110, warmup=10, lr=1e-3, decay="cosine").train
    lrs = [steps_mod.learning_rate(cfg, s) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up
    assert lrs[10] == pytest.approx(1e-3) and lrs[60] == pytest.approx(5e-4)  # half way: half the rate
    assert lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    constant = get_preset("smoke", "cvglow", (1, 28, 28), steps=110, warmup=10, lr=1e-3).train
    assert [steps_mod.learning_rate(constant, s) for s in (10, 60, 109)] == [1e-3] * 3


def test_arch_override_trains_that_shape_and_records_it(tiny_data, tmp_path):
    out = tmp_path / "wide"
    assert _cli(tiny_data, out, "--model", "cvglow", "--steps", "2", "--arch", "hidden=24", "--arch", "steps=3") == 0
    config = json.loads((out / "hparams.json").read_text())["model_config"]
    assert (config["hidden"], config["steps"], config["coupling"]) == (24, 3, "additive")
    model, *_ = model_from_checkpoint(out / "last.pt")  # rebuilt from the recorded config
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("arch, message", [
    (["--arch", "width=3"], "no architecture field 'width'"),
    (["--arch", "split_prior=fixed"], "no architecture field 'split_prior'"),
    (["--arch", "hidden"], "FIELD=VALUE"),
    (["--arch", "levels=5"], "cannot be squeezed 5 times"),
])
def test_bad_arch_override_is_a_clear_error(tiny_data, tmp_path, capsys, arch, message):
    try:
        status = _cli(tiny_data, tmp_path / "bad", "--model", "cvglow", *arch)
    except SystemExit as exit_:  # argparse's own usage error
        status = exit_.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_evaluate_split_priors_reports_each_split(tiny_data, tmp_path, capsys):
    from empirical import evaluate as evaluate_mod
    from empirical.models.evaluation import split_prior_stats

    out = tmp_path / "flow"
    assert _cli(tiny_data, out, "--model", "cvglow", "--steps", "2") == 0
    capsys.readouterr()
    args = ["--checkpoint", str(out / "last.pt"), "--dataset", "noise", "--limit", "6", "--split-priors",
            "--json", str(tmp_path / "noise.json")]
    assert run_cli(evaluate_mod.main, args) == 0
    assert "split1 prior, per image: smallest log σ" in capsys.readouterr().out
    saved = json.loads((tmp_path / "noise.json").read_text())
    assert len(saved["split1_min_log_std"]) == len(saved["split1_max_residual_sq"]) == 6
    model, *_ = model_from_checkpoint(out / "last.pt")
    noise = synthetic("noise", model.config.shape, 10_000, 0).images[:6]
    direct = split_prior_stats(model, noise, seed=0)
    assert np.array_equal(direct["split1_max_residual_sq"], np.array(saved["split1_max_residual_sq"]))


def test_split_priors_of_a_pixelcnn_is_a_clear_error(tiny_data, tmp_path, capsys):
    from empirical import evaluate as evaluate_mod

    out = tmp_path / "pcnn"
    assert _cli(tiny_data, out, "--model", "pixelcnn", "--steps", "2") == 0
    capsys.readouterr()
    args = ["--checkpoint", str(out / "last.pt"), "--dataset", "noise", "--limit", "4", "--split-priors"]
    assert run_cli(evaluate_mod.main, args) == 2
    assert "need a flow with at least one split" in capsys.readouterr().err
