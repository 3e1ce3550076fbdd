"""The adversarial report: the attacks (success, perturbation size), each model's detection of them (gap, AUROC,
detection rate at 5% false alarms, PixelDefend), the adaptive attacker, the other direction, and the figures (ROC
curves, clean / adversarial / difference images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from empirical.data.imageset import ImageSet
from empirical.ood import attacks
from empirical.ood.detectors import RECOMMENDED
from verify.attacking import FALSE_ALARMS, Attacked
from verify.figures import new_figure, roc_curves, save_png, styled


def _strongest(names: list[str], adaptive: bool) -> str | None:
    """The attack a figure shows, the last run of its kind (the largest ε): PGD, or the margin attacker on log p
    (best λ), else the adaptive PGD."""
    for kind in ("margin ε=", "adaptive") if adaptive else ("pgd",):
        if chosen := [n for n in names if n.startswith(kind)]:
            return chosen[-1]
    return None


def figures(stage: Path, clean: ImageSet, attacked: list[Attacked], detection: dict, first: str) -> None:
    """ROC curves of the first model's scores against the strongest plain and adaptive attacks, and examples."""
    per_image = detection[first]["per_image"]
    names = [a.name for a in attacked]
    for key, name in (("roc_pgd.png", _strongest(names, False)), ("roc_adaptive.png", _strongest(names, True))):
        if name:
            aurocs = detection[first]["attacks"][name]["auroc"]
            roc_curves({k: (per_image["clean"][k], v) for k, v in per_image[name].items()}, aurocs,
                       f"{first}: {name} vs clean", stage / key, negative="clean", positive="adversarial")
    shown = [a for a in attacked if a.name in (names[len(attacks.EPSILONS) - 1], _strongest(names, False),
                                              _strongest(names, True))]  # the largest ε of each kind
    examples(clean.images[:6], {a.name: a.images.images[:6] for a in shown}, stage / "examples.png")


def _top_variants(facts: dict) -> str:
    """What the report says of the margin attacker on the top latent's term: what ran, or how to run it."""
    on_top = [n for n, parts in attacks.MARGIN_GAINS.items() if "latent_top" in parts]
    ran = [n for n in on_top if any(a.startswith(n + " ") for a in facts["attacks"])]
    scored = facts["detection"].get(facts["adaptive_against"], {}).get("attacks", {}).values()
    if not ran:
        has_top = any("latent_top" in (row.get("auroc") or {}) for row in scored)
        return ("; the top latent's term, which the latent_top score reads on its own, was not attacked on its own "
                "(`--top` does)") if has_top else ""
    said = {"margin+top": "\"margin+top\" raises the top latent's term as well (log p + log p_top)",
            "margin top-only": "\"margin top-only\" that term alone (log p_top)"}
    return "; " + " and ".join(said[n] for n in ran) + ", which the latent_top score reads on its own"


