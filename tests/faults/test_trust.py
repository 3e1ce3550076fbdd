"""Trust on the open surfaces: what the runs cache reuses is sealed, provenance comes from the bytes evaluated, a
malformed card breaks no command, a model that breaks the contract is one line, a forged array header is refused,
a missing home folder costs only the cache, and retrain verifies only what it trained."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from empirical.data import registry
from empirical.data.imageset import as_image_set
from empirical.data.sources import open_out
from empirical.io.errors import CheckpointError, DataError
from empirical.models.contract import ModelContractError
from empirical.models.evaluation import evaluate
from empirical.training import shipped
from empirical.training.checkpoint import SEAL_SUFFIX
from empirical.training.loading import model_from_checkpoint
from tests.datafiles import write_idx_dataset
from tests.empirical.test_contract import Gaussian
from tests.faults.conftest import assert_one_line_error, cli
from verify.runs import origin_text

SHIPPED = shipped.WEIGHTS / "fashionmnist-cvglow-cpu.safetensors"


# a runs-cache model edited after its training finished is not reused -------------------------------------------
@pytest.mark.slow
def test_an_edited_cached_model_is_moved_aside_and_trained_again(world, tmp_path):
    args = ("verify.compare", "fashionmnist", "mnist", "--preset", "smoke", "--data-dir", world["data"],
            "--allow-nonstandard-data", "--runs-dir", tmp_path / "runs", "--scores", "none")
    first = cli(*args, "--out", tmp_path / "a", tmp=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = next((tmp_path / "runs" / "models").glob("*/last.pt"))
    assert (ckpt.parent / f"{ckpt.name}{SEAL_SUFFIX}").is_file()
    payload = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in payload["model_state"].items() if v.is_floating_point() and v.numel() > 1)
    payload["model_state"][name] = payload["model_state"][name] * 1.01  # finite, plausible: a quiet edit
    torch.save(payload, ckpt)
    second = cli(*args, "--out", tmp_path / "b", tmp=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "is not the one its training sealed" in second.stderr and "reusing trained model" not in second.stderr
    assert list(ckpt.parent.glob("last.pt.corrupt-*"))
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["gap_bpd"] for d in ("a", "b"))
    assert a == b  # retrained: the same deterministic model as the first run's, not the edited one


# provenance from the bytes evaluated, not from a file name ------------------------------------------------------
def test_weights_named_like_shipped_ones_elsewhere_are_not_reported_as_shipped(tmp_path):
    fake = tmp_path / SHIPPED.name
    shutil.copy(SHIPPED, fake)
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    card["made_by"] = {**card["made_by"], "command": "python -m somewhere.else", "commit": "0" * 40}
    fake.with_suffix(".json").write_text(json.dumps(card))
    text = origin_text(model_from_checkpoint(fake))
    assert "not shipped" in text and "somewhere.else" in text and "shipped weights" not in text
    assert origin_text(model_from_checkpoint(SHIPPED)).startswith("shipped weights")


# one malformed card: check names it, nothing else depends on it -------------------------------------------------
@pytest.mark.parametrize("content", ['{"model": "cvglow", "preset"', '{"model": "cvglow"}', "[1, 2]"])
def test_a_malformed_card_is_reported_by_check_and_skipped_by_everything_else(tmp_path, monkeypatch, content):
    folder = tmp_path / "weights"
    shutil.copytree(shipped.WEIGHTS, folder)
    (folder / "broken.json").write_text(content)
    monkeypatch.setattr(shipped, "WEIGHTS", folder)
    assert {s.name for s in shipped.available()} == {p.stem for p in folder.glob("*.json")} - {"broken"}
    assert any("broken.json" in p for p in shipped.check())


# an outside model that breaks the contract: one line naming it and what it returned ----------------------------
class Odd(Gaussian):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def log_prob(self, x: torch.Tensor):
        good = super().log_prob(x)
        return {"0-d": lambda: good.sum(), "column": lambda: good[:, None], "short": lambda: good[:-1],
                "numpy": lambda: good.detach().numpy(), "list": lambda: good.tolist(),
                "raises": lambda: (_ for _ in ()).throw(ValueError("boom")), "float64": lambda: good.double(),
                "int": lambda: good.long()}[self.kind]()


@pytest.mark.parametrize("kind", ["0-d", "column", "short", "numpy", "list", "raises", "int"])
def test_a_log_prob_that_breaks_the_contract_is_one_error_naming_the_model(kind):
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    with pytest.raises(ModelContractError, match=r"^Odd\.log_prob (returned|raised)") as err:
        evaluate(Odd(kind), images)
    assert "\n" not in str(err.value)


def test_a_float64_log_prob_is_accepted_and_gives_the_float32_values():
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    assert np.allclose(evaluate(Odd("float64"), images).log_px, evaluate(Gaussian(), images).log_px)


# a forged .npy header ------------------------------------------------------------------------------------------
def test_an_array_header_that_declares_more_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "huge.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 1, 4, 4), np.uint8))
    header["shape"] = (10**9, 1, 28, 28)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(DataError, match="declares a 1000000000×1×28×28 uint8 array"):
        open_out(str(path), (1, 28, 28))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:  # the same forged array inside an .npz
        z.writestr("images.npy", path.read_bytes())
    with pytest.raises(DataError, match="huge.npz:images.npy declares"):
        open_out(str(tmp_path / "huge.npz"), (1, 28, 28))


# no home folder --------------------------------------------------------------------------------------------------
def test_without_a_home_folder_the_data_load_and_only_the_cache_is_skipped(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "data", "mnist", n=4)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(registry.Path, "home", staticmethod(no_home))
    for var in ("DGM_OOD_CACHE", "DGM_OOD_KEY_FILE", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert registry.cache_dir() is None and registry.cache_key_file() is None
    split = registry.load("mnist", "test", tmp_path / "data", allow_nonstandard=True)
    assert split.images.shape == (4, 1, 28, 28)
    monkeypatch.setenv("DGM_OOD_CACHE", str(tmp_path / "cache"))
    assert registry.cache_dir() == tmp_path / "cache"


# retrain claims only what it compared ------------------------------------------------------------------------------
def test_retrain_refuses_a_folder_that_already_holds_a_run(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "last.pt").write_bytes(b"a finished run")
    with pytest.raises(CheckpointError, match="is not empty"):
        shipped.retrain(shipped.available()[0], tmp_path / "out")
    proc = cli("empirical.shipped", "retrain", shipped.available()[0].name, "--out", tmp_path / "out", tmp=tmp_path)
    assert_one_line_error(proc, "is not empty")


def test_one_image_is_too_few_for_a_standard_error(tmp_path):
    one = as_image_set(np.full((1, 1, 4, 4), 128, np.uint8), "one")
    from verify.api import compare

    rng = np.random.default_rng(0)
    sets = [rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8) for n in (50, 30)]
    with pytest.raises(DataError, match="at least 2"):
        compare(Gaussian(), *sets, one, explain=False)



# the Python API: one clear error, not a traceback from torch ------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [({"seed": -1}, "seed must be a whole number"),
                                           ({"device": "cuda:7"}, "device cuda:7"),
                                           ({"device": "tpu"}, "device")])
def test_the_api_names_a_bad_argument(kwargs, needle):
    from empirical.io.errors import DgmOodError
    from verify.api import compare

    rng = np.random.default_rng(0)
    sets = [rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8) for n in (50, 30, 30)]
    with pytest.raises(DgmOodError, match=needle):
        compare(Gaussian(), *sets, explain=False, **kwargs)


def test_a_path_object_is_a_path_source(tmp_path, monkeypatch):
    from pathlib import Path

    from empirical.data.sources import open_in

    np.save(tmp_path / "scans.npy", np.zeros((20, 28, 28), np.uint8))
    monkeypatch.chdir(tmp_path)
    train, test = open_in(Path("scans.npy"))
    assert len(train) + len(test) == 20
    with pytest.raises(DataError, match="not a int"):
        open_in(3)


# one line means one line ------------------------------------------------------------------------------------------
def test_a_long_or_multi_line_error_is_printed_as_one_bounded_line(tmp_path):
    weird = tmp_path / ("line\nbreak" + "x" * 3000 + ".npy")
    proc = cli("verify.compare", "fashionmnist", str(weird), tmp=tmp_path)
    last = assert_one_line_error(proc)
    assert "line\\nbreak" in last and len(last) <= 1000 + len("error: ") and "characters cut" in last


def test_a_factory_that_calls_sys_exit_is_an_error_not_an_exit(tmp_path, monkeypatch):
    from empirical.models.factory import FactoryError, call_factory

    (tmp_path / "quitter.py").write_text("import sys\n\ndef build():\n    sys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FactoryError, match=r"quitter:build\(\) called sys.exit\(3\)"):
        call_factory("quitter:build")


def test_a_huge_seed_and_a_nan_part_size_are_one_line(world, tmp_path):
    proc = cli("empirical.train", "--dataset", "fashionmnist", "--preset", "smoke", "--seed", str(2**62), "--out",
               tmp_path / "run", "--data-dir", world["data"], "--allow-nonstandard-data", tmp=tmp_path)
    assert_one_line_error(proc, "--seed must be a whole number from 0 to 2,147,483,647")
    (tmp_path / "f.bin").write_bytes(b"x" * 10)
    assert_one_line_error(cli("empirical.transfer", "split", tmp_path / "f.bin", "--max-mib", "nan", tmp=tmp_path),
                          "--max-mib must be a finite number > 0, got nan")


# an outside model whose numbers cannot be right: checked, and said -----------------------------------------------
class InBits(Gaussian):
    """log_prob returns bits/dim, as a careless wrapper might: every image near the same small value."""

    def __init__(self) -> None:
        super().__init__(shape=(1, 28, 28))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -super().log_prob(x) / (784 * np.log(2)) + 8.0


class Noisy(Gaussian):
    """log_prob draws its own noise instead of using the generator: two identical runs differ."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return super().log_prob(x + 0.01 * torch.rand_like(x))


