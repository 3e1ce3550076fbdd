"""The README and the docs stay true: the README's Python example is the one the tests run, every relative link
points to a file that exists, the README's first section has its two commands, and the shipped weights match
their recorded SHA-256, and the recommended score is the one the committed shift sweeps choose."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from empirical.training import shipped
from tests.helpers import SHARED_DATA

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "results" / "README.md"]


def _python_block(text: str, marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if marker in b)


def test_the_readme_python_example_is_the_one_the_tests_run():
    readme = _python_block((REPO / "README.md").read_text(), "from verify.api import compare")
    example = (REPO / "examples" / "python_api.py").read_text()
    body = example.split("# --- README example: begin\n")[1].split("    # --- README example: end")[0]
    assert readme.strip() == textwrap.dedent(body).strip()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_quick_start_has_the_two_commands():
    first = (REPO / "README.md").read_text().split("## Quick start")[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)```", first, flags=re.S)
    assert [c.strip().split(" && ")[-1] for c in commands] == ["python -m verify.compare fashionmnist mnist",
                                                                "python -m pytest -q"]
    assert "python -m pytest -q" in (REPO / ".ci" / "run").read_text()


def test_shipped_weights_match_their_recorded_sha256():
    assert shipped.available(), "the main job's weights are shipped"
    assert shipped.check() == []
    for s in shipped.available():
        assert s.weights.stat().st_size <= shipped.MAX_BYTES


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the offline mirror ../shared/data is absent")
def test_the_main_job_finds_its_shipped_weights_and_they_load():
    """The main job's run (FashionMNIST, cvglow, cpu preset, seed 0) is exactly the one the card records."""
    from empirical.data.sources import DataOptions, open_in
    from empirical.training.presets import get_preset

    train_set, test_set = open_in("fashionmnist", DataOptions(str(SHARED_DATA)))
    preset = get_preset("cpu", "cvglow", train_set.shape, seed=0)
    found = shipped.find(train_set, test_set, "cvglow", preset)
    assert found is not None and found.name == "fashionmnist-cvglow-cpu"
    ckpt = found.load()
    assert ckpt.payload["shipped"] == found.name and len(ckpt.heldout(train_set)) == 2000
    member = shipped.find(train_set, test_set, "cvglow", get_preset("cpu", "cvglow", train_set.shape, seed=1))
    assert member is not None and member.name == "fashionmnist-cvglow-cpu-seed1"  # an ensemble member of --scores all
    assert shipped.find(train_set, test_set, "cvglow", get_preset("cpu", "cvglow", train_set.shape, seed=7)) is None


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the offline mirror ../shared/data is absent")
@pytest.mark.parametrize("name", ["fashionmnist", "cifar10"])
def test_the_adversarial_runs_find_their_shipped_classifiers(name):
    """verify.adversarial IN trains nothing: the cpu preset's classifier of IN ships, loads, and reaches the accuracy
    its card records on the first 2,000 test images (FashionMNIST ≥ 90%, CIFAR-10 ≥ 75% on the whole test set)."""
    from empirical.data.sources import DataOptions, labels_of, open_in
    from empirical.training.classifier import accuracy, classifier_preset, find_shipped, load_shipped

    options = DataOptions(str(SHARED_DATA))
    train_set, test_set = open_in(name, options)
    found = find_shipped(train_set, test_set, classifier_preset("cpu", train_set.shape,
                                                                hflip=train_set.mirror_symmetric))
    assert found is not None and found.name == f"{name}-cnn-cpu"
    labels = labels_of(name, "test", options)
    model = load_shipped(found)
    recorded = found.card["made_by"]["test_accuracy"]  # another CPU's float sums may flip a borderline image or two
    assert abs(accuracy(model, test_set.images[:2000], labels[:2000]) - recorded) <= 0.002
    assert accuracy(model, test_set.images, labels) >= {"fashionmnist": 0.90, "cifar10": 0.75}[name]


def test_shipped_weights_are_a_checkpoint_for_every_command(tmp_path):
    from empirical.io.errors import CheckpointError
    from empirical.training.loading import model_from_checkpoint

    s = next(s for s in shipped.available() if s.name == "fashionmnist-cvglow-cpu")
    ckpt = model_from_checkpoint(s.weights)
    assert ckpt.payload["shipped"] == s.name and ckpt.name == "cvglow"
    # more models like it (--scores all, --entropy): its preset, read back from the card's JSON, any seed
    assert ckpt.preset(seed=3).model.to_dict() == {**ckpt.model.config.to_dict(), "seed": 3}
    other = ckpt._replace(payload={**ckpt.payload, "model_config": {**ckpt.payload["model_config"], "hidden": 32}})
    with pytest.raises(CheckpointError, match="does not use its cpu preset's architecture"):
        other.preset()
    fake = tmp_path / "x.safetensors"
    fake.write_bytes(s.weights.read_bytes())
    fake.with_suffix(".json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a card of shipped weights"):
        model_from_checkpoint(fake)
    fake.with_suffix(".json").write_text(s.weights.with_suffix(".json").read_text())
    fake.write_bytes(s.weights.read_bytes()[:-8] + b"\0" * 8)  # damaged: the recorded SHA-256 no longer holds
    with pytest.raises(CheckpointError, match="missing or damaged"):
        model_from_checkpoint(fake)


def test_the_recommended_score_is_what_the_rule_picks_on_the_committed_shift_sweeps():
    """RECOMMENDED is computed, not chosen by hand: the best worst case over every committed sweep's models and shift
    families (verify.sweep.best_worst_case), which never looks at a real OOD set."""
    import json

    from empirical.ood.detectors import RECOMMENDED
    from verify.sweep import best_worst_case

    tables = [table for path in sorted((REPO / "results").glob("shifts-*/results.json"))
              for table in json.loads(path.read_text()).get("auroc_by_family", {}).values()]
    assert len(tables) >= 2, "the rule is settled on more than one model's sweep"
    assert best_worst_case(tables) == RECOMMENDED
