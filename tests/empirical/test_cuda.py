"""The CUDA paths against the CPU (``pytest -m cuda``; skipped without CUDA): bf16 coupling networks, one
training step, and evaluation of one checkpoint on both devices.

``DGM_OOD_TEST_ACCEL=cpu`` runs the same code against the CPU itself (a dry run of the tests' plumbing, no
evidence about CUDA: autocast applies on CUDA only)."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest
import torch

from empirical.models.evaluation import evaluate
from empirical.models.flows.layers import Coupling
from empirical.models.likelihood import log_likelihood
from empirical.models.registry import build_model
from empirical.training.presets import get_preset
from empirical.training.steps import batch_loss
from tests.helpers import randomize

ACCEL = torch.device(os.environ.get("DGM_OOD_TEST_ACCEL", "cuda"))
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(ACCEL.type == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]
BF16_RTOL = 2e-2  # bf16 keeps 8 bits of mantissa: about 0.4% per operation, a few operations deep


@pytest.mark.parametrize("kind", ["affine", "additive"])
def test_bf16_coupling_network_matches_fp32_and_inverts_exactly(kind):
    torch.manual_seed(0)
    layer = randomize(Coupling(4, 32, kind), seed=1).to(ACCEL)
    x = torch.randn(8, 4, 6, 6, device=ACCEL)
    y32, ld32 = layer(x)
    layer.net.amp_dtype = torch.bfloat16
    y16, ld16 = layer(x)
    torch.testing.assert_close(y16, y32, rtol=BF16_RTOL, atol=BF16_RTOL)
    torch.testing.assert_close(ld16, ld32, rtol=BF16_RTOL, atol=BF16_RTOL * x[0].numel())
    # forward and inverse call the same bf16 network on the same x_a: the round trip stays exact in fp32
    torch.testing.assert_close(layer.inverse(y16), x, rtol=1e-5, atol=1e-5)


def _model(family: str):
    torch.manual_seed(0)
    return build_model(family, get_preset("smoke", family, (3, 32, 32)).model)


@pytest.mark.parametrize("family", ["glow", "cvglow"])
def test_one_training_step_on_the_accelerator_equals_the_cpu_step(family):
    cpu = _model(family)
    acc = _model(family).to(ACCEL)
    batch = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for model, device in ((cpu, torch.device("cpu")), (acc, ACCEL)):
        model.train()
        with torch.no_grad():  # ActNorm's data-dependent init, on the same images and noise
            log_likelihood(model, batch.to(device), torch.Generator().manual_seed(2))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss, _ = batch_loss(partial(log_likelihood, model), batch.to(device), torch.Generator().manual_seed(3),
                             model.config.dims, None)  # the noise is drawn on the CPU generator for both
        loss.backward()
        optimizer.step()
    for (name, p), q in zip(cpu.state_dict().items(), acc.state_dict().values(), strict=True):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-3, atol=1e-4, msg=f"{name} differs after one step")


@pytest.mark.parametrize("family", ["glow", "cvglow"])
def test_one_checkpoint_evaluates_to_the_same_bits_per_dim_on_both_devices(family):
    model = randomize(_model(family), seed=4, scale=0.05)
    images = np.random.default_rng(5).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    on_cpu = evaluate(model, images, seed=6, device="cpu").bpd
    on_acc = evaluate(model.to(ACCEL), images, seed=6, device=ACCEL).bpd
    np.testing.assert_allclose(on_acc, on_cpu, atol=1e-3)
