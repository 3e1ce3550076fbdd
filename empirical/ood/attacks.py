"""Adversarial examples, in pixel units x ∈ [0, 255] (an ε of 8/255 is 8 grey levels), returned as 8-bit images:
the generative models are models of discrete data, so every adversarial image is rounded back to 0..255 (which
keeps it inside its ε-ball, ε being whole grey levels).

- FGSM (Goodfellow et al., ICLR 2015): x + ε·sign ∇ₓ CE(f(x), y).
- PGD-ℓ∞ (Madry et al., ICLR 2018): a uniform random start in the ε-ball, then ``steps`` signed-gradient steps of
  ``step`` levels, each projected back onto the ε-ball ∩ [0, 255].
- The adaptive attacker (Athalye et al., ICML 2018, against a density defence): PGD on CE(f(x), y) + λ·log p(x̃)/D,
  so the perturbation also raises the likelihood the defence checks (log p of a smooth model, at bin centres).
- The margin attacker (Carlini & Wagner, AISec 2017, "not easily detected"): from the clean image, PGD on
  min(margin, κ) + λ·log p(x̃)/D, so that once the image is misclassified by κ logits every step raises log p; it
  keeps each image's fooling 8-bit iterate of highest log p. ``MARGIN_GAINS`` names what else it may raise: log p
  with the top latent's term (which a score reads on its own), or that term alone.
- Toward typical (Pope et al., 2020, the other direction): PGD that moves an image's bits/dim toward a target
  (typicality's Ĥ), making an OOD image look typical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from empirical.io.errors import DgmOodError
from empirical.models.contract import describe, model_device
from empirical.models.likelihood import LEVELS

EPSILONS = (2, 8)  # grey levels: 2/255 and 8/255
PGD_STEPS = 10
LAMBDAS = (0.0, 1.0, 10.0, 100.0)  # the adaptive attacker's weight on log p in nats per dimension
MARGIN_STEPS = 50  # the margin attacker's steps, of ε/10 grey levels each
KAPPA = 1.0  # logits: the margin beyond which the margin attacker only raises log p
LOG_P = ("log_px",)
MARGIN_GAINS = {"margin": LOG_P, "margin+top": ("log_px", "latent_top"), "margin top-only": ("latent_top",)}


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round pixel values to the nearest grey level in 0..255 (uint8)."""
    return x.round().clamp(0, 255).to(torch.uint8)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 255)


def _checked(images: torch.Tensor, eps: float, labels: torch.Tensor | None = None) -> None:
    """The attacks' inputs: uint8 images N×C×H×W (pixel values, never a [0, 1] scale), 0 < ε ≤ 255 grey levels, and
    one integer label per image."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else \
            type(images).__name__
        raise DgmOodError(f"the attacks take uint8 image tensors N×C×H×W (pixel values 0..255); got {got}")
    if not 0 < eps <= 255:
        raise DgmOodError(f"ε is in grey levels, 0 < ε ≤ 255 (8/255 is 8); got {eps}")
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.is_floating_point):
        raise DgmOodError(f"one integer label per image: {len(images)} images, labels {labels.dtype} of shape "
                          f"{tuple(labels.shape)}")


def log_density_per_dim(density: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """log p(x̃)/D in nats of pixel-scale images x (float, 0..255) at their bin centres x̃ = (x + ½)/256, with its
    gradient: only for a model whose log p is smooth in x̃ (empirical.models.contract)."""
    info = describe(density)
    if not info.smooth:
        raise DgmOodError(f"{info.name}'s log p is not differentiable in x̃ (discrete or stochastic): the adaptive "
                          f"attack needs a smooth density, e.g. a flow")
    return density.log_prob((x + 0.5) / LEVELS) / info.dims


def _gradient_sign(objective, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x).sum(), x)
    return grad.sign()


def fgsm(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of ε grey levels up the classifier's loss; uint8 N×C×H×W in and out."""
    _checked(images, eps, labels)
    dev = model_device(classifier)
    x, y = images.to(dev).float(), labels.to(dev)
    step = _gradient_sign(lambda v: F.cross_entropy(classifier(v), y, reduction="none"), x)
    return quantise(_project(x + eps * step, x, eps)).cpu()


