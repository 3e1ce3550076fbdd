"""One shared check for every invertible transform: round trip, log-det vs autograd, batch independence."""

from __future__ import annotations

import math
from pathlib import Path

import torch

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def autograd_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det ∂fn(x_i)/∂x_i| for each sample, from the full autograd Jacobian (small inputs only)."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], xi)
        d = xi.numel()
        out.append(torch.linalg.slogdet(jac.reshape(d, d))[1])
    return torch.stack(out)


def check_transform(layer: torch.nn.Module, x: torch.Tensor, tol: float | None = None) -> None:
    """inverse(forward(x)) ≈ x; logdet = log|det J| by autograd; results do not mix across the batch."""
    tol = tol if tol is not None else (1e-10 if x.dtype == torch.float64 else 1e-5)
    y, logdet = layer(x)
    assert logdet.shape == (x.shape[0],)
    x_back = layer.inverse(y)
    scale = max(1.0, x.abs().max().item())
    assert (x_back - x).abs().max().item() <= tol * scale, "inverse(forward(x)) != x"
    expected = autograd_logdet(lambda v: layer(v)[0], x)
    assert torch.allclose(logdet, expected, rtol=1e-6, atol=1e-6 if x.dtype == torch.float64 else 1e-3), \
        f"logdet {logdet} != autograd {expected}"
    y0, ld0 = layer(x[:1])
    assert torch.allclose(y0, y[:1], atol=tol * scale) and math.isclose(ld0.item(), logdet[0].item(),
                                                                       rel_tol=1e-6, abs_tol=1e-6)


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Perturb every parameter so zero-initialised layers (ZeroConv, ActNorm) are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def registry_sets(name: str, data_dir: Path | str, allow_nonstandard: bool = True):
    """(train, test) ImageSets of a registry dataset read from ``data_dir`` (small test-made files by default)."""
    from empirical.data.sources import DataOptions, open_in

    return open_in(name, DataOptions(str(data_dir), allow_nonstandard=allow_nonstandard))