@styled
def examples(clean: np.ndarray, adversarial: dict[str, np.ndarray], path: Path) -> Path:
    """Rows: clean, then each attack's images and their difference from clean (×10, mid-grey = 0)."""
    rows = [("clean", clean)]
    for name, images in adversarial.items():
        diff = np.clip(128 + 10 * (images.astype(np.int16) - clean.astype(np.int16)), 0, 255).astype(np.uint8)
        rows += [(name, images), ("difference ×10", diff)]
    fig = new_figure(figsize=(1.1 * len(clean) + 1.8, 1.05 * len(rows)))
    axes = fig.subplots(len(rows), len(clean), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    return save_png(fig, path)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _detection_table(name: str, d: dict) -> list[str]:
    scores = list(next(iter(d["attacks"].values()))["auroc"])
    lines = [f"**{name}**: AUROC (adversarial positive) / detection rate at {100 * FALSE_ALARMS:.0f}% false alarms "
             f"on held-out clean images; PixelDefend: share with p < {FALSE_ALARMS}", "",
             "| attack | gap (bpd) | " + " | ".join(s + (" (recommended)" if s == RECOMMENDED else "") for s in scores)
             + " | PixelDefend |", "|---|---:|" + "---:|" * (len(scores) + 1)]
    for attack, row in d["attacks"].items():
        lines.append(f"| {attack} | {row['gap_bpd']:+.3f} | " + " | ".join(
            f"{row['auroc'][s]:.3f} / {_pct(row['detection_rate'][s])}" for s in scores)
            + f" | {_pct(row['detection_rate']['pixeldefend'])} |")
    fooled = {a: r for a, r in d["attacks"].items() if r.get("fooled")}
    if fooled:
        lines += ["", f"**{name}, successful adversarial examples only** (the images whose correct prediction the "
                  "attack changed, against every clean image): AUROC / detection rate", "",
                  "| attack | n | " + " | ".join(scores) + " | PixelDefend |",
                  "|---|---:|" + "---:|" * (len(scores) + 1)]
        lines += [f"| {attack} | {row['fooled']} | " + " | ".join(
            f"{row['fooled_auroc'][s]:.3f} / {_pct(row['fooled_detection_rate'][s])}" for s in scores)
            + f" | {_pct(row['fooled_detection_rate']['pixeldefend'])} |" for attack, row in fooled.items()]
    return lines


def render(facts: dict) -> str:
    """The whole report from results.json's content."""
    acc = facts["classifier_accuracy"]
    lines = [f"# Adversarial examples: the first {facts['limit']} images of {facts['in']} attacked", "",
             f"Classifier: {facts['classifier']}; accuracy {_pct(acc['attacked_images'])} on the attacked images"
             + f", {_pct(acc['test_2000'])} on the first 2,000 test images"
             + ". Adversarial images are rounded to 8 bits (the generative models are discrete-data models), which "
             "keeps them in their ε-ball. A positive gap: the adversarial images get the HIGHER likelihood.", "",
             "| attack | success rate | ℓ∞ (max) | ℓ2 (mean) |", "|---|---:|---:|---:|",
             *[f"| {k} | {_pct(v['success_rate'])} | {v['linf_max']:.4f} | {v['l2_mean']:.3f} |"
               for k, v in facts["attacks"].items()], "", "## Detection", ""]
    for name, d in facts["detection"].items():
        lines += [*_detection_table(name, d), ""]
    against = facts["adaptive_against"]
    lines += ["The adaptive attacker (PGD from a random start) maximises the classifier's loss + λ·log p(x̃)/D under "
              + (f"{against} (a smooth density); \"best λ\" keeps, per image, the successful adversarial image of "
                 f"highest log p among plain PGD and every λ (the white-box attacker may choose); the other "
                 f"models and every score built on them face it as a transfer attack. The compressed length of the "
                 f"complexity scores is not differentiable: the attacker does not target it, only the likelihood "
                 f"inside it. The margin attacker (Carlini & Wagner 2017) starts from the clean image, takes "
                 f"{attacks.MARGIN_STEPS} signed steps of ε/10 up min(margin, {attacks.KAPPA:g}) + λ·log p(x̃)/D (once "
                 f"the classifier is wrong by {attacks.KAPPA:g} logit every step raises log p) and keeps each image's "
                 f"fooling 8-bit iterate of highest log p, best λ per image{_top_variants(facts)}. A detection "
                 f"claim that holds only against the plain attacks (FGSM, PGD) holds only against a non-adaptive "
                 f"attacker."
                 if against else "none of the models (no smooth density): only the plain attacks ran."), "",
              "![ROC, PGD](roc_pgd.png)", "", "![ROC, adaptive](roc_adaptive.png)" if against else "", "",
              "![examples](examples.png)", ""]
    if facts["toward_typical"]:
        tt = facts["toward_typical"]
        scores = list(next(iter(tt.values()))["auroc"])
        lines += [f"## The other direction: {facts['ood']} moved toward typical", "",
                  f"PGD inside ε moves each {facts['ood']} image's bits/dim toward typicality's Ĥ under {against}; "
                  f"AUROC of each score ({facts['ood']} positive, against the clean IN images) and the share more "
                  f"typical than the median IN image:", "",
                  "| ε | " + " | ".join(scores) + " | more typical |", "|---|" + "---:|" * (len(scores) + 1),
                  *[f"| {eps} | " + " | ".join(f"{r['auroc'][s]:.3f}" for s in scores)
                    + f" | {_pct(r['more_typical'])} |" for eps, r in tt.items()], ""]
    prov = facts["provenance"]
    lines += ["## Provenance", "", f"- command: `{prov['command']}`", f"- commit: `{prov['commit']}`",
              f"- device: {prov['device']}",
              f"- torch {prov['torch']}, started {prov['started']}, wall-clock {prov['seconds']:.0f} s",
              *[f"- {k}: {v}" for k, v in facts["models"].items()]]
    return "\n".join(lines) + "\n"


def headline(facts: dict) -> str:
    """One line for the terminal: each attack's success and the first model's recommended-score AUROC."""
    first = next(iter(facts["detection"].values()))["attacks"]
    return "; ".join(f"{k}: success {_pct(v['success_rate'])}, {RECOMMENDED} AUROC "
                     f"{first[k]['auroc'].get(RECOMMENDED, float('nan')):.3f}" for k, v in facts["attacks"].items())
