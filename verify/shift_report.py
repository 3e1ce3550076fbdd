"""The shift sweep's report (markdown): which shifts invert in which model, model or data (rank agreement and the
complexity R²), the gap against severity beside its predictions, and which detection score survives which family."""

from __future__ import annotations

import numpy as np

from empirical.ood.detectors import RECOMMENDED
from verify.agreement import IN_TEST, RANK_AGREEMENT
from verify.sweep import Sweep


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if v is None or not np.isfinite(v) else fmt.format(v)


def gap_table(s: Sweep, severities: tuple[int, ...]) -> list[str]:
    """One row per shift: the measured gap ± s.e. at each severity (▲ beyond two s.e.), and beside it the
    input-complexity fit's and the closed form's predictions where the model has them."""
    keys = list(dict.fromkeys(k for c in s.cells for k in c.predicted))
    head = f"**{s.label}**: gap ± s.e. (bits/dim)" + (f"; in brackets the predictions ({', '.join(keys)})"
                                                     if keys else "")
    rows = [head, "", "| shift | family | " + " | ".join(f"@{v}" for v in severities) + " |",
            "|---|---|" + "---:|" * len(severities)]
    for name in dict.fromkeys(c.shift for c in s.cells):
        cs = {c.severity: c for c in s.cells if c.shift == name}
        entries = []
        for v in severities:
            c = cs.get(v)
            if c is None:
                entries.append("–")
                continue
            pred = " / ".join(f"{c.predicted[k]:+.2f}" for k in keys if k in c.predicted)
            entries.append(f"{c.gap_bpd:+.3f} ± {c.gap_bpd_stderr:.3f}{' ▲' if c.inverts else ''}"
                           + (f" ({pred})" if pred else ""))
        rows.append(f"| {name} | {next(iter(cs.values())).family} | " + " | ".join(entries) + " |")
    return rows


def model_or_data(verdicts: dict, agreement: dict, r2: dict[str, dict[str, float]], labels: list[str]) -> list[str]:
    """The model-or-data table: where each shift inverts, every pair's rank agreement, the verdict, and how much of
    each model's per-image bits/dim the compressed length explains."""
    pairs = list(next(iter(agreement.values()), {}))
    data = [s for s, v in verdicts.items() if v["driver"] == "data"]
    model = [s for s, v in verdicts.items() if v["driver"] == "model"]
    lines = ["## Model or data", "",
             f"Spearman ρ of per-image bits/dim between models on the same images (mean over severities); a shift is "
             f"**data-driven** when every pair ranks its images alike, min ρ ≥ {RANK_AGREEMENT} (a rule fixed before "
             f"measuring), else **model-dependent**. R²: the share of the rank variance of a model's per-image "
             f"bits/dim that the PNG length L(x)/D explains (Spearman ρ², the shift's severities pooled; ranks, "
             f"because a few images get astronomically many bits/dim under a flow of another set).", ""]
    if pairs:
        lines += [f"**Data-driven** ({len(data)}): {', '.join(data) or 'none'}. "
                  f"**Model-dependent** ({len(model)}): {', '.join(model) or 'none'}.", ""]
    else:
        lines += ["One model only: no rank agreement (add `--all-models`, or a model of another set).", ""]
    lines += ["| shift | family | inverts in | " + " | ".join(f"ρ {p}" for p in pairs) + " | driver | "
              + " | ".join(f"R² {lab}" for lab in labels) + " |",
              "|---|---|---|" + "---:|" * len(pairs) + "---|" + "---:|" * len(labels)]
    for shift in [IN_TEST, *verdicts]:
        v = verdicts.get(shift)
        inv = "–" if v is None else f"{len(v['inverts_in'])}/{v['models']}" + (
            f" ({', '.join(v['inverts_in'])})" if v["inverts_in"] else "")
        lines.append(f"| {shift} | {v['family'] if v else ''} | {inv} | "
                     + " | ".join(_f(agreement.get(shift, {}).get(p)) for p in pairs)
                     + f" | {(v or {}).get('driver') or '–'} | "
                     + " | ".join(_f(r2[lab].get(shift)) for lab in labels) + " |")
    return lines


