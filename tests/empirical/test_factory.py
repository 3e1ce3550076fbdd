"""--model-factory and --classifier-factory MODULE:FUNCTION, --weights: a user's model, its weights loaded
strictly, clear errors."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from empirical.models.factory import FactoryError, call_classifier_factory, call_factory, load_weights


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Flat(nn.Module):
            image_shape = (1, 2, 2)

            def __init__(self):
                super().__init__()
                self.shift = nn.Parameter(torch.zeros(1, 1, 2, 2))

            def log_prob(self, x):
                return -((x - self.shift) ** 2).flatten(1).sum(1)

        def build():
            return Flat()

        def broken():
            raise RuntimeError("no GPU here")

        def not_a_model():
            return 3

        def classifier():  # logits, no log_prob: a classifier to attack, not a density
            return nn.Sequential(nn.Flatten(), nn.Linear(4, 10))

        NOT_CALLABLE = 1
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mymodels", None)


def test_a_factory_builds_a_model_and_loads_its_weights_strictly(user_module):
    model = call_factory("mymodels:build")
    weights = {"shift": torch.full((1, 1, 2, 2), 0.25)}
    save_file(weights, str(user_module / "w.safetensors"))
    record = load_weights(model, user_module / "w.safetensors")
    assert torch.equal(model.shift.data, weights["shift"]) and len(record["sha256"]) == 64
    torch.save({"state_dict": {"shift": torch.ones(1, 1, 2, 2)}}, user_module / "w.pt")
    load_weights(model, user_module / "w.pt")
    assert (model.shift.data == 1).all()


@pytest.mark.parametrize("spec,message", [
    ("mymodels", "takes MODULE:FUNCTION"),
    ("no_such_module_xyz:build", "cannot import no_such_module_xyz"),
    ("mymodels:missing", "has no function 'missing'"),
    ("mymodels:NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
    ("mymodels:broken", r"mymodels:broken\(\) failed: RuntimeError: no GPU here"),
    ("mymodels:not_a_model", "int is not a torch.nn.Module"),
])
def test_factory_errors(user_module, spec, message):
    with pytest.raises(Exception, match=message) as info:
        call_factory(spec)
    assert isinstance(info.value, FactoryError) or "Module" in message


@pytest.mark.parametrize("content,message", [
    ({"other": torch.zeros(1)}, "1 tensors missing .first shift.; 1 unexpected tensors .first other."),
    ({"shift": torch.zeros(3)}, "shapes differ"),
    ({"shift": torch.full((1, 1, 2, 2), float("nan"))}, "non-finite weights"),
])
def test_weights_that_do_not_fit_are_refused(user_module, content, message):
    save_file(content, str(user_module / "w.safetensors"))
    with pytest.raises(FactoryError, match=message):
        load_weights(call_factory("mymodels:build"), user_module / "w.safetensors")


def test_unreadable_weights(user_module):
    (user_module / "w.safetensors").write_bytes(b"garbage")
    with pytest.raises(FactoryError, match="cannot read the weights"):
        load_weights(call_factory("mymodels:build"), user_module / "w.safetensors")
    (user_module / "w.pt").write_bytes(b"garbage")
    with pytest.raises(FactoryError, match="not a readable weights file"):
        load_weights(call_factory("mymodels:build"), user_module / "w.pt")
    with pytest.raises(FactoryError, match="does not exist"):
        load_weights(call_factory("mymodels:build"), user_module / "none.pt")


def test_a_classifier_factory_needs_a_module_but_no_log_prob(user_module):
    assert isinstance(call_classifier_factory("mymodels:classifier"), torch.nn.Module)
    with pytest.raises(FactoryError, match=r"mymodels:not_a_model\(\) returned a int, not a torch.nn.Module"):
        call_classifier_factory("mymodels:not_a_model")
    with pytest.raises(FactoryError, match="cannot import no_such_module_xyz for --classifier-factory"):
        call_classifier_factory("no_such_module_xyz:build")
