"""Glow's invertible layers. Each maps ``forward(x) -> (y, logdet)`` per sample and has ``inverse(y)``.

Shapes are N×C×H×W; ``logdet`` is a length-N tensor of log|det ∂y/∂x|.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from empirical.io.distributed import channel_mean_std


class ActNorm(nn.Module):
    """y = (x + b)·exp(s) per channel; log|det| = H·W·Σ_c s_c.

    Data-dependent init on the first training batch (zero mean, unit variance per channel, over all ranks'
    rows in data-parallel training); the ``initialized`` flag is a buffer, so a reloaded state dict never
    re-initialises.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        mean, std = channel_mean_std(x)  # over every rank's rows in data-parallel training
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(1e-6)))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialized:
            self._initialize(x)
        logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return (x + self.bias) * torch.exp(self.log_scale), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """y = W x at every pixel; log|det| = H·W·log|det W|.

    ``lu=True`` parametrises W = P·L·(U + diag(sign·exp(log_s))) (Kingma & Dhariwal 2018), making
    log|det W| = Σ log_s cheap; otherwise W is a free matrix and slogdet is computed in float64.
    Both start from a random rotation.
    """

    def __init__(self, channels: int, lu: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.lu = lu
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
        if lu:
            p, low, up = torch.linalg.lu(q)
            s = torch.diagonal(up)
            self.register_buffer("perm", p.float())
            self.register_buffer("sign_s", torch.sign(s).float())
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.lower = nn.Parameter(low.float())
            self.upper = nn.Parameter(torch.triu(up, 1).float())
            self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        else:
            self.weight = nn.Parameter(q.float())

    def matrix(self) -> torch.Tensor:
        """The C×C mixing matrix W (output channel × input channel)."""
        if not self.lu:
            return self.weight
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        low = self.lower * self.lower_mask + eye
        up = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ low @ up

    def log_abs_det(self) -> torch.Tensor:
        """log|det W|, always accumulated in at least float32 (float64 for the plain matrix)."""
        if self.lu:
            return self.log_s.sum()
        return torch.linalg.slogdet(self.weight.double())[1].to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.matrix()
        y = F.conv2d(x, w.to(x.dtype)[:, :, None, None])
        logdet = x.shape[2] * x.shape[3] * self.log_abs_det()
        return y, logdet.to(x.dtype).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w_inv = torch.linalg.inv(self.matrix().double()).to(y.dtype)
        return F.conv2d(y, w_inv[:, :, None, None])


class ZeroConv2d(nn.Module):
    """3×3 convolution started at zero, output scaled by exp(3·logs) (Glow's last layer)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(3 * self.logs)


class CouplingNet(nn.Module):
    """h = ZeroConv(ReLU(Conv1×1(ReLU(Conv3×3(x_a))))): the coupling's conditioner."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, hidden, 1), nn.ReLU())
        self.out = ZeroConv2d(hidden, out_channels)
        self.out_channels = out_channels
        self.amp_dtype: torch.dtype | None = None  # bf16 on CUDA when the trainer asks for it
        self.off = False  # switched off (outputs zero): the theory's linear path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.off:
            return x.new_zeros(x.shape[0], self.out_channels, *x.shape[2:])
        if self.amp_dtype is not None and x.is_cuda:
            with torch.autocast("cuda", dtype=self.amp_dtype):
                h = self.body(x)
            return self.out(h.to(x.dtype))
        return self.out(self.body(x))


class Coupling(nn.Module):
    """Split x = (x_a, x_b) by channel and transform x_b conditioned on x_a.

    additive: y_b = x_b + t(x_a), log|det| = 0 (constant volume, CV-Glow);
    affine:   y_b = (x_b + t(x_a))·σ(h(x_a) + 2), log|det| = Σ log σ(h + 2).
    """

    def __init__(self, channels: int, hidden: int, kind: str = "affine") -> None:
        super().__init__()
        if kind not in ("affine", "additive"):
            raise ValueError(f"coupling must be 'affine' or 'additive', got {kind!r}")
        if channels < 2:
            raise ValueError("a coupling needs at least 2 channels")
        self.kind = kind
        self.n_a = channels // 2
        n_b = channels - self.n_a
        self.net = CouplingNet(self.n_a, n_b * (2 if kind == "affine" else 1), hidden)

    def _shift_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.net(x_a)
        if self.kind == "additive":
            return h, None
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, raw

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.n_a], x[:, self.n_a:]
        shift, raw = self._shift_scale(x_a)
        if raw is None:
            return torch.cat([x_a, x_b + shift], 1), x.new_zeros(x.shape[0])
        y_b = (x_b + shift) * torch.sigmoid(raw + 2.0)
        logdet = F.logsigmoid(raw + 2.0).flatten(1).sum(1)
        return torch.cat([x_a, y_b], 1), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y_a, y_b = y[:, : self.n_a], y[:, self.n_a:]
        shift, raw = self._shift_scale(y_a)
        x_b = y_b - shift if raw is None else y_b / torch.sigmoid(raw + 2.0) - shift
        return torch.cat([y_a, x_b], 1)


