"""The symbolic derivation: every step checks out, the CLI prints it, and a failing step fails the CLI."""

import sympy as sp

from theory import derivation
from theory.derive import main


def test_every_step_passes_its_check():
    assert all(ok for _, ok in derivation.run_checks(seed=1, repeats=2))


def test_steps_are_inspectable_sympy_objects_with_known_assumptions():
    names = [s.name for s in derivation.STEPS]
    assert names[0] == "taylor" and "constant_volume" in names and names[-1] == "paper_form"
    for step in derivation.STEPS:
        assert isinstance(step.expr, sp.Basic)
        assert set(step.uses) <= set(derivation.ASSUMPTIONS)


def test_constant_volume_logdet_is_free_of_x():
    x1, x2 = derivation.xs
    assert not (derivation.CV_LOGDET.free_symbols & {x1, x2})


def test_paper_discrepancy_is_real():
    d = derivation.paper_discrepancy(0)
    assert any(abs(a - b) > 1e-3 for a, b in zip(d["paper"], d["derived"], strict=True))


def test_cli_check_passes_and_prints(capsys):
    assert main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "10 passed, 0 failed" in out and "Assumptions" in out and "[constant_volume]" in out


def test_cli_latex(capsys):
    assert main(["--latex"]) == 0
    assert "\\frac" in capsys.readouterr().out


def test_cli_check_fails_when_a_step_fails(monkeypatch, capsys):
    broken = derivation.Step("broken", "a wrong step", sp.Eq(sp.Symbol("a"), 1), (), lambda rng: False)
    monkeypatch.setattr(derivation, "STEPS", [*derivation.STEPS, broken])
    monkeypatch.setattr("theory.derive.STEPS", derivation.STEPS)
    assert main(["--check"]) == 1
    assert "FAIL  broken" in capsys.readouterr().out
