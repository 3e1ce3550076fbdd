"""Split a checkpoint into parts for a size-limited channel and join it again, every byte checked."""

from __future__ import annotations

import json

import pytest
import torch

from empirical.io.errors import CheckpointError
from empirical.io.transfer import join, split
from empirical.models.registry import build_model
from empirical.training.checkpoint import load_checkpoint, save_checkpoint
from empirical.training.loading import model_from_checkpoint
from empirical.training.presets import get_preset
from empirical.transfer import main


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = get_preset("smoke", "cvglow", (1, 28, 28)).model
    model = build_model("cvglow", cfg)
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    save_checkpoint(path, {"model": "cvglow", "model_config": cfg.to_dict(), "model_state": model.state_dict(),
                           "step": 7})
    return path


def test_split_then_join_rebuilds_the_file_byte_for_byte(ckpt):
    original = ckpt.read_bytes()
    manifest = split(ckpt, max_bytes=10_000)
    spec = json.loads(manifest.read_text())
    assert len(spec["parts"]) == -(-len(original) // 10_000) and all(p["bytes"] <= 10_000 for p in spec["parts"])
    ckpt.unlink()
    assert join(manifest) == ckpt and ckpt.read_bytes() == original


def test_load_checkpoint_reads_a_manifest_directly(ckpt):
    manifest = split(ckpt, max_bytes=10_000)
    model, payload, _path = model_from_checkpoint(manifest)
    assert payload["step"] == 7
    reference = load_checkpoint(ckpt)["model_state"]
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("damage,needle", [("flip", "is damaged"), ("delete", "is missing"),
                                           ("truncate", "is damaged")])
def test_a_damaged_or_missing_part_is_named(ckpt, damage, needle):
    manifest = split(ckpt, max_bytes=10_000)
    part = ckpt.with_name(json.loads(manifest.read_text())["parts"][1]["name"])
    raw = bytearray(part.read_bytes())
    if damage == "flip":
        raw[5] ^= 0xFF
        part.write_bytes(bytes(raw))
    elif damage == "delete":
        part.unlink()
    else:
        part.write_bytes(bytes(raw[:-1]))
    for action in (lambda: join(manifest), lambda: load_checkpoint(manifest)):
        with pytest.raises(CheckpointError, match=needle) as err:
            action()
        assert part.name in str(err.value)


def test_cli_split_and_join(ckpt, capsys):
    assert main(["split", str(ckpt), "--max-mib", "0.01"]) == 0
    assert "manifest" in capsys.readouterr().out
    original = ckpt.read_bytes()
    ckpt.unlink()
    assert main(["join", str(ckpt.with_name("last.pt.parts.json"))]) == 0
    assert ckpt.read_bytes() == original
