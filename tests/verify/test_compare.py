"""verify.compare end to end (real mirror, smoke preset), SVHN plumbing on test-made files, errors, verdict."""

import json

import pytest
from matplotlib.image import imread

from empirical.cli import run_cli
from tests import datafiles
from tests.helpers import SHARED_DATA
from verify.compare import main
from verify.report import verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def compare(*argv):
    return run_cli(main, list(argv))


def _check_schema(res: dict) -> None:
    for key in ("in", "out", "model", "preset", "device"):
        assert isinstance(res[key], str)
    for group in ("n_images", "bpd"):
        assert set(res[group]) == {"in_train", "in_test", "out_test"}
        assert all(isinstance(v, float) for v in res[group].values())
    assert isinstance(res["gap_bpd"], float) and isinstance(res["gap_nats"], float)
    assert res["gap_bpd"] == pytest.approx(res["bpd"]["in_test"] - res["bpd"]["out_test"])
    exact = res["prediction"]["exact_second_order"]
    cf = res["prediction"]["closed_form"]
    assert cf is None or isinstance(cf["gap_nats"], float)
    assert res["agreement"]["sign_closed_form"] in (True, False, None)
    if res["model"] in ("glow", "cvglow"):
        assert isinstance(exact["gap_nats"], float) and isinstance(exact["stderr"], float)
        assert isinstance(res["agreement"]["sign_exact_second_order"], bool)
        for k in ("in_test", "out_test"):
            assert {"density_nats", "volume_nats"} <= set(res["decomposition"][k])
    else:  # no differentiable log-density: predictions are null and say why
        assert exact is None and res["decomposition"] is None and res["prediction"]["note"]
    assert len(res["figures"]) == (4 if res["model"] in ("glow", "cvglow") else 3)
    for fig in res["figures"]:
        with open(fig, "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert imread(fig).shape[0] > 100


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip("the offline mirror ../shared/data is absent")
    tmp = tmp_path_factory.mktemp("cmp")
    out = tmp / "report"
    assert compare("fashionmnist", "mnist", "--preset", "smoke", "--runs-dir", str(tmp / "runs"),
                   "--out", str(out), "--data-dir", str(SHARED_DATA)) == 0
    return tmp, out, json.loads((out / "results.json").read_text())


def test_fashionmnist_mnist_smoke_end_to_end(smoke_run):
    _, out, res = smoke_run
    _check_schema(res)
    assert res["in"] == "fashionmnist" and res["out"] == "mnist" and res["model"] == "cvglow"
    assert res["prediction"]["closed_form"] is not None  # CV-Glow: both predictions
    assert res["n_images"] == {"in_train": 200.0, "in_test": 200.0, "out_test": 200.0}
    report = (out / "report.md").read_text()
    assert "Verdict" in report and "Provenance" in report and "commit" in report
    assert not res["plumbing"]


def test_cached_model_is_reused_and_synthetic_out_sets(smoke_run, capsys):
    tmp, _, _ = smoke_run
    for name in ("constant", "noise"):
        out = tmp / name
        assert compare("fashionmnist", name, "--preset", "smoke", "--runs-dir", str(tmp / "runs"),
                       "--out", str(out), "--data-dir", str(SHARED_DATA)) == 0
        res = json.loads((out / "results.json").read_text())
        _check_schema(res)
        assert res["n_images"]["out_test"] == 200.0
    assert "reusing trained model" in capsys.readouterr().err


def test_cross_shape_needs_match(smoke_run, capsys):
    tmp, _, res = smoke_run
    assert compare("fashionmnist", "cifar10", "--preset", "smoke", "--runs-dir", str(tmp / "runs"),
                   "--data-dir", str(SHARED_DATA), "--out", str(tmp / "x")) == 2
    assert "--match" in capsys.readouterr().err
    out = tmp / "matched"
    assert compare("fashionmnist", "cifar10", "--match", "--checkpoint", res["checkpoint"], "--preset", "smoke",
                   "--data-dir", str(SHARED_DATA), "--out", str(out)) == 0
    assert "(matched)" in json.loads((out / "results.json").read_text())["verdict"]


def test_all_models_side_by_side(smoke_run):
    tmp, _, _ = smoke_run
    root = tmp / "families"
    assert compare("fashionmnist", "mnist", "--all-models", "--preset", "smoke", "--runs-dir", str(tmp / "runs"),
                   "--out", str(root), "--data-dir", str(SHARED_DATA)) == 0
    for model in ("cvglow", "pixelcnn", "vae"):
        res = json.loads((root / model / "results.json").read_text())
        _check_schema(res)
        assert res["model"] == model
    vae = json.loads((root / "vae" / "results.json").read_text())
    assert "elbo_nats" in vae["summary"]["in_test"] and "bound" in (root / "vae" / "report.md").read_text()
    table = (root / "families.md").read_text()
    assert all(m in table for m in ("cvglow", "pixelcnn", "vae"))
    with open(root / "families.png", "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert set(json.loads((root / "families.json").read_text())) == {"cvglow", "pixelcnn", "vae"}


@pytest.fixture
def tiny_official(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    datafiles.write_cifar10(tmp_path / "data", n=20, suffix=".xz")
    datafiles.write_svhn(tmp_path / "data", n=30)
    return tmp_path


def test_cifar10_svhn_plumbing_on_official_format_files(tiny_official):
    tmp = tiny_official
    out = tmp / "report"
    assert compare("cifar10", "svhn", "--preset", "smoke", "--data-dir", str(tmp / "data"), "--runs-dir",
                   str(tmp / "runs"), "--out", str(out), "--allow-nonstandard-data", "--model", "glow") == 0
    res = json.loads((out / "results.json").read_text())
    _check_schema(res)
    assert res["plumbing"] is True and res["prediction"]["closed_form"] is None
    assert "PLUMBING RUN" in (out / "report.md").read_text()


def test_missing_svhn_is_a_clear_error(tiny_official, capsys):
    (tiny_official / "data" / "svhn" / "test_32x32.mat").unlink()
    assert compare("cifar10", "svhn", "--preset", "smoke", "--data-dir", str(tiny_official / "data"),
                   "--allow-nonstandard-data") == 2
    err = capsys.readouterr().err
    assert "test_32x32.mat" in err and "searched" in err and "Traceback" not in err


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    assert compare("imagenet", "mnist") == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    assert compare("fashionmnist", "mnist", "--checkpoint", str(bad)) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("gap,se,preds,expect", [
    (1.1, 0.01, {"exact": 0.9, "closed": None}, ["SVHN-test gets HIGHER", "exact predicts the same sign",
                                                  "closed: n/a"]),
    (-0.5, 0.01, {"exact": 0.2}, ["gets LOWER", "OPPOSITE sign"]),
    (0.01, 0.02, {"exact": 0.3}, ["no significantly different likelihood"]),
    (1.7, 0.01, {"exact": None, "closed": None}, ["gets HIGHER", "does not apply"]),
])
def test_verdict(gap, se, preds, expect):
    line = verdict("CIFAR-10-test", "SVHN-test", gap, se, preds)
    for text in expect:
        assert text in line


