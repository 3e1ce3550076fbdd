"""Where a result was made: the commit (also in a copy without .git) and the code a cached model was trained with."""

from __future__ import annotations

import re

from empirical.io import provenance


def test_commit_of_this_checkout():
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", provenance.git_commit())


def test_a_copy_without_git_takes_the_declared_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path either
    monkeypatch.setenv("DGM_OOD_COMMIT", "4f2a366")
    assert provenance.git_commit() == "4f2a366 (declared)"
    monkeypatch.delenv("DGM_OOD_COMMIT")
    assert provenance.git_commit() == "unknown"


def test_the_cache_key_follows_the_training_code_only(tmp_path, monkeypatch):
    """An edit to a report or a loader keeps every cached model; an edit to a model or the training loop does not."""
    import shutil

    from empirical.training import checkpoint

    shutil.copytree(checkpoint._PACKAGE, tmp_path / "empirical",
                    ignore=shutil.ignore_patterns("__pycache__", "weights"))
    monkeypatch.setattr(checkpoint, "_PACKAGE", tmp_path / "empirical")
    before = checkpoint.code_version()
    (tmp_path / "empirical" / "shipped.py").write_text("# edited\n", encoding="utf-8")
    assert checkpoint.code_version() == before
    layers = tmp_path / "empirical" / "models" / "flows" / "layers.py"
    source = layers.read_text(encoding="utf-8")
    layers.write_text('"""A reworded docstring."""\n# a comment\n\n' + source.split('"""', 2)[2].lstrip("\n"),
                      encoding="utf-8")
    assert checkpoint.code_version() == before  # comments, docstrings and layout are not training code
    layers.write_text(source + "\nEDITED = 1\n", encoding="utf-8")
    assert checkpoint.code_version() != before
