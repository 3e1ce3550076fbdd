"""OOD statistics that need the model itself, batched: per-example gradient norms (torch.func) and the VAE's
likelihood regret. empirical.ood.scores turns them into scores."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from empirical.models.contract import describe, model_device, model_dtype
from empirical.models.likelihood import bin_centres, dequantize

REGRET_STEPS = 50  # Adam steps on each image's q(z|x) parameters, fixed before any OOD set is seen
REGRET_LR = 0.02
REGRET_SAMPLES = 16  # ε draws of the ELBO before and after (the same draws for both)


class _LogProb(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.log_prob(x)


def gradient_norms(model: nn.Module, images: np.ndarray, *, seed: int = 0,
                   batch_size: int = 64) -> dict[str, np.ndarray]:
    """log ‖∇_θℓ log p(x̃)‖² per image for every parameter tensor θℓ (Bergamin et al. 2022), from per-example
    gradients (torch.func.vmap of grad); x̃ is dequantised with the same seeded noise as the evaluation."""
    info = describe(model)
    device, dtype = model_device(model), model_dtype(model)
    wrapper = _LogProb(model.eval())
    params = {k: v.detach() for k, v in wrapper.named_parameters()}
    buffers = {k: v.detach() for k, v in wrapper.named_buffers()}

    def log_p(p: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapper, (p, buffers), (x[None],))[0]

    per_example = vmap(grad(log_p), in_dims=(None, 0))
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.as_tensor(images)
    # One preallocated array, one copy per batch: hundreds of small per-tensor results kept from every batch
    # fragment the heap around the freed per-example gradients (CIFAR-10: about 1 MiB of resident memory per image).
    out = np.empty((len(x_all), len(params)))
    for start in range(0, len(x_all), batch_size):
        x = x_all[start: start + batch_size].to(device)
        x_in = bin_centres(x, dtype) if info.discrete else dequantize(x, gen, dtype)
        grads = per_example(params, x_in)
        squared = torch.stack([grads[k].reshape(len(x), -1).double().pow(2).sum(1) for k in params], 1)
        out[start: start + len(x)] = torch.log(squared + 1e-300).cpu().numpy()
        del grads, squared
    return {k.removeprefix("model."): out[:, i].copy() for i, k in enumerate(params)}


def _elbo(vae: nn.Module, x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The ELBO of uint8 images x under q = N(μ, σ²) (per image), with the reconstruction averaged over the draws
    ``eps`` (S×N×L) and the analytic KL, in nats."""
    z = mu + torch.exp(log_std) * eps
    xr = x.expand(len(eps), *x.shape).reshape(-1, *x.shape[1:])
    rec = vae.decode_log_prob(xr, z.reshape(-1, z.shape[-1])).view(len(eps), -1).mean(0)
    return rec - 0.5 * (mu**2 + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(1)


def _regret(vae: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        mu0, log_std0 = vae.encode(x)
    eps = torch.randn((REGRET_SAMPLES, *mu0.shape), generator=gen).to(x.device)
    with torch.no_grad():
        before = _elbo(vae, x, mu0, log_std0, eps)
    mu, log_std = mu0.clone().requires_grad_(True), log_std0.clone().requires_grad_(True)
    opt = torch.optim.Adam([mu, log_std], lr=REGRET_LR)
    for _ in range(REGRET_STEPS):
        loss = -_elbo(vae, x, mu, log_std, torch.randn((1, *mu0.shape), generator=gen).to(x.device)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return _elbo(vae, x, mu, log_std.clamp(-8, 4), eps) - before


def likelihood_regret(vae: nn.Module, images: np.ndarray, *, seed: int = 0, batch_size: int = 100) -> np.ndarray:
    """Xiao, Yan & Amit (NeurIPS 2020): how much the ELBO improves, in nats, when q(z|x) is fitted to the one image:
    here its Gaussian parameters, started at the encoder's output and moved by REGRET_STEPS Adam steps (lr
    REGRET_LR) on the ELBO, each image on its own but in batches; both ELBOs from the same REGRET_SAMPLES draws.
    The decoder is never changed."""
    gen = torch.Generator().manual_seed(seed)
    device = model_device(vae)
    vae.eval()
    trainable = [p for p in vae.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        return np.concatenate([_regret(vae, torch.as_tensor(images[s: s + batch_size]).to(device), gen)
                               .double().cpu().numpy() for s in range(0, len(images), batch_size)])
    finally:
        for p in trainable:
            p.requires_grad_(True)
