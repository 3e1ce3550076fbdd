"""verify.table: one model per IN, every pair's row; the numbers are verify.compare's for the same model."""

from __future__ import annotations

import json

import pytest

from empirical.cli import run_cli
from tests.faults.conftest import write_tiny_idx
from verify import compare, table


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    for folder, seed in (("fashion-mnist", 1), ("mnist", 2)):
        write_tiny_idx(root / "data", folder, seed)
    common = ["--preset", "smoke", "--data-dir", str(root / "data"), "--runs-dir", str(root / "runs"),
              "--allow-nonstandard-data"]
    assert run_cli(table.main, ["--in", "fashionmnist", "mnist", "svhn", "--out", str(root / "t"), *common]) == 0
    return root, common, json.loads((root / "t" / "table.json").read_text())


def test_every_in_gets_its_model_and_rows_and_missing_svhn_is_a_note(tiny_table):
    root, _, result = tiny_table
    assert [t["in"] for t in result["table"]] == ["fashionmnist", "mnist"]
    assert [[r["out"] for r in t["rows"]] for t in result["table"]] == [["mnist"], ["fashionmnist"]]
    assert result["skipped"] == ["svhn: SVHN train split not found: need train_32x32.mat (plain, .gz or .xz)"]
    report = (root / "t" / "table.md").read_text()
    assert "PLUMBING" in report and "| FashionMNIST |" in report and "commit" in report
    assert (root / "t" / "pairs.png").read_bytes()[:4] == b"\x89PNG"
    for t in result["table"]:
        for r in t["rows"]:
            assert r["gap_bpd"] == pytest.approx(t["test_bpd"] - r["out_bpd"])
            assert r["closed_form_bpd"] is not None and r["exact_second_order_bpd"] is not None
            e = r["entropy"]  # OUT is the other IN: its own model estimates H(OUT)
            assert e["entropy_difference_bpd"] - e["kl_difference_bpd"] == pytest.approx(r["gap_bpd"])
    assert "entropy / KL (bpd)" in report


def test_a_row_equals_verify_compare_on_the_same_model(tiny_table):
    root, common, result = tiny_table
    assert run_cli(compare.main, ["fashionmnist", "mnist", "--scores", "none", "--out", str(root / "c"),
                                  *common]) == 0
    res = json.loads((root / "c" / "results.json").read_text())
    fm = result["table"][0]
    assert res["checkpoint"] == fm["checkpoint"]  # the model is shared, not trained twice
    r = fm["rows"][0]
    assert (fm["train_bpd"], fm["test_bpd"], r["out_bpd"]) == (res["bpd"]["in_train"], res["bpd"]["in_test"],
                                                              res["bpd"]["out_test"])
    assert r["gap_bpd"] == pytest.approx(res["gap_bpd"], abs=1e-12)
    assert r["gap_bpd_stderr"] == pytest.approx(res["gap_bpd_stderr"], rel=1e-9)
    assert r["closed_form_bpd"] == pytest.approx(res["prediction"]["closed_form"]["gap_bpd"], rel=1e-9)
    assert r["exact_second_order_bpd"] == pytest.approx(res["prediction"]["exact_second_order"]["gap_bpd"], rel=1e-9)


def test_huge_numbers_are_written_in_e_notation():
    assert table._num(3.14159) == "3.142" and table._num(-2.5, signed=True) == "-2.500"
    assert table._num(7.573e16) == "7.573e+16" and table._num(7.573e16, signed=True) == "+7.573e+16"
