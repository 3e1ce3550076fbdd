"""Detectors as objects, in the style of pytorch-ood and alibi-detect: build one on a model, ``fit`` it on IN images
the model never trained on, then ``score`` any images: one value per image, higher = more OOD.

    typicality = Typicality(model).fit(in_heldout)
    s_in, s_out = typicality.score(in_test), typicality.score(out_test)
    typicality.save("typicality.npz")              # the fitted state alone (arrays and JSON), read without pickle
    Typicality(model).load("typicality.npz")

Images are anything ``as_image_set`` takes (an ImageSet, a uint8 array, a tensor, a torch Dataset). Detectors built on
the same ``ModelPass`` share its evaluations, so a set is evaluated once however many scores read it. A new score is
one subclass here (its ``name``, and ``_fit``/``_score``) and its test; ``SCORE_SETS`` says which set names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import nn

from empirical.io.atomic import atomic_write
from empirical.io.errors import DgmOodError
from empirical.models.likelihood import bits_per_dim
from empirical.ood import scores
from empirical.ood.features import Memo, ModelPass, as_pass, images_of, statistics

FORMAT = 1
# The one score a user can trust first: chosen once, on IN-only criteria and the two offline pairs, and not
# revisited per OOD set.
RECOMMENDED = "complexity_png"
RECOMMENDATION = ("input complexity with PNG (Serrà et al. 2020): it needs nothing but the model and the image (no "
                  "held-out images, no second model), costs one compression per image, and had the highest mean "
                  "AUROC over the two offline pairs (FashionMNIST → MNIST, CIFAR-10 → MNIST) among such scores")


class DetectorError(DgmOodError):
    """A detector used out of order (scored before it was fitted) or given a file that is not its own."""


class Detector:
    """The contract: ``fit(in_heldout) -> self``, ``score(images) -> np.ndarray`` (float64, one per image, higher =
    more OOD), ``save(path)`` and ``load(path)``. ``fitted`` is what ``fit`` learned (named arrays), None before."""

    name: str = ""
    needs_fit: ClassVar[bool] = False  # whether scoring needs held-out IN images first

    def __init__(self) -> None:
        self.fitted: dict[str, np.ndarray] | None = None

    def fit(self, in_heldout: object) -> Detector:
        """Learn what the score needs from IN images the model never trained on (two or more when the score needs
        them: a spread needs two); returns the detector."""
        images = images_of(in_heldout)
        if self.needs_fit and len(images) < 2:
            raise DetectorError(f"the {self.name} detector fits on held-out IN images: give at least 2, got "
                                f"{len(images)}")
        self.fitted = {k: np.asarray(v) for k, v in self._fit(images).items()}
        return self

    def score(self, images: object) -> np.ndarray:
        """One score per image; higher = more OOD."""
        if self.needs_fit and self.fitted is None:
            raise DetectorError(f"the {self.name} detector scores against held-out IN images: call fit(in_heldout) "
                                f"first")
        return np.asarray(self._score(images_of(images)), dtype=np.float64)

    def _fit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def _score(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """The fitted state as ``.npz`` (arrays) with a JSON header naming the detector; no pickle anywhere."""
        path = Path(path)
        header = json.dumps({"detector": self.name, "format": FORMAT, "fitted": self.fitted is not None})
        arrays = {f"fit:{k}": v for k, v in (self.fitted or {}).items()}
        atomic_write(path, lambda f: np.savez(f, header=np.array(header), **arrays))
        return path

    def load(self, path: str | Path) -> Detector:
        """The fitted state that ``save`` wrote for a detector of this name; returns the detector."""
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                fitted = {k[len("fit:"):]: z[k] for k in z.files if k.startswith("fit:")}
        except (OSError, ValueError, KeyError) as err:
            raise DetectorError(f"{path} is not a saved detector ({type(err).__name__}: {err})") from err
        if header.get("detector") != self.name or header.get("format") != FORMAT:
            raise DetectorError(f"{path} holds a {header.get('detector')!r} detector (format {header.get('format')}), "
                                f"not {self.name!r} (format {FORMAT})")
        self.fitted = fitted if header.get("fitted") else None
        return self


class _OnModel(Detector):
    """A detector that reads one model's evaluations (through a shared ModelPass)."""

    def __init__(self, model: nn.Module | ModelPass) -> None:
        super().__init__()
        self.model = as_pass(model)

    def bpd(self, images: np.ndarray) -> np.ndarray:
        return self.model(images).bpd


class Likelihood(_OnModel):
    """The paper's baseline (Nalisnick et al., ICLR 2019): S(x) = −log₂ p(x)/D, the bits/dim itself."""

    name = "likelihood"

    def _score(self, images: np.ndarray) -> np.ndarray:
        return scores.likelihood(self.bpd(images))


class Typicality(_OnModel):
    """Nalisnick et al. (2019), M = 1: S(x) = |−log₂ p(x)/D − Ĥ|, Ĥ the mean bits/dim of held-out IN images."""

    name, needs_fit = "typicality", True

    def _fit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {"entropy_bpd": np.array(float(np.mean(self.bpd(images))))}

    @property
    def entropy(self) -> float:
        """Ĥ in bits/dim (after ``fit``)."""
        return float(self.fitted["entropy_bpd"])

    def _score(self, images: np.ndarray) -> np.ndarray:
        return scores.typicality(self.bpd(images), self.entropy)


