"""An outside flow in another convention, wrapped for dgm-ood in a few lines.

``BitsGlow`` stands for a model you already have. It follows the convention of the widely used PyTorch Glow ports:
inputs centred in [-0.5, 0.5], the model adds its own dequantisation noise, and ``forward`` returns
``(z, bits_per_dim)`` with the −D·log 256 discretisation term inside. dgm-ood wants ``log_prob(x̃)``, the
log-density in nats of x̃ = (x + u)/256 ∈ [0, 1)^D, and dequantises once itself: ``Wrapped`` converts, and switches
the model's own noise off so that it is not added twice.

    python -m examples.bpd_glow --train runs/bpd_glow.safetensors --steps 2000      # your own training loop
    python -m verify.compare fashionmnist mnist --model-factory examples.bpd_glow:build \\
        --weights runs/bpd_glow.safetensors

(The second command imports and runs this file: that is what --model-factory does.)
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from torch import nn
from torch.nn import functional as F

SHAPE = (1, 28, 28)


class _Step(nn.Module):
    """actnorm (per channel) → invertible 1×1 convolution → affine coupling, on squeezed 4×14×14 activations."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])
        half = channels // 2
        self.net = nn.Sequential(nn.Conv2d(half, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, 2 * (channels - half), 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = h.shape[2] * h.shape[3]
        h = (h + self.bias) * torch.exp(self.log_scale)
        h = F.conv2d(h, self.weight[:, :, None, None])
        a, b = h.chunk(2, dim=1)
        shift, raw = self.net(a).chunk(2, dim=1)
        scale = torch.sigmoid(raw + 2.0)
        volume = pixels * (self.log_scale.sum() + torch.linalg.slogdet(self.weight)[1])
        logdet = volume + torch.log(scale).flatten(1).sum(1)
        return torch.cat([a, (b + shift) * scale], 1), logdet


class BitsGlow(nn.Module):
    """The outside model: ``forward(x) -> (z, bits/dim)`` for x in [-0.5, 0.5] (its own noise unless told not to)."""

    def __init__(self, steps: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.steps = nn.ModuleList(_Step(4 * SHAPE[0], hidden) for _ in range(steps))

    def forward(self, x: torch.Tensor, add_noise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        dims = x[0].numel()
        if add_noise:
            x = x + torch.rand_like(x) / 256
        n, c, height, width = x.shape
        h = x.reshape(n, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, height // 2,
                                                                                           width // 2)
        logdet = torch.full((n,), -dims * math.log(256), dtype=x.dtype, device=x.device)
        for step in self.steps:
            h, ld = step(h)
            logdet = logdet + ld
        prior = (-0.5 * h**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        return h, -(prior + logdet) / (math.log(2) * dims)


class Wrapped(nn.Module):
    """The density-model contract for BitsGlow: log p(x̃) in nats = D·log 256 − bits/dim · D · log 2."""

    image_shape = SHAPE

    def __init__(self, net: BitsGlow) -> None:
        super().__init__()
        self.net = net

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        dims = x[0].numel()
        _, bpd = self.net(x - 0.5, add_noise=False)  # dgm-ood has dequantised already
        return dims * math.log(256) - bpd * dims * math.log(2)


def build() -> Wrapped:
    """The factory ``--model-factory examples.bpd_glow:build`` calls; ``--weights`` are then loaded into it."""
    with torch.random.fork_rng(devices=[]):  # the same initial weights every time, the caller's RNG untouched
        torch.manual_seed(0)
        return Wrapped(BitsGlow())


def train(images: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> Wrapped:
    """The kind of loop you already have: minimise the model's own bits/dim, with its own noise."""
    model = build()
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=gen)].float() / 256 - 0.5
        _, bpd = model.net(batch)
        optimizer.zero_grad()
        bpd.mean().backward()
        optimizer.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    from empirical.data.sources import open_in

    p = argparse.ArgumentParser(description="train the example outside flow on FashionMNIST and save its weights")
    p.add_argument("--train", required=True, help="where to write the weights (.safetensors)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--dataset", default="fashionmnist", help="a registry name or a path of 1×28×28 images")
    args = p.parse_args(argv)
    train_set, _ = open_in(args.dataset)
    model = train(torch.from_numpy(train_set.images), args.steps)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.train)
    print(f"trained {args.steps} steps on {train_set.name}; weights in {args.train}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
