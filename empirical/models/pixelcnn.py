"""Gated PixelCNN (van den Oord et al. 2016): exact discrete log-likelihood with a 256-way softmax per sub-pixel.

log P(x) = Σ_i log P(x_i | x_<i) over sub-pixels in raster order, channels R→G→B within a pixel. Masked
convolutions (type A in the first layer, B after) make every output depend only on earlier sub-pixels;
residual blocks use gated activations tanh(a)·σ(b). This is the single-stack variant (it keeps the blind
spot of masked convolutions; the two-stack vertical/horizontal variant is not implemented).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from empirical.models.config import MAX_DEPTH, MAX_WIDTH, ImageModelConfig, check_images, whole
from empirical.models.likelihood import LEVELS, discrete_to_density_nats, quantize


@dataclass(frozen=True)
class PixelCNNConfig(ImageModelConfig):
    hidden: int = 64  # channels of the residual stream (a multiple of the image channels)
    blocks: int = 6
    kernel: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        whole("hidden", self.hidden, 1, MAX_WIDTH)
        whole("blocks", self.blocks, 0, MAX_DEPTH)
        whole("kernel", self.kernel, 1)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (a masked convolution has a centre), got {self.kernel}")
        if self.hidden % self.shape[0]:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of the {self.shape[0]} image channels")



class MaskedConv2d(nn.Conv2d):
    """Convolution that sees only earlier pixels in raster order and, at the centre, earlier colour groups.

    Channel o belongs to colour group o % C. Type A (first layer) sees groups < its own at the centre,
    type B sees groups ≤ its own.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, colours: int, mask_type: str) -> None:
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        k = kernel // 2
        mask = torch.ones_like(self.weight)
        mask[:, :, k, k + 1:] = 0
        mask[:, :, k + 1:] = 0
        out_group = torch.arange(out_channels)[:, None] % colours
        in_group = torch.arange(in_channels)[None, :] % colours
        allowed = in_group < out_group if mask_type == "A" else in_group <= out_group
        mask[:, :, k, k] = allowed.float()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedBlock(nn.Module):
    """h + W_1×1(tanh(a)·σ(b)), [a, b] = masked conv B (h)."""

    def __init__(self, hidden: int, kernel: int, colours: int) -> None:
        super().__init__()
        self.conv = MaskedConv2d(hidden, 2 * hidden, kernel, colours, "B")
        self.out = MaskedConv2d(hidden, hidden, 1, colours, "B")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(h).chunk(2, dim=1)
        return h + self.out(torch.tanh(a) * torch.sigmoid(b))


class PixelCNN(nn.Module):
    """Exact discrete likelihood: ``log_prob(x̃)`` = log P(⌊256·x̃⌋) + D·log 256, constant on each 1/256 bin."""

    discrete = True  # the density-model contract (empirical.models.contract): evaluated at bin centres, no noise

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__()
        self.config = config
        c = config.shape[0]
        with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's generator state is left as it was
            torch.manual_seed(config.seed)
            self.inp = MaskedConv2d(c, config.hidden, 7, c, "A")
            self.blocks = nn.ModuleList(GatedBlock(config.hidden, config.kernel, c) for _ in range(config.blocks))
            self.logits_conv = MaskedConv2d(config.hidden, LEVELS * c, 1, c, "B")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.shape

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """N×256×C×H×W logits of every sub-pixel given the earlier ones (x uint8)."""
        check_images(x, self.config.shape)
        return self.network(x.to(self.inp.weight.dtype) / 127.5 - 1.0)

    def network(self, xs: torch.Tensor) -> torch.Tensor:
        """Logits N×256×C×H×W from images scaled to [-1, 1] (differentiable in xs)."""
        h = self.inp(xs)
        for block in self.blocks:
            h = block(F.elu(h))
        out = self.logits_conv(F.elu(h))
        n, _, height, width = out.shape
        return out.view(n, LEVELS, self.config.shape[0], height, width)  # channel index = v·C + c

    def log_prob_discrete(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) in nats per image, exact."""
        logp = F.log_softmax(self.logits(x), dim=1)
        return logp.gather(1, x.long().unsqueeze(1)).squeeze(1).flatten(1).sum(1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x̃) = log P(⌊256·x̃⌋) + D·log 256 in nats per image (exact; x̃ ∈ [0,1)^D)."""
        check_images(x, self.config.shape)
        return discrete_to_density_nats(self.log_prob_discrete(quantize(x)), self.config.dims)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n uint8 images, one sub-pixel at a time (H·W·C forward passes)."""
        c, h, w = self.config.shape
        device = next(self.parameters()).device
        x = torch.zeros(n, c, h, w, dtype=torch.uint8, device=device)
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    probs = F.softmax(self.logits(x)[:, :, k, i, j] / temperature, dim=1)
                    x[:, k, i, j] = torch.multinomial(probs, 1).squeeze(1).to(torch.uint8)
        return x