def family_table(label: str, table: dict[str, dict[str, float]]) -> list[str]:
    """One model's mean AUROC of each score per shift family (over its shifts and severities), and the worst."""
    families = sorted({f for m in table.values() for f in m if f != "worst"})
    best = max(table, key=lambda s: table[s]["worst"]) if table else None
    return [f"**{label}** (best worst case: {best})", "",
            "| score | " + " | ".join(families) + " | worst |", "|---|" + "---:|" * (len(families) + 1),
            *[f"| {'**' + s + '**' if s == best else s}{' (recommended)' if s == RECOMMENDED else ''} | "
              + " | ".join(f"{m.get(f, float('nan')):.3f}" for f in families) + f" | {m['worst']:.3f} |"
              for s, m in table.items()]]


def detection(analysis: dict) -> list[str]:
    """The detection section: each model's per-family table and what the rule picks over all of them."""
    lines = ["## Detection", "",
             f"Each score's mean AUROC per shift family (shifted images positive). The recommendation rule takes the "
             f"score with the best worst case over every model and shift family, among the scores every model has "
             f"less the likelihood itself (the score under test); over this sweep's models it picks "
             f"**{analysis['best_worst_case']}**, and with the likelihood among the candidates "
             f"**{analysis['best_worst_case_unrestricted']}** (the recommended score: {RECOMMENDED}; "
             f"docs/detection.md applies the rule over the committed sweeps).", ""]
    for label, table in analysis["auroc_by_family"].items():
        lines += [*family_table(label, table), ""]
    return lines


def render(sweeps: list[Sweep], analysis: dict, severities: tuple[int, ...], head: str,
           prov: dict, sources: dict[str, str]) -> str:
    """The whole report; ``analysis``: verdicts, agreement, R², each model's per-family AUROC and the rule's pick."""
    main = sweeps[0]
    inverting = [f"{s.label}: {', '.join(dict.fromkeys(c.shift for c in s.cells if c.inverts)) or 'none'}"
                 for s in sweeps]
    lines = [f"# Shift sweep: {head}", "",
             "The gap is bpd(IN-test) − bpd(shifted IN-test): positive (▲ where beyond two standard errors) means "
             "the shifted images get the HIGHER likelihood, the inversion. AUROC: the shifted images are the "
             "positive class (0.5 = chance).", "",
             "**Invert at some severity**: " + "; ".join(inverting) + ".", "",
             *model_or_data(analysis["verdicts"], analysis["agreement"], analysis["r2"], [s.label for s in sweeps]),
             "", "![agreement](agreement.png)", "", "## The gap against severity", "",
             "![gap curves](gap_curves.png)", ""]
    for s in sweeps:
        lines += [*gap_table(s, severities), "", f"![gap {s.label}]({gap_figure(s.label)})", ""]
    lines += [*detection(analysis), f"AUROC against severity, {main.label}:", "",
              "![AUROC curves](auroc_curves.png)", "",
              f"![{RECOMMENDED}](auroc_recommended.png)", "", "![likelihood](auroc_likelihood.png)", "",
              "## Provenance", "", f"- command: `{prov['command']}`", f"- commit: `{prov['commit']}`",
              f"- device: {prov['device']}",
              f"- torch {prov['torch']}, started {prov['started']}, wall-clock {prov['seconds']:.0f} s",
              *[f"- {label}: {src}" for label, src in sources.items()],
              "- each cell: the first images of IN-test under the shift, drawn with the seed of the command "
              "(empirical.data.shifts); every model sees the same images"]
    return "\n".join(lines) + "\n"


def gap_figure(label: str) -> str:
    """The file name of a model's gap heat map: ``gap_cvglow-fashionmnist.png`` for ``cvglow (FashionMNIST)``."""
    slug = "-".join("".join(ch if ch.isalnum() else " " for ch in label.lower()).split())
    return f"gap_{slug}.png"
