"""verify.compare end to end (real mirror, smoke preset), SVHN plumbing on test-made files, errors, verdict."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from empirical.cli import run_cli
from tests import datafiles
from tests.helpers import SHARED_DATA
from verify.compare import main
from verify.report import verdict

pytestmark = pytest.mark.slow  # training runs, subprocesses: left out by -m "not slow"

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
        assert isinstance(exact["gap_nats"], float) and isinstance(exact["monte_carlo"]["stderr"], float)
        assert exact["gap_nats"] == pytest.approx(exact["gradient_term"] + exact["trace_term"] + exact["mean_term"])
        significant = abs(res["gap_bpd"]) > 2 * res["gap_bpd_stderr"]  # only a real gap has a sign to agree with
        assert isinstance(res["agreement"]["sign_exact_second_order"], bool if significant else type(None))
        for k in ("in_test", "out_test"):
            assert {"density_nats", "volume_nats"} <= set(res["decomposition"][k])
        _check_ledger(res)
    else:  # no differentiable log-density: predictions are null and say why
        assert exact is None and res["decomposition"] is None and res["prediction"]["note"]
        assert res["ledger"] is None
    assert len(res["figures"]) == (4 if res["model"] in ("glow", "cvglow") else 3) + (2 if res["detection"] else 0) \
        + (1 if res["explain"] else 0)
    for name in res["figures"]:
        fig = Path(res["out_dir"]) / name
        with open(fig, "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert imread(fig).shape[0] > 100


def _check_ledger(res: dict) -> None:
    rows = res["ledger"]["rows"]
    chain = {r["row"]: r for r in rows if r["row"] != 2}
    assert sorted(chain) == [1, 3, 4, 5, 6, 7]
    assert chain[1]["gap_nats"] == pytest.approx(res["gap_nats"])
    assert chain[3]["gap_nats"] == pytest.approx(res["prediction"]["exact_second_order"]["gap_nats"])
    terms = [r for r in rows if r["row"] == 2]
    assert {r["key"] for r in terms} >= {"latent_top", "volume"}
    scale = max(abs(res["summary"][k][f"{p}_nats"]["mean"]) for k in ("in_test", "out_test")
                for p in ("density", "volume"))  # per-image sums are float32: rounding ~1e-7 of the terms' size
    assert sum(r["gap_nats"] for r in terms) == pytest.approx(res["gap_nats"], abs=1e-5 * scale)
    if res["model"] == "cvglow":
        assert chain[6]["gap_nats"] == pytest.approx(res["prediction"]["closed_form"]["gap_nats"], rel=1e-8)
        check = res["linear_path_check"]
        assert check["abs_diff"] < 1e-6 * max(1.0, abs(check["direct_nats"]))
        assert res["ledger"]["summary"].startswith("The step that moves the number most is row")
    else:
        assert all(chain[r]["gap_nats"] is None for r in (4, 5, 6, 7))


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
    assert "## Assumption ledger" in report and "not the paper's class" in report
    assert not res["plumbing"]
    det = res["detection"]  # the cheap scores run by default
    assert set(det["scores"]) == {"likelihood", "typicality", "complexity_png", "complexity_jpegxl", "dose",
                                  "latent_split1", "latent_top", "level_ratio"}
    assert list(det["scores"])[0] == "complexity_png"  # the recommended score comes first
    assert all(0.0 <= v["auroc"] <= 1.0 and v["n_in"] == v["n_out"] == 200 for v in det["scores"].values())
    assert det["settings"]["heldout_images"] == 16 and [r["m"] for r in det["batch_typicality"]] == [2, 5, 10, 25]
    assert "## OOD detection" in report and {"roc.png", "scores.png"} <= {Path(f).name for f in res["figures"]}


def test_paper_model_class_with_fixed_split_priors(smoke_run):
    tmp, _, _ = smoke_run
    out = tmp / "paper-class"
    assert compare("fashionmnist", "mnist", "--preset", "smoke", "--split-prior", "fixed", "--runs-dir",
                   str(tmp / "runs"), "--out", str(out), "--data-dir", str(SHARED_DATA)) == 0
    res = json.loads((out / "results.json").read_text())
    _check_schema(res)
    assert "the paper's model class" in res["model_class"] and "splitfixed" in res["checkpoint"]
    row4 = next(r for r in res["ledger"]["rows"] if r["row"] == 4)
    assert row4["adds"] == ["linear_path"]  # the Gaussian latent already holds exactly


def test_split_prior_is_for_flows_only(smoke_run, capsys):
    tmp, _, _ = smoke_run
    assert compare("fashionmnist", "mnist", "--preset", "smoke", "--model", "vae", "--split-prior", "fixed",
                   "--runs-dir", str(tmp / "runs"), "--data-dir", str(SHARED_DATA)) == 2
    assert "flows" in capsys.readouterr().err


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
    assert "test_32x32.mat" in err and "in one of:" in err and "Traceback" not in err


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
    (0.01, 0.02, {"exact": 0.3}, ["no significantly different likelihood", "exact predicts +0.300 bpd",
                                  "no sign to compare"]),
    (1.7, 0.01, {"exact": None, "closed": None}, ["gets HIGHER", "does not apply"]),
])
def test_verdict(gap, se, preds, expect):
    line = verdict("CIFAR-10-test", "SVHN-test", gap, se, preds)
    for text in expect:
        assert text in line




def test_theory_predict_cli_prints_the_ledger(smoke_run, tmp_path, capsys):
    from theory.predict import main as predict_main

    _, _, res = smoke_run
    out = tmp_path / "pred.json"
    assert run_cli(predict_main, ["fashionmnist", "mnist", "--checkpoint", res["checkpoint"], "--samples", "8",
                                  "--data-dir", str(SHARED_DATA), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "diagonal_covariance" in printed and "moves the number most" in printed
    pred = json.loads(out.read_text())
    assert [r["row"] for r in pred["ledger_rows"]] == [3, 4, 5, 6, 7]
    row6 = next(r for r in pred["ledger_rows"] if r["row"] == 6)  # whole test sets here, so compare row 6 to the
    assert row6["gap_nats"] == pytest.approx(pred["closed_form"]["gap_nats"], rel=1e-8)  # closed form on them


def test_detect_screens_several_ood_sets_in_one_call(smoke_run, tmp_path, capsys):
    from verify.detect import main as detect_main

    _, _, res = smoke_run
    out = tmp_path / "det.json"
    assert run_cli(detect_main, ["fashionmnist", "mnist", "constant", "noise", "--checkpoint", res["checkpoint"],
                                 "--limit", "200", "--data-dir", str(SHARED_DATA), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(f"| {name} |" in printed for name in ("mnist", "constant", "noise"))
    assert "on the first 200 images of IN-test and of each OUT set" in printed
    written = json.loads(out.read_text())
    table = written["detection"]
    assert set(table) == {"mnist", "constant", "noise"} and written["limit"] == 200
    assert all(s["n_in"] == s["n_out"] == 200 for det in table.values() for s in det["scores"].values())
    assert written["provenance"]["command"].startswith("python -m verify.detect fashionmnist mnist constant noise")
    assert written["provenance"]["commit"] and written["provenance"]["seconds"] > 0
    assert written["data"]["in_test"]["n"] == 200 and written["data"]["mnist"]["files"][0]["sha256"]  # what was read
    assert table["noise"]["scores"]["likelihood"]["auroc"] > 0.99  # noise is easy for the likelihood itself
    # the compare run scored the same first 200 images of each set: the model-free score is identical
    assert table["mnist"]["scores"]["complexity_png"] == res["detection"]["scores"]["complexity_png"]
    assert run_cli(detect_main, ["fashionmnist", "mnist", "--checkpoint", res["checkpoint"], "--limit", "0",
                                 "--data-dir", str(SHARED_DATA)]) == 2
    assert "--limit must be ≥ 1, got 0" in capsys.readouterr().err


def test_detect_scores_all_trains_a_background_model_and_an_ensemble_like_the_checkpoint(smoke_run, tmp_path,
                                                                                         monkeypatch):
    from empirical.training import shipped
    from verify.detect import main as detect_main

    _, _, res = smoke_run

    def detect(runs: Path) -> dict:
        out = tmp_path / "det.json"
        assert run_cli(detect_main, ["fashionmnist", "mnist", "--checkpoint", res["checkpoint"], "--scores", "all",
                                     "--limit", "200", "--runs-dir", str(runs), "--data-dir", str(SHARED_DATA),
                                     "--json", str(out)]) == 0
        return json.loads(out.read_text())

    first = detect(tmp_path / "runs")
    det = first["detection"]["mnist"]
    assert {"likelihood_ratio", "waic", "gradient"} <= set(det["scores"]) and det["settings"]["ensemble_k"] == 5
    trained = sorted((tmp_path / "runs" / "models").iterdir())
    assert len(trained) == 5  # the background model and 4 more members
    # shipped like the main job's model, they are used instead of training: the same scores, nothing trained
    monkeypatch.setattr(shipped, "WEIGHTS", tmp_path / "weights")
    shipped.WEIGHTS.mkdir()
    for run in trained:
        shipped.export(run / "last.pt", run.name, shipped.WEIGHTS)
    second = detect(tmp_path / "runs-empty")
    again = second["detection"]["mnist"]
    assert not (tmp_path / "runs-empty" / "models").exists()
    # the JSON names each extra model: first the cached run's checkpoint, then the shipped weights and how made
    made = first["extra_model_sources"]
    assert sorted(Path(p).parent for p in made["background"] + made["ensemble"]) == trained
    assert all(s.startswith("shipped weights ") for s in second["extra_model_sources"]["ensemble"])
    for score in ("likelihood_ratio", "waic"):
        assert again["scores"][score]["auroc"] == det["scores"][score]["auroc"]
    background = next(s for s in shipped.available() if "-bg0.2-" in s.name)  # retrained with its perturbation
    assert shipped.retrain(background, tmp_path / "retrain", str(SHARED_DATA))["bit_for_bit"]


def test_export_records_the_training_commit_and_refuses_weights_too_big(smoke_run, tmp_path, monkeypatch):
    from empirical.io.errors import CheckpointError
    from empirical.training import shipped
    from empirical.training.checkpoint import load_checkpoint

    checkpoint = Path(smoke_run[2]["checkpoint"])
    card = shipped.export(checkpoint, "small", tmp_path / "ok").card
    assert card["made_by"]["commit"] == load_checkpoint(checkpoint)["commit"]  # the code that trained, not exported
    monkeypatch.setattr(shipped, "MAX_BYTES", 1_000)
    with pytest.raises(CheckpointError, match="more than 1,000: too big to ship"):
        shipped.export(checkpoint, "big", tmp_path / "big")
    assert not (tmp_path / "big").exists()
    payload = {"dataset": "runs/c100.npz", "model": "cvglow", "preset": "cpu"}  # a path source: no sub-folder
    assert shipped.default_name(payload) == "c100-cvglow-cpu"


def test_shipped_weights_as_checkpoint_say_how_they_were_made(tmp_path):
    from empirical.training.shipped import WEIGHTS
    from verify.detect import main as detect_main

    out, weights = tmp_path / "det.json", WEIGHTS / "fashionmnist-cvglow-cpu.safetensors"
    assert run_cli(detect_main, ["fashionmnist", "mnist", "--checkpoint", str(weights), "--limit", "50",
                                 "--data-dir", str(SHARED_DATA), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["model"].startswith(f"shipped weights {weights.name} (SHA-256")


def test_scores_none_and_a_model_without_held_out_images(smoke_run, tmp_path):
    tmp, _, res = smoke_run
    out = tmp / "none"
    assert compare("fashionmnist", "mnist", "--preset", "smoke", "--scores", "none", "--checkpoint",
                   res["checkpoint"], "--data-dir", str(SHARED_DATA), "--out", str(out)) == 0
    assert json.loads((out / "results.json").read_text())["detection"] is None


def test_compare_under_torchrun_reports_what_one_process_reports(tmp_path):
    """2 ranks train the model data-parallel and share out its evaluation; rank 0 alone writes the report, whose
    numbers equal a single process's on the same model."""
    from tests.faults.conftest import env_for, write_tiny_idx

    for folder, seed in (("fashion-mnist", 1), ("mnist", 2)):
        write_tiny_idx(tmp_path / "data", folder, seed)
    args = ["-m", "verify.compare", "fashionmnist", "mnist", "--preset", "smoke", "--data-dir", str(tmp_path / "data"),
            "--allow-nonstandard-data"]
    env = env_for(tmp_path, OMP_NUM_THREADS="1")
    for name, launch in (("two", ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]), ("one", [])):
        proc = subprocess.run([sys.executable, *launch, *args, "--out", str(tmp_path / name)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("two", "one"))
    assert "× 2 ranks" in two["provenance"]["device"] and "ranks" not in one["provenance"]["device"]
    for key in ("bpd", "gap_bpd", "prediction", "ledger", "detection", "graying"):
        assert json.dumps(two[key], sort_keys=True) == json.dumps(one[key], sort_keys=True), key
