"""Your data and your model from the command line: custom IN and OUT (arrays, folders) end to end, trained models
cached by the content of their training data, an outside flow through verify.compare and the Python API, and every
bad custom input as a one-line error before anything is written."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import assert_one_line_error, blobs, cli

pytestmark = pytest.mark.slow  # training runs, subprocesses: left out by -m "not slow"

SMOKE = ("--preset", "smoke")


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> dict:
    """IN as an .npz with train and test parts, OUT as an .npz of one array and as a folder of PNGs."""
    root = tmp_path_factory.mktemp("custom")
    np.savez(root / "in.npz", train=blobs(64, 1), test=blobs(32, 3))
    out = blobs(24, 2) // 2  # dimmer blobs: another distribution
    np.savez(root / "out.npz", images=out)
    folder = root / "pngs"
    folder.mkdir()
    for i, x in enumerate(out):
        Image.fromarray(x).save(folder / f"{i:02d}.png")
    return {"root": root, "in": root / "in.npz", "out_npz": root / "out.npz", "out_png": folder}


def _results(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_custom_in_trains_caches_and_retrains_when_one_byte_changes(custom, tmp_path):
    runs = tmp_path / "runs"
    args = (custom["in"], custom["out_npz"], *SMOKE, "--runs-dir", runs)
    first = cli("verify.compare", *args, "--out", tmp_path / "a", tmp=tmp_path)
    assert first.returncode == 0 and "training cvglow on in.npz-train" in first.stderr, first.stderr[-2000:]
    res = _results(tmp_path / "a")
    assert res["data"]["out_test"]["kind"] == "npz" and res["data"]["in_test"]["name"] == "in.npz-test"
    assert res["data"]["in_train"]["content_sha256"] and not res["plumbing"]
    again = cli("verify.compare", *args, "--out", tmp_path / "b", tmp=tmp_path)
    assert again.returncode == 0 and "reusing trained model" in again.stderr
    assert _results(tmp_path / "b")["bpd"] == res["bpd"]
    with np.load(custom["in"]) as z:
        train, test = z["train"].copy(), z["test"]
    train[0, 0, 0] ^= 1  # one byte of the training data
    changed = tmp_path / "changed.npz"
    np.savez(changed, train=train, test=test)
    third = cli("verify.compare", changed, custom["out_npz"], *SMOKE, "--runs-dir", runs, "--out", tmp_path / "c",
                tmp=tmp_path)
    assert third.returncode == 0 and "training cvglow" in third.stderr and "reusing" not in third.stderr
    assert len(list((runs / "models").iterdir())) == 2


def test_a_folder_of_pngs_as_out_with_a_checkpoint(world, custom, tmp_path):
    proc = cli("verify.compare", "fashionmnist", custom["out_png"], "--checkpoint", world["ckpt"]["cvglow"],
               "--data-dir", world["data"], "--allow-nonstandard-data", "--out", tmp_path / "r", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _results(tmp_path / "r")
    (record,) = res["data"]["out_test"]["files"]
    assert record["count"] == 24 and res["data"]["out_test"]["kind"] == "folder" and res["plumbing"]
    assert "pngs/" in (tmp_path / "r" / "report.md").read_text()


def test_a_plumbing_model_is_never_reused_for_real_data(world, tmp_path):
    """Issue 20 (2): the trained-model cache is keyed by the training images, so a model trained on tiny test files
    is not given to a run on other files of the same name."""
    runs = tmp_path / "runs"
    tiny = cli("verify.compare", "fashionmnist", "mnist", *SMOKE, "--data-dir", world["data"],
               "--allow-nonstandard-data", "--runs-dir", runs, "--out", tmp_path / "a", tmp=tmp_path)
    assert tiny.returncode == 0 and _results(tmp_path / "a")["plumbing"]
    other = tmp_path / "other"
    for folder, seed in (("fashion-mnist", 7), ("mnist", 8)):
        from tests.faults.conftest import write_tiny_idx
        write_tiny_idx(other, folder, seed)
    proc = cli("verify.compare", "fashionmnist", "mnist", *SMOKE, "--data-dir", other, "--allow-nonstandard-data",
               "--runs-dir", runs, "--out", tmp_path / "b", tmp=tmp_path)
    assert proc.returncode == 0 and "reusing" not in proc.stderr and "training cvglow" in proc.stderr


def test_an_outside_flow_through_the_command_line_and_the_python_api(custom, tmp_path):
    weights = tmp_path / "w.safetensors"
    trained = cli("examples.bpd_glow", "--train", weights, "--steps", "20", "--dataset", custom["in"], tmp=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    proc = cli("verify.compare", custom["in"], custom["out_png"], "--model-factory", "examples.bpd_glow:build",
               "--weights", weights, "--out", tmp_path / "r", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _results(tmp_path / "r")
    assert res["model"] == "examples.bpd_glow:build" and res["prediction"]["exact_second_order"] is not None
    assert "w.safetensors" in res["model_source"] and res["ledger"]["rows"][1]["row"] == 3
    ran = {p["part"]: p["ran"] for p in res["applicability"]}
    assert ran["exact second order at x0, averaged curvature"] and not ran["closed form, ledger rows 4–6"]
    # the same model from Python gives the same numbers
    import sys

    from empirical.data.sources import open_in, open_out
    from empirical.models.factory import call_factory, load_weights
    from verify.api import compare

    sys.path.insert(0, str(tmp_path.parents[0]))
    model = call_factory("examples.bpd_glow:build")
    load_weights(model, weights)
    in_train, in_test = open_in(str(custom["in"]))
    api = compare(model, in_train, in_test, open_out(str(custom["out_png"]), (1, 28, 28)))
    assert api.results["bpd"] == pytest.approx(res["bpd"], rel=1e-6)


def test_the_readme_python_example_runs(custom, tmp_path):
    model = tmp_path / "model"
    trained = cli("empirical.train", "--dataset", custom["in"], "--model", "cvglow", *SMOKE, "--out", model,
                  "--no-progress", tmp=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    np.save(tmp_path / "mine.npy", np.load(custom["out_npz"])["images"])
    proc = cli("examples.python_api", model / "last.pt", tmp_path / "mine.npy", tmp_path / "report", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "The step that moves the number most" in proc.stdout and "| score | AUROC" in proc.stdout
    assert _results(tmp_path / "report")["data"]["out_test"]["name"] == "my images"


# --------------------------------------------------------------------------------------------- bad inputs
def _bad(root, case):
    """A bad source of each kind the issue lists; returns (its path, what the error must say)."""
    folder = root / case
    if case == "empty folder":
        folder.mkdir()
        return folder, "holds no image files"
    if case in ("non-image file", "truncated image", "different sizes"):
        folder.mkdir()
        for i, x in enumerate(blobs(3, 0)):
            Image.fromarray(x).save(folder / f"{i}.png")
        if case == "non-image file":
            (folder / "notes.txt").write_text("hello")
            return folder, "notes.txt is not an image file"
        if case == "truncated image":
            (folder / "1.png").write_bytes((folder / "1.png").read_bytes()[:50])
            return folder, "corrupt or truncated image"
        Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(folder / "small.png")
        return folder, "different sizes"
    path = root / f"{case.replace(' ', '_')}.npy"
    arrays = {"non-uint8 array": (np.zeros((4, 28, 28), dtype=np.float64), "float64, expected uint8"),
              "values outside 0..255": (np.full((4, 28, 28), 300, dtype=np.int32), "outside 0..255"),
              "wrong number of dimensions": (np.zeros((4, 784), dtype=np.uint8), "got 2 dimensions")}
    if case in arrays:
        np.save(path, arrays[case][0])
        return path, arrays[case][1]
    if case == "pickled npy":
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        return path, "pickled (object) array"
    path = root / "several.npz"
    np.savez(path, a=np.zeros((4, 28, 28), np.uint8), b=np.zeros((4, 28, 28), np.uint8))
    return path, "several.npz:KEY"


CASES = ["empty folder", "non-image file", "truncated image", "different sizes", "non-uint8 array",
         "values outside 0..255", "wrong number of dimensions", "pickled npy", "npz with several arrays"]


@pytest.mark.parametrize("case", CASES)
def test_bad_custom_data_is_a_one_line_error_and_nothing_is_written(world, tmp_path, case):
    path, message = _bad(tmp_path, case)
    proc = cli("verify.compare", "fashionmnist", path, *SMOKE, "--data-dir", world["data"],
               "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", "--out", tmp_path / "out", tmp=tmp_path)
    last = assert_one_line_error(proc, message)
    assert path.name in last
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_bad_custom_in_is_refused_too(tmp_path):
    path, message = _bad(tmp_path, "values outside 0..255")
    proc = cli("verify.compare", path, "mnist", *SMOKE, "--out", tmp_path / "out", tmp=tmp_path)
    assert_one_line_error(proc, message)
    assert not (tmp_path / "out").exists()


def test_a_pickle_disguised_as_npz_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.npy").write_bytes(pickle.dumps(Evil()))
    proc = cli("verify.compare", "fashionmnist", tmp_path / "evil.npy", "--out", tmp_path / "o", tmp=tmp_path)
    assert_one_line_error(proc, "not a readable NumPy file")
    assert not marker.exists()