@pytest.mark.slow
def test_an_outside_model_in_the_wrong_units_is_flagged_in_the_report(tmp_path):
    from verify.api import compare

    rng = np.random.default_rng(0)
    sets = [rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8) for n in (50, 30, 30)]
    result = compare(InBits(), *sets, explain=False, detection=None)
    checks = {c["check"]: c["passed"] for c in result.results["contract_checks"]}
    assert checks == {"the same log p for the same images and noise": True, "log p in nats per image": False,
                      "log p varies across images": True}
    result.write(tmp_path / "r")
    assert "**FAILED**: log p in nats per image" in (tmp_path / "r" / "report.md").read_text()
    right = compare(Gaussian(shape=(1, 28, 28)), *sets, explain=False, detection=None)
    assert all(c["passed"] for c in right.results["contract_checks"])


def test_a_log_prob_that_ignores_the_generator_is_refused():
    from verify.api import compare

    rng = np.random.default_rng(0)
    sets = [rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8) for n in (50, 30, 30)]
    with pytest.raises(ModelContractError, match="Noisy.log_prob gives different values for the same images"):
        compare(Noisy(), *sets, explain=False, detection=None)


def test_a_list_of_images_of_mixed_shapes_names_the_odd_one():
    images = [np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)]
    with pytest.raises(DataError, match=r"mixed\[2\] is 1×5×5 but mixed\[0\] is 1×4×4"):
        as_image_set(images, "mixed")