def pgd(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, steps: int = PGD_STEPS,
        step: float | None = None, generator: torch.Generator | None = None, density: nn.Module | None = None,
        lam: float = 0.0) -> torch.Tensor:
    """PGD-ℓ∞ with a random start: maximise CE(f(x), y) + λ·log p(x̃)/D (λ = 0: the plain attack) inside the
    ε-ball ∩ [0, 255], ``steps`` steps of ``step`` grey levels (default ε/4); uint8 in and out."""
    _checked(images, eps, labels)
    dev = model_device(classifier)
    x, y = images.to(dev).float(), labels.to(dev)
    step = eps / 4 if step is None else step
    start = torch.rand(x.shape, generator=generator, device=generator.device if generator else "cpu").to(dev)
    x_adv = _project(x + eps * (2 * start - 1), x, eps)

    def objective(v: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(classifier(v), y, reduction="none")
        return loss + lam * log_density_per_dim(density, v) if lam else loss

    for _ in range(steps):
        x_adv = _project(x_adv + step * _gradient_sign(objective, x_adv), x, eps)
    return quantise(x_adv).cpu()


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{j≠y} z_j − z_y per image: positive exactly when the prediction is not y (Carlini & Wagner 2017)."""
    true = logits.gather(1, labels[:, None])[:, 0]
    return logits.scatter(1, labels[:, None], -torch.inf).amax(1) - true


def smooth_parts(density: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's ``log_prob_parts`` at the bin centres of pixel-scale images x, with their gradients; empty for a
    model without smooth parts (only a flow has them)."""
    info = describe(density)
    return density.log_prob_parts((x + 0.5) / LEVELS) if info.smooth and info.parts else {}


def density_gain(density: nn.Module, x: torch.Tensor, parts: tuple[str, ...] = LOG_P) -> torch.Tensor:
    """What the margin attacker raises, per dimension in nats: Σ of the named ``log_prob_parts``/D; ``("log_px",)``
    is log p(x̃)/D for any smooth model, ``("log_px", "latent_top")`` adds the top latent's term (which a score reads
    on its own), ``("latent_top",)`` is that term alone."""
    if tuple(parts) == LOG_P:
        return log_density_per_dim(density, x)
    got = smooth_parts(density, x)
    missing = [p for p in parts if p not in got]
    if missing or not parts:
        raise DgmOodError(f"{describe(density).name} has no smooth log_prob_parts {missing or list(parts)}; the "
                          f"attack on them needs a flow")
    return sum(got[p] for p in parts) / describe(density).dims


def _keep(better: torch.Tensor, candidate: torch.Tensor, value: torch.Tensor, best: torch.Tensor,
          best_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's best iterate so far: ``candidate`` and its ``value`` where ``better``, else the old ones."""
    return torch.where(better[:, None, None, None], candidate, best), torch.where(better, value, best_value)


def margin_adaptive(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, density: nn.Module,
                    lam: float, *, steps: int = MARGIN_STEPS, step: float | None = None, kappa: float = KAPPA,
                    parts: tuple[str, ...] = LOG_P) -> torch.Tensor:
    """Signed steps from the clean image up min(margin, κ) + λ·g(x̃) inside the ε-ball ∩ [0, 255] (``steps`` of
    ``step`` levels, default ε/10), g = ``density_gain`` of ``parts`` (default log p/D); returns each
    image's 8-bit iterate of highest g among those the classifier gets wrong, and the last iterate for an image it
    never got wrong. uint8 in and out."""
    _checked(images, eps, labels)
    dev = model_device(classifier)
    x, y = images.to(dev).float(), labels.to(dev)
    step = eps / 10 if step is None else step

    def objective(v: torch.Tensor) -> torch.Tensor:
        return margin(classifier(v), y).clamp(max=kappa) + lam * density_gain(density, v, parts)

    x_adv, best = x.clone(), x.clone()
    best_gain = torch.full((len(x),), -torch.inf, device=dev)
    for _ in range(steps):
        x_adv = _project(x_adv + step * _gradient_sign(objective, x_adv), x, eps)
        candidate = quantise(x_adv).float()
        with torch.no_grad():
            gain = density_gain(density, candidate, parts)
            better = (margin(classifier(candidate), y) > 0) & (gain > best_gain)
        best, best_gain = _keep(better, candidate, gain, best, best_gain)
    never = torch.isinf(best_gain)[:, None, None, None]
    return quantise(torch.where(never, x_adv, best)).cpu()


def toward_typical(density: nn.Module, images: torch.Tensor, target_bpd: float, eps: float, *,
                   steps: int = PGD_STEPS, step: float | None = None,
                   start: torch.Tensor | None = None) -> torch.Tensor:
    """PGD inside the ε-ball that minimises |bpd(x) − target| (typicality's score), bpd from log p at bin centres
    (Pope et al.: how little it takes to make an OOD image look typical); uint8 in and out. It keeps each image's
    closest 8-bit iterate, beginning with ``start`` (uint8, inside the ball; default the image itself), so that starting
    from a smaller ball's result a larger ball never ends farther from the target."""
    _checked(images, eps)
    dev = model_device(density)
    x = images.to(dev).float()
    step = eps / 4 if step is None else step

    def distance(v: torch.Tensor) -> torch.Tensor:  # bits/dim = (−log p(x̃)/D + log 256) / log 2
        return ((math.log(LEVELS) - log_density_per_dim(density, v)) / math.log(2) - target_bpd).abs()

    x_adv = best = x.clone() if start is None else _project(start.to(dev).float(), x, eps)
    with torch.no_grad():
        best_distance = distance(best)
    for _ in range(steps):  # signed steps overshoot near the target: keep each image's closest 8-bit iterate
        x_adv = _project(x_adv - step * _gradient_sign(distance, x_adv), x, eps)
        candidate = quantise(x_adv).float()
        with torch.no_grad():
            d = distance(candidate)
        best, best_distance = _keep(d < best_distance, candidate, d, best, best_distance)
    return quantise(best).cpu()


def perturbation_size(clean: torch.Tensor, adversarial: torch.Tensor) -> dict[str, float]:
    """The perturbation actually made, on the [0, 1] scale: the largest ℓ∞ and the mean ℓ2 per image."""
    d = (adversarial.double() - clean.double()) / 255.0
    return {"linf_max": float(d.abs().amax()) if d.numel() else 0.0,
            "l2_mean": float(d.flatten(1).norm(dim=1).mean()) if d.numel() else 0.0}
