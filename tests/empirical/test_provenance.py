"""Where a result was made: the commit, also in a copy of the checkout without .git (the GPU machine's)."""

from __future__ import annotations

import re

from empirical import provenance


def test_commit_of_this_checkout():
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", provenance.git_commit())


def test_a_copy_without_git_takes_the_declared_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path either
    monkeypatch.setenv("DGM_OOD_COMMIT", "4f2a366")
    assert provenance.git_commit() == "4f2a366 (declared)"
    monkeypatch.delenv("DGM_OOD_COMMIT")
    assert provenance.git_commit() == "unknown"
