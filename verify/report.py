"""Verdict, terminal summary, report.md and results.json for one comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from empirical.io.atomic import atomic_write, write_json
from theory.ledger import markdown_table


def write_text(path: Path, lines: list[str]) -> None:
    """Markdown lines to ``path``, atomically (a re-run that is interrupted keeps the previous report)."""
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def verdict(in_label: str, out_label: str, gap_bpd: float, gap_bpd_stderr: float, predictions: dict,
            identical: bool = False) -> str:
    """One line: which test set gets the higher likelihood, and whether each prediction has its sign.

    ``gap_bpd`` = bpd(IN-test) - bpd(OUT-test): positive means OUT gets the higher likelihood.
    ``predictions`` maps a name to a predicted gap in bpd (or None when it does not apply).
    """
    if identical:
        return (f"{out_label} and {in_label} are the same images: the gap is 0 by construction, so there is no "
                f"verdict and no sign to predict")
    significant = abs(gap_bpd) > 2 * gap_bpd_stderr
    if not significant:
        head = (f"{out_label} and {in_label} get no significantly different likelihood "
                f"(gap {gap_bpd:+.3f} ± {gap_bpd_stderr:.3f} bpd)")
    else:
        word = "HIGHER" if gap_bpd > 0 else "LOWER"
        head = f"{out_label} gets {word} likelihood than {in_label} (gap {gap_bpd:+.3f} bpd)"
    second = {k: v for k, v in predictions.items() if k != "input_complexity"}
    if all(p is None for p in second.values()):
        head += "; the second-order theory does not apply to this model (see the note)"
        predictions = {k: v for k, v in predictions.items() if k not in second}
        if not predictions:
            return head
    parts = []
    for name, pred in predictions.items():
        if pred is None:
            parts.append(f"{name}: n/a")
            continue
        if pred == 0 or not significant:
            parts.append(f"{name} predicts {pred:+.3f} bpd")
            continue
        same = (pred > 0) == (gap_bpd > 0)
        parts.append(f"{name} predicts the {'same' if same else 'OPPOSITE'} sign ({pred:+.3f} bpd)")
    tail = "" if significant else " (no significant gap, so no sign to compare)"
    return head + "; predictions: " + ", ".join(parts) + tail


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def bpd_table(results: dict) -> list[str]:
    """The paper-style table: dataset, images evaluated, bits/dim ± s.e., and the model's parts in nats
    (Glow: density and volume; VAE: the ELBO bound)."""
    parts = [k for k in ("density_nats", "volume_nats", "elbo_nats") if k in results["summary"]["in_test"]]
    head = "".join(f" {p.removesuffix('_nats')} (nats) |" for p in parts)
    rows = [f"| data | images | bits/dim |{head}", "|---|---:|---:|" + "---:|" * len(parts)]
    for key in ("in_train", "in_test", "out_test"):
        s = results["summary"][key]
        cells = "".join(f" {s[p]['mean']:.1f} |" for p in parts)
        rows.append(f"| {results['labels'][key]} | {s['n']} | {s['bpd']['mean']:.3f} ± {s['bpd']['stderr']:.3f} |"
                    + cells)
    return rows


PREDICTIONS = ("closed_form", "exact_second_order", "averaged_curvature", "input_complexity")


def prediction_rows(results: dict) -> list[tuple[str, dict | None, str, str]]:
    """(name, prediction or None, formatted nats ± s.e., formatted ratio to the measured gap)."""
    rows = []
    for name in PREDICTIONS:
        p = results["prediction"].get(name)
        nats = "n/a" if p is None else f"{p['gap_nats']:+,.1f}" + (f" ± {p['stderr']:,.1f}" if "stderr" in p else "")
        rows.append((name, p, nats, _fmt(results["ratios"].get(name), 2)))
    return rows


def terminal_summary(results: dict) -> str:
    lines = [f"{results['model']}{_preset_text(results, ' / preset {}')} trained on {results['labels']['in_train']}"
             f" ({results['device']})", *bpd_table(results), "", results["verdict"]]
    for name, p, nats, ratio in prediction_rows(results):
        if p is None:
            lines.append(f"  {name}: n/a")
        else:
            lines.append(f"  {name}: {nats} nats/image ({p['gap_bpd']:+.4f} bpd), ratio to measured {ratio}")
    lines.append(f"  measured: {results['gap_nats']:+.1f} nats/image ({results['gap_bpd']:+.4f} bpd)")
    if results.get("ledger"):
        lines.append(f"  assumption ledger: {results['ledger']['summary']}")
    if results.get("explain"):
        lines.append(f"  what produces the gap: {results['explain']['summary']}")
    if (results.get("detection") or {}).get("scores"):
        rec = results["detection"]["settings"].get("recommended")
        aurocs = ", ".join(f"{k}{' (recommended)' if k == rec else ''} {v['auroc']:.3f}"
                           for k, v in results["detection"]["scores"].items())
        lines.append(f"  OOD detection AUROC (OUT positive, 0.5 = chance): {aurocs}")
    if results["prediction"].get("note"):
        lines.append(f"  note: {results['prediction']['note']}")
    if results.get("plumbing"):
        lines.append("  PLUMBING RUN on non-standard data: not a result")
    lines.append(f"report: {results['out_dir']}/report.md")
    return "\n".join(lines)


def _preset_text(results: dict, form: str) -> str:
    """`` (cpu preset)`` for our models; `` (outside model)`` for a model without a preset."""
    return form.format(results["preset"]) if results["preset"] != "n/a" else " (outside model)"


def write_report(results: dict, out_dir: Path) -> None:
    """report.md (tables, verdict, predictions, diagnostics, figures, provenance) and results.json."""
    out_dir = Path(out_dir)
    write_json(out_dir / "results.json", results)
    L = results["labels"]
    pred = results["prediction"]
    md = [f"# {L['in_test']} vs {L['out_test']} under {results['model']}{_preset_text(results, ' ({} preset)')}", ""]
    if results.get("plumbing"):
        md += ["> **PLUMBING RUN** on non-standard (test-made) data files: these numbers are not results.", ""]
    md += [f"**Verdict.** {results['verdict']}", "", f"Model class: {results['model_class']}.", "",
           "## Bits per dimension", "", *bpd_table(results), "",
           f"Gap: bpd(IN-test) − bpd(OUT-test) = **{results['gap_bpd']:+.4f} ± {results['gap_bpd_stderr']:.4f}**"
           f" bits/dim; mean log p(OUT) − mean log p(IN-test) = **{results['gap_nats']:+.1f}** nats/image.", ""]
    if not results["model_info"]["exact"]:
        md += ["log p is the model's estimate (for a VAE the IWAE bound, which tightens with k), not log p itself"
               + ("; the ELBO is listed per set below as a looser bound." if "elbo_nats" in results["summary"]
                  ["in_test"] else "."), ""]
    if "elbo_nats" in results["summary"]["in_test"]:
        md += [f"- {L[k]}: ELBO {results['summary'][k]['elbo_nats']['mean']:.1f} nats (bound)"
               for k in ("in_train", "in_test", "out_test")] + [""]
    if results["decomposition"]:
        dec = results["decomposition"]
        md += ["## Density and volume", "",
               f"Δ density = {dec['delta']['density_nats']:+.1f} nats, Δ volume = {dec['delta']['volume_nats']:+.1f} "
               f"nats (OUT − IN-test); the gap is carried by the **{dec['carried_by']}** term.", ""]
    md += ["## Second-order predictions", "",
           "| prediction | gap (nats/image) | gap (bpd) | sign agrees | ratio to measured |",
           "|---|---:|---:|:---:|---:|"]
    for name, p, nats, ratio in prediction_rows(results):
        if p is None:
            md.append(f"| {name} | n/a | n/a | n/a | n/a |")
            continue
        agree = {True: "yes", False: "no", None: "n/a"}[results["agreement"].get(f"sign_{name}")]
        md.append(f"| {name} | {nats} | {p['gap_bpd']:+.4f} | {agree} | {ratio} |")
    md.append(f"| measured | {results['gap_nats']:+.1f} | {results['gap_bpd']:+.4f} | | |")
    if pred.get("note"):
        md += ["", f"Note: {pred['note']}."]
    md += _applicability_section(results)
    md += _second_order_details(results)
    md += _ledger_section(results)
    md += _explain_section(results)
    md += _detection_section(results)
    md += _graying_and_provenance(results)
    write_text(out_dir / "report.md", md)


def _applicability_section(results: dict) -> list[str]:
    parts = results.get("applicability") or []
    skipped = [p for p in parts if not p["ran"]]
    checks = [f"- {'passed' if c['passed'] else '**FAILED**'}: {c['check']} ({c['detail']})"
              for c in results.get("contract_checks") or []]
    md = ["", "**Checks of the outside model's log p:**", "", *checks] if checks else []
    if not skipped:
        return md + ["", "Every part of the report applies to this model and ran."]
    return md + ["", "**What did not run, and why:**", ""] + [f"- {p['part']}: {p['why']}" for p in skipped]


def _second_order_details(results: dict) -> list[str]:
    ex, qc, L = results["prediction"]["exact_second_order"], results["quadratic_check"], results["labels"]
    md = []
    if ex is not None:
        md += ["", f"Exact second order at x0 = {results['x0']} ({ex['method']}): "]
        if "trace_term" in ex:
            mc = ex["monte_carlo"]
            md[-1] += (f"gradient term {ex['gradient_term']:+,.1f}, trace term {ex['trace_term']:+,.1f}, mean term "
                       f"{ex['mean_term']:+,.1f} nats; the Monte Carlo estimate from {mc['n_samples']['in_test']} + "
                       f"{mc['n_samples']['out_test']} sampled images is {mc['gap_nats']:+,.1f} ± "
                       f"{mc['stderr']:,.1f}.")
        else:
            md[-1] += f"gradient term {ex['gradient_term']:+,.1f}, curvature term {ex['curvature_term']:+,.1f} nats."
    if qc:
        md += ["", "How quadratic is log p? The Taylor polynomial at x0 averaged exactly over each set (dequantised) "
               "against the measured mean log p:", "", "| data | Taylor E[log p] | measured E[log p] |",
               "|---|---:|---:|"]
        for key in ("in_test", "out_test"):
            md.append(f"| {L[key]} | {qc[key]['taylor_at_x0']:,.1f} | {qc[key]['measured_log_p']:,.1f} |")
    spec = results.get("hessian_spectrum")
    if spec:
        md += ["", f"Hessian of log p at x0: {spec['positive']} of {spec['dims']} eigenvalues are positive "
               f"(largest {spec['max']:+.3g}, smallest {spec['min']:+.3g}); the paper's −JᵀJ/σ_ψ² has none."]
    mdiff = results["mean_difference"]
    md += ["", f"Mean equality: per-channel mean difference (OUT − IN-test, pixel units) "
           f"{[round(v, 2) for v in mdiff['per_channel_mean_diff']]}; RMS over dimensions {mdiff['rms_diff']:.2f}, "
           f"{_fmt(mdiff['relative'], 2)} × IN-test's RMS standard deviation "
           f"({'small' if (mdiff['relative'] or 0) < 0.25 else 'NOT small: the first-order term matters'}).", "",
           ]
    return md


def _ledger_section(results: dict) -> list[str]:
    book = results.get("ledger")
    if not book:
        return []
    md = ["## Assumption ledger", "",
          "From the measured gap to the paper's formula, adding assumptions one row at a time (E_q[log p] − "
          "E_p*[log p], nats per image; moments are exact over the evaluated images).", "",
          *markdown_table(book), "", f"**{book['summary']}**"]
    check = results.get("linear_path_check")
    if check:
        md += ["", f"Check of row 4: the linear-path model evaluated on the images gives {check['direct_nats']:+,.3f} "
               f"nats/image, its moments {check['from_moments_nats']:+,.3f} (difference {check['abs_diff']:.2g})."]
    return md + [""]


def _explain_section(results: dict) -> list[str]:
    ex = results.get("explain")
    if not ex:
        return []
    iv, L = ex["interventions"], results["labels"]
    md = ["## What produces the gap", "", f"**{ex['summary']}**", "",
          f"Interventions: transformed copies of {L['out_test']}, evaluated with the same model and noise seed; the "
          f"gap is E[log p(transformed OUT)] − E[log p({L['in_test']})], and the share is the part of the measured "
          f"gap that survives.", "",
          "| OUT | gap (bits/dim) | gap (nats/image) | share of the measured gap | sub-pixels clipped | images |",
          "|---|---:|---:|---:|---:|---:|",
          f"| as measured | {iv['measured']['gap_bpd']:+.4f} ± {iv['measured']['stderr_bpd']:.4f} | "
          f"{iv['measured']['gap_nats']:+,.1f} | 100% | | |"]
    for r in iv["rows"].values():
        share = "n/a" if r["share"] is None else f"{100 * r['share']:.1f}%"
        md.append(f"| {r['what']} | {r['gap_bpd']:+.4f} ± {r['stderr_bpd']:.4f} | {r['gap_nats']:+,.1f} | {share} | "
                  f"{r['clipped']:.2%} | {r['n']} |")
    c = ex["complexity"]
    md += ["", f"Input complexity as a predictor: n/a ({c['reason']})." if c["gap_nats"] is None else
           f"Input complexity as a predictor: log p(x) ≈ {c['intercept_nats']:+,.1f} {c['slope_nats_per_bit']:+.4f}"
           f"·L(x) nats (L the {c['compressor'].upper()} length in bits), fitted on {c['n_fit']} IN-train images "
           f"only (R² {c['r2_in_train']:.2f}); it predicts a gap of {c['gap_bpd']:+.4f} bits/dim from the sets' "
           f"compressed lengths."]
    e = ex["entropy"]
    if e:
        md += ["", "Entropy decomposition (Caterini & Loaiza-Ganem 2021): gap = [H(p*) − H(q)] − [KL(q‖p) − "
               "KL(p*‖p)], bits/dim:", "", "| term | bits/dim |", "|---|---:|",
               f"| Ĥ(p*): IN-test under the model (IN-train: {e['in_train_bpd']:.4f}) | {e['h_in_bpd']:.4f} |",
               f"| Ĥ(q): OUT-test under a model of the same kind trained on OUT-train | {e['h_out_bpd']:.4f} |",
               f"| entropy difference Ĥ(p*) − Ĥ(q) | {e['entropy_difference_bpd']:+.4f} |",
               f"| KL̂(q‖p) = E_q[bpd under p] − Ĥ(q) | {e['kl_out_bpd']:.4f} |",
               f"| KL̂(p*‖p) | {e['kl_in_bpd']:.4f} |",
               f"| gap = entropy difference − KL difference | {e['gap_bpd']:+.4f} |", "", f"{e['bounds']}."]
    else:
        md += ["", "No entropy decomposition: it needs a model of OUT (`--entropy`, which trains or reuses one of the "
               "same kind on OUT's training part)."]
    md += ["", "Contrast scaling x_s = μ + s·(x − μ) of both sets (each about its own mean): figure `contrast.png`, "
           "measured against the second-order curve where the model has one.", ""]
    return md


SCORE_PAPERS = {
    "likelihood": "−log₂ p(x)/D (Nalisnick et al. 2019)",
    "typicality": "|bpd − Ĥ| (Nalisnick, Matsukawa, Teh & Lakshminarayanan 2019)",
    "complexity_png": "bpd − L(x)/D with PNG (Serrà et al. 2020)",
    "complexity_jpegxl": "bpd − L(x)/D with JPEG XL lossless (Serrà et al. 2020)",
    "likelihood_ratio": "bpd − bpd of a background model (Ren et al. 2019)",
    "waic": "−(E_k log p_k − Var_k log p_k) over K models (Choi, Jang & Alemi 2018)",
    "dose": "−Σ_j log KDE_j(t_j(x)) over the model's summary statistics, fitted on held-out IN (Morningstar et al. "
            "2021)",
    "level_ratio": "Σ_i log p(z_i | z_keep) − log p(z_top): the local levels against the global one (after "
                   "Schirrmeister et al. 2020, Havtorn et al. 2021)",
    "gradient": "Fisher's method over per-layer log ‖∇_θ log p‖², standardised on held-out IN (Bergamin et al. 2022)",
    "likelihood_regret": "ELBO gain when q(z|x) is fitted to the image (Xiao, Yan & Amit 2020)",
}


def _score_what(name: str) -> str:
    if name.startswith("latent_"):
        return f"−log p(z_{name.removeprefix('latent_')} | …): one latent's own term"
    return SCORE_PAPERS.get(name, "")


def _detection_section(results: dict) -> list[str]:
    det = results.get("detection")
    if not det:
        return []
    if "note" in det:
        return ["## OOD detection", "", f"{det['note']}.", ""]
    st, L = det["settings"], results["labels"]
    extra = [] if st["entropy_bpd"] is None else [
        f"Ĥ = {st['entropy_bpd']:.4f} bits/dim is the mean over {st['heldout_images']} IN images held out of "
        f"training, which also set the thresholds"]
    if st["background_mu"] is not None:
        extra.append(f"the background model was trained on IN-train with each sub-pixel replaced by a uniform "
                     f"random value with probability μ = {st['background_mu']}")
    if st["ensemble_k"] is not None:
        k = st["ensemble_k"]
        extra.append(f"WAIC uses K = {k} independently seeded models (this one and {k - 1} more)")
    rec = st.get("recommended")
    head = []
    if rec in det["scores"]:
        r = det["scores"][rec]
        head = [f"**Recommended score: {rec}**, AUROC {r['auroc']:.3f} (95% interval {r['auroc_ci95'][0]:.3f}–"
                f"{r['auroc_ci95'][1]:.3f}), FPR at 95% TPR {r['fpr95']:.3f}. Why this one: "
                f"`empirical.ood.detectors.RECOMMENDATION`.", ""]
    md = ["## OOD detection", "", *head,
          f"Can the model tell {L['out_test']} (positive) from {L['in_test']}? Every score is higher for more OOD; "
          f"nothing is fitted on the OOD set" + ("; " + "; ".join(extra) if extra else "") + ".", "",
          "| score | what | AUROC (95% interval) | AUPRC | FPR at 95% TPR | FPR at 80% TPR |",
          "|---|---|---:|---:|---:|---:|"]
    for name, r in det["scores"].items():
        what = _score_what(name).replace("|", "\\|")
        ci = r.get("auroc_ci95")
        interval = f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else ""
        label = f"**{name}** (recommended)" if name == st.get("recommended") else name
        md.append(f"| {label} | {what} | {r['auroc']:.3f}{interval} | {r['auprc']:.3f} | {r['fpr95']:.3f} | "
                  f"{r.get('fpr80', float('nan')):.3f} |")
    if det["batch_typicality"]:
        md += ["", f"Typicality test on batches of M images (Nalisnick et al. 2019): ε_M is the {st['alpha']:.0%} "
               f"bootstrap quantile of |batch mean − Ĥ| on the held-out IN images.", "",
               "| M | batches IN / OUT | AUROC | ε_M (bpd) | OUT batches beyond ε_M | IN-test batches beyond ε_M |",
               "|---:|---:|---:|---:|---:|---:|"]
    for r in det["batch_typicality"]:
        if "note" in r:
            md.append(f"| {r['m']} | n/a ({r['note']}) | | | | |")
            continue
        md.append(f"| {r['m']} | {r['n_in']} / {r['n_out']} | {r['auroc']:.3f} | {r['epsilon_bpd']:.4f} | "
                  f"{r['out_flagged']:.1%} | {r['in_flagged']:.1%} |")
    ens = det.get("ensemble")
    if ens:
        md += ["", f"Does ensembling fix the inversion? The ensemble of {ens['k']} models (its density "
               f"log (1/K) Σ_k p_k) gives a gap bpd(IN-test) − bpd(OUT-test) of **{ens['ensemble_gap_bpd']:+.3f}**; "
               f"its members {', '.join(f'{g:+.3f}' for g in ens['member_gaps_bpd'])}."]
        w = {k: {q: f"{v:,.1f}" for q, v in d.items()} for k, d in ens["waic_parts_nats"].items()}
        md += ["", "WAIC = E_k log p_k − Var_k log p_k, its parts over the images (nats per image, mean / median): "
               f"E_k log p_k {w['in_test']['mean_log_px']} / {w['in_test']['median_log_px']} on IN-test, "
               f"{w['out_test']['mean_log_px']} / {w['out_test']['median_log_px']} on OUT-test; Var_k log p_k "
               f"{w['in_test']['var_log_px']} / {w['in_test']['median_var_log_px']} on IN-test, "
               f"{w['out_test']['var_log_px']} / {w['out_test']['median_var_log_px']} on OUT-test. WAIC flags OUT "
               "only where the members disagree about it by more than its higher mean log-likelihood; a mean far above "
               "its median means a few images carry it."]
    return md + [""]


def _graying_and_provenance(results: dict) -> list[str]:
    g = results["graying"]
    md = ["## Graying", "", f"x_α = α·x + (1−α)·128 on {g['n_images']} IN-test images; Δ log p against α = 1.", "",
          "| α | measured Δ log p | exact second order | closed form |", "|---:|---:|---:|---:|"]
    for i, a in enumerate(g["alphas"]):
        ex = g["exact_second_order"][i] if g["exact_second_order"] else None
        cf = g["closed_form"][i] if g["closed_form"] else None
        md.append(f"| {a:.2f} | {g['measured'][i]:+.1f} | {_fmt(ex, 1)} | {_fmt(cf, 1)} |")
    md += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in results["figures"]]
    prov = results["provenance"]
    md += ["", "## Provenance", "", f"- command: `{prov['command']}`", f"- commit: `{prov['commit']}`",
           f"- device: {prov['device']}", f"- torch {prov['torch']}, started {prov['started']}, "
           f"wall-clock {prov['seconds']:.0f} s", f"- checkpoint: `{results['checkpoint']}`"]
    if results.get("model_source"):
        md += [f"- model: {results['model_source']}"]
    extra = results.get("extra_model_sources") or {}
    md += [f"- likelihood ratio's background model: {s}" for s in extra.get("background", [])]
    md += [f"- WAIC's ensemble member {i}: {s}" for i, s in enumerate(extra.get("ensemble", []), 1)]
    md += ["- data read (path, bytes, SHA-256; images evaluated, their content digest, what was done to them):"]
    for d in (results.get("data") or {}).values():
        files = ", ".join(f"`{f['path']}` ({f['bytes']:,} B" + (f" in {f['count']} files" if f.get("count") else "")
                          + f", `{f['sha256'][:16]}…`)" for f in d["files"]) or "no files (made in memory)"
        done = "; ".join(d["transforms"]) or "used as read"
        md += [f"  - {d['name']} ({d['source']}): {d['n']} images {'×'.join(map(str, d['shape']))}, content "
               f"`{d['content_sha256'][:16]}…`; {files}; {done}"]
    return md


def write_families(runs: dict[str, dict], out_dir: Path) -> None:
    """One table and one figure for several model families on the same pair (the paper's Figure 1 layout)."""
    first = next(iter(runs.values()))
    L = first["labels"]
    md = [f"# {L['in_test']} vs {L['out_test']}: model families ({first['preset']} preset)", "",
          f"| model | {L['in_train']} | {L['in_test']} | {L['out_test']} | gap (bpd) | OUT higher? |",
          "|---|---:|---:|---:|---:|:---:|"]
    per_image = {}
    for name, r in runs.items():
        b = r["bpd"]
        md.append(f"| {name} | {b['in_train']:.3f} | {b['in_test']:.3f} | {b['out_test']:.3f} | "
                  f"{r['gap_bpd']:+.3f} ± {r['gap_bpd_stderr']:.3f} | {'yes' if r['gap_bpd'] > 0 else 'no'} |")
        with np.load(Path(r["out_dir"]) / "per_image.npz") as z:
            per_image[name] = {k: z[f"{k}_log_px_nats"] for k in ("in_train", "in_test", "out_test")}
    md += ["", "bits/dim (means); VAE values are IWAE estimates (bounds). Reports: "
           + ", ".join(f"[{n}]({n}/report.md)" for n in runs), ""]
    from verify.figures import family_histograms  # matplotlib is imported when figures are drawn

    fig = family_histograms(per_image, L, {n: r["dims"] for n, r in runs.items()}, Path(out_dir) / "families.png")
    md += [f"![families]({Path(fig).name})", "", f"- command: `{first['provenance']['command']}`",
           f"- commit: `{first['provenance']['commit']}`", f"- device: {first['provenance']['device']}"]
    write_json(Path(out_dir) / "families.json", {n: {k: r[k] for k in ("bpd", "gap_bpd", "gap_bpd_stderr", "gap_nats",
                                                                       "n_images", "verdict")}
                                                 for n, r in runs.items()})
    write_text(Path(out_dir) / "families.md", md)