class Complexity(_OnModel):
    """Serrà et al. (ICLR 2020): S(x) = −log₂ p(x)/D − L(x)/D, L the length in bits of the losslessly compressed image
    (``codec``: png or jpegxl)."""

    def __init__(self, model: nn.Module | ModelPass, codec: str = "png") -> None:
        super().__init__(model)
        if codec not in scores.COMPRESSORS:
            raise DetectorError(f"unknown codec {codec!r}; use one of {', '.join(scores.COMPRESSORS)}")
        self.codec, self.name = codec, f"complexity_{codec}"

    def _score(self, images: np.ndarray) -> np.ndarray:
        return scores.complexity(self.bpd(images), scores.compressed_bits(images, self.codec), self.model.dims)


class DoSE(_OnModel):
    """Morningstar et al. (AISTATS 2021): S(x) = −Σ_j log KDE_j(t_j(x)), one Gaussian KDE per summary statistic t_j
    (log p and the model's parts) fitted on held-out IN images."""

    name, needs_fit = "dose", True

    def _fit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return statistics(self.model(images))

    def _score(self, images: np.ndarray) -> np.ndarray:
        return scores.dose(self.fitted, statistics(self.model(images)))


class LatentTerm(_OnModel):
    """One flow latent's own log-density term as a score: S(x) = −log p(z_latent(x)) in nats (``latent``: a part the
    model declares, e.g. ``latent_top`` or ``latent_split1``)."""

    def __init__(self, model: nn.Module | ModelPass, latent: str) -> None:
        super().__init__(model)
        self.name = latent

    def _score(self, images: np.ndarray) -> np.ndarray:
        parts = self.model(images).parts
        if self.name not in parts:
            raise DetectorError(f"the model declares no part {self.name!r} (it has {', '.join(parts) or 'none'})")
        return -np.asarray(parts[self.name], dtype=np.float64)


class LevelRatio(_OnModel):
    """A flow's levels as a likelihood ratio of one model (Schirrmeister et al. 2020; Havtorn et al. 2021):
    S(x) = Σ_i log p(z_i | z_keep) − log p(z_top), in nats."""

    name = "level_ratio"

    def _score(self, images: np.ndarray) -> np.ndarray:
        parts = self.model(images).parts
        splits = sorted(n for n in parts if n.startswith("latent_") and n != "latent_top")
        return scores.level_ratio(sum(parts[n] for n in splits), parts["latent_top"])


class LikelihoodRatio(_OnModel):
    """Ren et al. (NeurIPS 2019): S(x) = bpd_model(x) − bpd_background(x), the background model trained on perturbed IN
    images (−LLR per dimension, in bits)."""

    name = "likelihood_ratio"

    def __init__(self, model: nn.Module | ModelPass, background: nn.Module | ModelPass) -> None:
        super().__init__(model)
        self.background = as_pass(background, self.model.seed)

    def _score(self, images: np.ndarray) -> np.ndarray:
        return scores.likelihood_ratio(self.bpd(images),
                                       bits_per_dim(self.background(images).log_px, self.model.dims))


class WAIC(Detector):
    """Choi, Jang & Alemi (2018): S(x) = −(E_k log p_k(x) − Var_k log p_k(x)) over K independently trained models."""

    name = "waic"

    def __init__(self, models: list[nn.Module | ModelPass]) -> None:
        super().__init__()
        if len(models) < 2:
            raise DetectorError(f"WAIC needs at least 2 models, got {len(models)}")
        self.models = [as_pass(m) for m in models]

    def log_px(self, images: np.ndarray) -> np.ndarray:
        """K×N log-likelihoods (nats)."""
        return np.stack([m(images).log_px for m in self.models])

    def _score(self, images: np.ndarray) -> np.ndarray:
        return scores.waic(self.log_px(images))


class GradientScore(_OnModel):
    """Bergamin et al. (2022): per-layer log ‖∇_θ log p(x̃)‖², standardised on held-out IN images and combined by
    Fisher's method, S(x) = −2 Σ_layers log p_layer."""

    name, needs_fit = "gradient", True

    def __init__(self, model: nn.Module | ModelPass) -> None:
        from empirical.ood.model_scores import gradient_norms

        super().__init__(model)
        self.norms = Memo(lambda x: gradient_norms(self.model.model, x, seed=self.model.seed))

    def _fit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.norms(images)

    def _score(self, images: np.ndarray) -> np.ndarray:
        return scores.fisher_combination(self.fitted, self.norms(images))


class LikelihoodRegret(_OnModel):
    """Xiao, Yan & Amit (NeurIPS 2020), for a VAE: how much the ELBO improves, in nats, when q(z|x) is fitted to the
    one image."""

    name = "likelihood_regret"

    def __init__(self, vae: nn.Module | ModelPass) -> None:
        from empirical.ood.model_scores import likelihood_regret

        super().__init__(vae)
        self.regret = Memo(lambda x: likelihood_regret(self.model.model, x, seed=self.model.seed))

    def _score(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.regret(images), dtype=np.float64)