def test_conversions_are_recorded_and_an_animation_is_refused(tmp_path):
    from PIL import Image

    from empirical.data.sources import open_in

    wide = np.arange(20 * 28 * 28).reshape(20, 28, 28).astype(np.uint16) % 256
    assert as_image_set(wide, "wide").transforms == ("converted from uint16 (every value in 0..255: exact)",)
    np.save(tmp_path / "wide.npy", wide)
    train, _ = open_in(str(tmp_path / "wide.npy"))
    assert "uint16 → uint8" in train.name
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (0, 128, 255)]
    (tmp_path / "gif").mkdir()
    frames[0].save(tmp_path / "gif" / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="holds 3 frames"):
        open_out(str(tmp_path / "gif"), (1, 28, 28))


# a disk that fills while a checkpoint is written: one line, the earlier checkpoint kept ----------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_during_a_checkpoint_save_is_one_error_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    from empirical.training import checkpoint

    target = tmp_path / "last.pt"
    checkpoint.save_checkpoint(target, {"step": 1, "model_state": {}})
    before = target.read_bytes()

    def onto_a_full_disk(path, write):  # a buffered file whose writes fail with ENOSPC, as atomic_write's temp file
        f = open("/dev/full", "wb")  # noqa: SIM115
        try:
            write(f)
        finally:
            with contextlib.suppress(OSError):
                f.close()

    monkeypatch.setattr(checkpoint, "atomic_write", onto_a_full_disk)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint .*last.pt: .*is the disk full") as err:
        checkpoint.save_checkpoint(target, {"step": 2, "model_state": {"w": torch.zeros(10**5)}})
    assert "\n" not in str(err.value) and "unexpected pos" in str(err.value)
    assert target.read_bytes() == before


def test_a_write_that_fails_keeps_its_own_error_when_closing_fails_too(tmp_path, monkeypatch):
    import errno
    import io

    from empirical.io import atomic

    class FullOnClose(io.BytesIO):
        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    opened = []
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: opened.append(fd) or FullOnClose())

    def fails(f):
        f.write(b"half")
        raise ValueError("the writer's own error")

    with pytest.raises(ValueError, match="the writer's own error"):
        atomic.atomic_write(tmp_path / "x.bin", fails)
    os.close(opened[0])
    assert list(tmp_path.iterdir()) == []  # the temp file removed, nothing written
