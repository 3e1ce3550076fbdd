"""The paper's table of pairs in one command: ``python -m verify.table [--preset P] [--model M]``.

One model per IN dataset, trained or reused from the runs folder (shared with verify.compare); for each IN its
train and test bits/dim, and for each OUT its test bits/dim, the gap bpd(IN-test) − bpd(OUT-test) (positive:
OUT gets the higher likelihood) with its standard error, and the signs the closed form (CV-Glow) and the exact
second order (flows) predict. SVHN pairs run when its files are present and are skipped with a note otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from empirical import data, distributed
from empirical.atomic import atomic_write, write_json
from empirical.checkpoint import model_from_checkpoint
from empirical.cli import run_cli
from empirical.errors import DataNotFound, TheoryError
from empirical.evaluate import Evaluation, evaluate
from empirical.likelihood import nats_gap_to_bpd
from empirical.models import FLOWS, MODELS
from empirical.presets import PRESETS, get_preset
from theory.predict import closed_form, to_model_space
from theory.quadratic import Moments, exact_quadratic
from verify import figures
from verify.runs import cached_model, provenance

# IN → its OUT sets, each with whether it is mapped to IN's shape (--match); the paper's pairs and their reverses
PAIRS: dict[str, tuple[tuple[str, bool], ...]] = {
    "fashionmnist": (("mnist", False),),
    "mnist": (("fashionmnist", False),),
    "cifar10": (("cifar100", False), ("mnist", True), ("fashionmnist", True), ("constant", False),
                ("noise", False), ("svhn", False)),
    "svhn": (("cifar10", False),),
}
OPTIONAL = ("svhn",)  # not in every mirror: skipped with a note when its files are missing


@dataclass
class InModel:
    """One IN dataset's model and what every one of its OUT rows shares."""

    name: str
    model_name: str
    model: torch.nn.Module
    checkpoint: Path
    train: Evaluation
    test: Evaluation
    test_images: np.ndarray
    p: Moments | None  # IN-test's moments (flows)
    quad: object | None  # theory.quadratic.Quadratic at x0 = mean of IN-train (flows)


def _num(v: float, signed: bool = False) -> str:
    """3 decimals, or 4 significant digits in e-notation beyond ±10⁴ (a model can give noise 10¹⁶ bits/dim)."""
    return f"{v:{'+' if signed else ''}.3f}" if abs(v) < 1e4 else f"{v:{'+' if signed else ''}.4g}"


def _sign(v: float | None) -> str:
    return "n/a" if v is None else ("+" if v > 0 else "−" if v < 0 else "0")


def _missing(what: str, err: DataNotFound) -> str:
    """A skipped pair in one line: which files are missing (the error's first clause, without the search path)."""
    return f"{what}: {str(err).split(' in one of:')[0]}"


def prepare_in(name: str, args: argparse.Namespace, device: torch.device, command: str) -> InModel:
    """Train or reuse IN's model; evaluate IN-train (the budget's subset) and IN-test; the flow's quadratic at x0."""
    info = data.dataset_info(name)
    preset = get_preset(args.preset, args.model, info.shape, seed=args.seed)
    load = dict(data_dir=args.data_dir, allow_nonstandard=args.allow_nonstandard_data)
    train_images = data.load(name, "train", **load).images
    test_images = data.load(name, "test", **load).images[: preset.budget.in_test]
    ckpt = cached_model(name, args.model, preset, device, args.runs_dir, data_dir=args.data_dir,
                        allow_nonstandard=args.allow_nonstandard_data, command=command)
    model, _ = model_from_checkpoint(ckpt)
    model = model.to(device).eval()
    ev = {k: evaluate(model, v, seed=args.seed, device=device)
          for k, v in (("train", train_images[: preset.budget.in_train]), ("test", test_images))}
    p = quad = None
    if args.model in FLOWS:
        p = Moments.of_images(test_images)
        try:
            quad = exact_quadratic(model, to_model_space(train_images.mean(0, dtype=np.float64)).numpy().ravel())
        except TheoryError as err:
            print(f"note: no exact second order for {name}: {err}", file=sys.stderr)
    return InModel(name, args.model, model, Path(ckpt), ev["train"], ev["test"], test_images, p, quad)


def row(m: InModel, out: str, match: bool, args: argparse.Namespace, device: torch.device) -> dict:
    """One OUT of one IN: bits/dim, the gap and its standard error, and the predicted signs."""
    shape = tuple(m.model.config.shape)
    out_images = data.load_as(out, "test", shape, match=match, seed=args.seed, synthetic_n=len(m.test_images),
                              data_dir=args.data_dir, allow_nonstandard=args.allow_nonstandard_data).images
    out_images = out_images[: len(m.test_images)]
    ev = evaluate(m.model, out_images, seed=args.seed, device=device)
    dims = m.model.config.dims
    gap = float(m.test.bpd.mean() - ev.bpd.mean())
    stderr = float(np.hypot(*(v.std(ddof=1) / np.sqrt(len(v)) for v in (m.test.bpd, ev.bpd))))
    cf = exact = None
    if m.p is not None:
        q = Moments.of_images(out_images)
        if m.model.constant_volume:
            cf = closed_form(m.model, m.p, q)["gap_bpd"]
        if m.quad is not None:
            exact = nats_gap_to_bpd(m.quad.gap(m.p, q)["gap_nats"], dims)
    label = data.display_name(out) + ("" if out in data.SYNTHETIC else "-test") + (" (matched)" if match else "")
    return {"out": out, "match": match, "label": label,
            "out_bpd": float(ev.bpd.mean()), "n_out": len(out_images), "gap_bpd": gap, "gap_bpd_stderr": stderr,
            "closed_form_bpd": cf, "exact_second_order_bpd": exact, "per_image_bpd": ev.bpd}


