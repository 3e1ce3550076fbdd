"""Which detectors a model gets: the score vocabulary shared by the command line, the API and the reports, and the
detectors that apply to a model, in the reports' order (the recommended score first)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from empirical.io.errors import DgmOodError
from empirical.models.contract import ModelInfo
from empirical.ood import scores
from empirical.ood.detectors import (
    RECOMMENDED,
    WAIC,
    Complexity,
    Detector,
    DoSE,
    GradientScore,
    LatentTerm,
    LevelRatio,
    Likelihood,
    LikelihoodRatio,
    LikelihoodRegret,
    Typicality,
)
from empirical.ood.features import ModelPass

# A score set names what a run computes: cheap needs no more passes of the model than the likelihood; model adds
# the gradient score or a VAE's likelihood regret; all adds the scores that need more models (trained like it).
SCORE_SETS = ("cheap", "model", "all")
NEEDS_MODEL = ("gradient", "likelihood_regret")
NEEDS_MORE_MODELS = ("likelihood_ratio", "waic")
FIXED_NAMES = ("likelihood", "typicality", *(f"complexity_{c}" for c in scores.COMPRESSORS), "dose", "level_ratio",
               *NEEDS_MORE_MODELS, *NEEDS_MODEL)


@dataclass(frozen=True)
class ScoreChoice:
    """What a run scores: the set whose models and passes it needs, and the score names kept (None: all of it)."""

    level: str  # none | cheap | model | all
    names: tuple[str, ...] | None = None

    def keeps(self, name: str) -> bool:
        return self.names is None or name in self.names


def choose_scores(text: str) -> ScoreChoice:
    """``none``, a score set (cheap, model, all) or score names separated by commas (``likelihood,typicality``;
    ``latent_*`` names a flow's latent terms); an unknown name is a DgmOodError naming the known ones."""
    if text in ("none", *SCORE_SETS):
        return ScoreChoice(text)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FIXED_NAMES and not n.startswith("latent_")]
    if not names or unknown:
        raise DgmOodError(f"unknown score {', '.join(unknown) or repr(text)}: name none, a set "
                          f"({', '.join(SCORE_SETS)}) or scores from {', '.join(FIXED_NAMES)}, latent_*")
    level = "all" if set(names) & set(NEEDS_MORE_MODELS) else "model" if set(names) & set(NEEDS_MODEL) else "cheap"
    return ScoreChoice(level, names)


def one_model_choice(text: str, what: str) -> ScoreChoice:
    """``choose_scores`` for an experiment that scores each model on its own, with no extra passes (``what``: the
    shift sweep, the adversarial experiment): the cheap set or names from it; ``none``, ``model``, ``all`` and the
    scores that need them (a background model, an ensemble, per-example gradients) are a DgmOodError saying so."""
    choice = choose_scores(text)
    if choice.level == "none":
        raise DgmOodError(f"{what} needs at least one score; scores={text!r} keeps none (name cheap, or the scores "
                          f"to keep)")
    extra = sorted(set(choice.names or ()) & {*NEEDS_MODEL, *NEEDS_MORE_MODELS}) or (
        [] if choice.level == "cheap" else [f"the set {choice.level}"])
    if extra:
        raise DgmOodError(f"{what} scores each model alone with the cheap scores (the set cheap, or names from it); "
                          f"scores={text!r} asks for {', '.join(extra)}, which need a background model, an ensemble "
                          f"or per-example gradients: verify.compare computes them")
    return choice


def detectors_for(model: ModelPass, info: ModelInfo, parts: Iterable[str], *, heldout: bool,
                  background: nn.Module | ModelPass | None = None, ensemble: Iterable[nn.Module | ModelPass] = (),
                  expensive: bool = False, choice: ScoreChoice | None = None) -> list[Detector]:
    """Every detector that applies to a model whose evaluations have ``parts``: those that fit on held-out IN images
    only with ``heldout``, the likelihood ratio with a ``background`` model, WAIC with an ``ensemble`` (the other
    members), and with ``expensive`` the gradient score (a deterministic log p) or the likelihood regret (a VAE)."""
    dets: list[Detector] = [Likelihood(model)] + ([Typicality(model)] if heldout else [])
    dets += [Complexity(model, codec) for codec in scores.COMPRESSORS] + ([DoSE(model)] if heldout else [])
    latents = sorted(k for k in parts if k.startswith("latent_"))
    dets += [LatentTerm(model, name) for name in latents]
    if "latent_top" in latents and len(latents) > 1:
        dets.append(LevelRatio(model))
    if background is not None:
        dets.append(LikelihoodRatio(model, background))
    ensemble = list(ensemble)
    if ensemble:
        dets.append(WAIC([model, *ensemble]))
    if expensive and heldout and not info.stochastic:
        dets.append(GradientScore(model))
    vae = info.stochastic and all(callable(getattr(model.model, f, None)) for f in ("decode_log_prob", "encode"))
    if expensive and vae:
        dets.append(LikelihoodRegret(model))
    dets = [d for d in dets if choice is None or choice.keeps(d.name)]
    return sorted(dets, key=lambda d: d.name != RECOMMENDED)  # stable: the recommended first, the rest in order