class Squeeze(nn.Module):
    """C×H×W -> 4C×(H/2)×(W/2) by moving 2×2 spatial blocks into channels; log|det| = 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs even height and width, got {h}×{w}")
        y = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(n)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        n, c4, h, w = y.shape
        c = c4 // 4
        return y.reshape(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h, 2 * w)


class FlowStep(nn.Module):
    """One Glow step: actnorm → invertible 1×1 conv → coupling."""

    def __init__(self, channels: int, hidden: int, coupling: str, lu: bool,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels, lu=lu, generator=generator)
        self.coupling = Coupling(channels, hidden, coupling)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in (self.actnorm, self.invconv, self.coupling):
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in (self.coupling, self.invconv, self.actnorm):
            y = layer.inverse(y)
        return y


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Σ log N(z; mean, exp(log_std)²) over all but the batch dimension."""
    ll = -0.5 * math.log(2 * math.pi) - log_std - 0.5 * ((z - mean) * torch.exp(-log_std)) ** 2
    return ll.flatten(1).sum(1)


class Split(nn.Module):
    """Factor out half the channels: x = (z_keep, z_out), z_out ~ N(μ(z_keep), σ(z_keep)²).

    ``fixed_std=None``: μ and log σ come from a zero-initialised 3×3 conv of z_keep (Glow's learned
    conditional prior); ``fixed_std=σ_ψ``: z_out ~ N(0, σ_ψ²), the one Gaussian latent of the paper's analysis.
    ``forward`` returns (z_keep, log p(z_out | z_keep)): a density term, not a volume term.
    """

    def __init__(self, channels: int, fixed_std: float | None = None) -> None:
        super().__init__()
        self.n_keep = channels // 2
        self.n_out = channels - self.n_keep
        self.fixed_std = fixed_std
        self.prior = None if fixed_std is not None else ZeroConv2d(self.n_keep, 2 * self.n_out)

    def fix_prior(self, std: float) -> None:
        """Replace the conditional prior by N(0, std²) (its parameters are dropped)."""
        self.prior, self.fixed_std = None, std

    def _params(self, z_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prior is None:
            mean = z_keep.new_zeros(z_keep.shape[0], self.n_out, *z_keep.shape[2:])
            return mean, torch.full_like(mean, math.log(self.fixed_std))
        h = self.prior(z_keep)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_keep, z_out = x[:, : self.n_keep], x[:, self.n_keep:]
        mean, log_std = self._params(z_keep)
        return z_keep, gaussian_log_density(z_out, mean, log_std)

    def prior_stats(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image: the smallest log σ(z_keep) and the largest squared standardised residual ((z_out − μ)/σ)²,
        the two ways a term −log σ − ½((z_out − μ)/σ)² of log p(z_out | z_keep) can become extreme."""
        z_keep, z_out = x[:, : self.n_keep], x[:, self.n_keep:]
        mean, log_std = self._params(z_keep)
        residual_sq = ((z_out - mean) * torch.exp(-log_std)) ** 2
        return {"min_log_std": log_std.flatten(1).amin(1), "max_residual_sq": residual_sq.flatten(1).amax(1)}

    def inverse(self, z_keep: torch.Tensor, z_out: torch.Tensor | None = None,
                temperature: float = 1.0) -> torch.Tensor:
        """Rebuild x; with ``z_out=None`` sample it from the prior at ``temperature``."""
        if z_out is None:
            mean, log_std = self._params(z_keep)
            z_out = mean + temperature * torch.exp(log_std) * torch.randn_like(mean)
        return torch.cat([z_keep, z_out], 1)