def markdown(table: list[dict], args: argparse.Namespace, skipped: list[str], prov: dict) -> str:
    plumbing = ["**PLUMBING RUN on non-standard data: not a result.**", ""] if args.allow_nonstandard_data else []
    lines = [f"# The paper's table of pairs: {args.model}, {args.preset} preset", "", *plumbing,
             "Gap = bpd(IN-test) − bpd(OUT-test): positive means OUT gets the HIGHER likelihood (the inversion). "
             "The last two columns are the predicted gap's sign (closed form: CV-Glow only; exact second order: "
             "flows).", "",
             "| IN | IN-train bpd | IN-test bpd | OUT | OUT-test bpd | gap (bpd) | closed form | exact 2nd order |",
             "|---|---:|---:|---|---:|---:|:---:|:---:|"]
    for t in table:
        for i, r in enumerate(t["rows"]):
            head = (f"| {t['label']} | {t['train_bpd']:.3f} | {t['test_bpd']:.3f} " if i == 0 else "| | | ")
            lines.append(head + f"| {r['label']} | {_num(r['out_bpd'])} | {_num(r['gap_bpd'], True)} ± "
                         f"{_num(r['gap_bpd_stderr'])} | {_sign(r['closed_form_bpd'])} | "
                         f"{_sign(r['exact_second_order_bpd'])} |")
    lines += ["", *[f"- skipped: {s}" for s in skipped], "", "![pairs](pairs.png)", "", "## Provenance", "",
              f"- command: `{prov['command']}`", f"- commit: `{prov['commit']}`", f"- device: {prov['device']}",
              f"- torch {prov['torch']}, started {prov['started']}, wall-clock {prov['seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.table", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--model", default="cvglow", choices=MODELS)
    p.add_argument("--in", dest="in_datasets", nargs="+", choices=list(PAIRS), default=list(PAIRS),
                   help="IN datasets (default: all)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where trained models are cached")
    p.add_argument("--out", type=Path, help="table folder (default runs/table/MODEL-PRESET)")
    p.add_argument("--data-dir", help="dataset root (else $DGM_OOD_DATA, <repo>/data, ../shared/data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-nonstandard-data", action="store_true",
                   help="accept well-formed files with non-official counts; the table is labelled PLUMBING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), time.time()
    command = shlex.join(["python", "-m", "verify.table", *(sys.argv[1:] if argv is None else argv)])
    out = args.out or Path("runs/table") / f"{args.model}-{args.preset}"
    device = distributed.resolve_device(args.device)
    table, skipped, panels, labels = [], [], {}, {}
    for name in args.in_datasets:
        try:
            m = prepare_in(name, args, device, command)
        except DataNotFound as err:
            if name not in OPTIONAL:
                raise
            skipped.append(_missing(name, err))
            continue
        entry = {"in": name, "label": data.display_name(name), "checkpoint": str(m.checkpoint),
                 "train_bpd": float(m.train.bpd.mean()), "test_bpd": float(m.test.bpd.mean()),
                 "n_train": len(m.train.bpd), "n_test": len(m.test.bpd), "rows": []}
        for o, match in PAIRS[name]:
            try:
                r = row(m, o, match, args, device)
            except DataNotFound as err:
                if o not in OPTIONAL:
                    raise
                skipped.append(_missing(f"{name} → {o}", err))
                continue
            title = f"{entry['label']} → {r['label'].replace('-test', '')}"
            panels[title] = {"in_test": m.test.bpd, "out_test": r.pop("per_image_bpd")}
            labels[title] = {"in_test": f"{entry['label']}-test", "out_test": r["label"]}
            entry["rows"].append(r)
        table.append(entry)
        print(f"{name}: " + ", ".join(f"{r['out']} {r['gap_bpd']:+.3f}" for r in entry["rows"]), file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    figures.histogram_grid(panels, labels, "bits/dim", out / "pairs.png")
    prov = provenance(command, device, started, t0)
    write_json(out / "table.json", {"model": args.model, "preset": args.preset,
                                    "plumbing": bool(args.allow_nonstandard_data), "table": table,
                                    "skipped": skipped, "provenance": prov})
    report = markdown(table, args, skipped, prov)
    atomic_write(out / "table.md", lambda f: f.write(report.encode()))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
