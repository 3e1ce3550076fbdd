"""The paper's table of pairs in one command: ``python -m verify.table [--preset P] [--model M]``.

One model per IN dataset, trained or reused from the runs folder (shared with verify.compare); for each IN its
train and test bits/dim, and for each OUT its test bits/dim, the gap bpd(IN-test) − bpd(OUT-test) (positive:
OUT gets the higher likelihood) with its standard error, and the signs the closed form (CV-Glow) and the exact
second order (flows) predict. SVHN pairs run when its files are present and are skipped with a note otherwise.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from empirical.cli import add_data_arguments, check_seed, data_options, run_cli, writable_dir
from empirical.data import sources
from empirical.data.imageset import ImageSet, ShapeMap
from empirical.data.sources import DataOptions
from empirical.io import distributed
from empirical.io.atomic import atomic_write, staged, write_json
from empirical.io.errors import DataNotFound, TheoryError
from empirical.io.provenance import portable_path
from empirical.models.evaluation import Evaluation, evaluate
from empirical.models.likelihood import nats_gap_to_bpd
from empirical.models.registry import FLOWS, MODELS
from empirical.training.presets import PRESETS, get_preset
from theory.predict import closed_form, to_model_space
from theory.quadratic import Moments, exact_quadratic
from verify import figures
from verify.explain import entropy_decomposition
from verify.results import Provenance
from verify.runs import provenance, trained_model

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
    test_set: ImageSet
    p: Moments | None  # IN-test's moments (flows)
    quad: object | None  # theory.quadratic.Quadratic at x0 = mean of IN-train (flows)
    nonstandard: bool  # IN's files have non-official counts (plumbing)


def _num(v: float, signed: bool = False) -> str:
    """3 decimals, or 4 significant digits in e-notation beyond ±10⁴ (a model can give noise 10¹⁶ bits/dim)."""
    return f"{v:{'+' if signed else ''}.3f}" if abs(v) < 1e4 else f"{v:{'+' if signed else ''}.4g}"


def _sign(v: float | None) -> str:
    return "n/a" if v is None else ("+" if v > 0 else "−" if v < 0 else "0")


def _missing(what: str, err: DataNotFound) -> str:
    """A skipped pair in one line: which files are missing (the error's first clause, without the search path)."""
    return f"{what}: {str(err).split(' in one of:')[0]}"


@dataclass(frozen=True)
class Settings:
    """What every row of the table shares: the model and preset, the seed, how data are read, where models live."""

    model: str
    preset: str
    seed: int
    options: DataOptions
    runs_dir: Path
    retrain: bool
    device: torch.device
    command: str


def prepare_in(name: str, cfg: Settings) -> InModel:
    """Train or reuse IN's model; evaluate IN-train (the budget's subset) and IN-test; the flow's quadratic at x0."""
    train_set, test_set = sources.open_in(name, cfg.options)
    preset = get_preset(cfg.preset, cfg.model, train_set.shape, seed=cfg.seed)
    device = cfg.device
    trained = trained_model(train_set, test_set, cfg.model, preset, device, cfg.runs_dir, command=cfg.command,
                            retrain=cfg.retrain)
    model, ckpt = trained.model.to(device).eval(), trained.path
    test_set = test_set.head(preset.budget.in_test)
    ev = {k: evaluate(model, v.images, seed=cfg.seed, device=device, label=f"{v.name} images")
          for k, v in (("train", train_set.head(preset.budget.in_train)), ("test", test_set))}
    p = quad = None
    if cfg.model in FLOWS:
        p = Moments.of_images(test_set.images)
        try:
            quad = exact_quadratic(model, to_model_space(train_set.images.mean(0, dtype=np.float64)).numpy().ravel())
        except TheoryError as err:
            print(f"note: no exact second order for {name}: {err}", file=sys.stderr)
    return InModel(name, cfg.model, model, Path(ckpt), ev["train"], ev["test"], test_set, p, quad,
                   train_set.nonstandard or test_set.nonstandard)


def row(m: InModel, out: str, match: bool, cfg: Settings) -> dict:
    """One OUT of one IN: bits/dim, the gap and its standard error, and the predicted signs."""
    shape = tuple(m.model.config.shape)
    out_set = sources.open_out(out, shape, ShapeMap(match=match), cfg.options, n_synthetic=len(m.test_set),
                               seed=cfg.seed).head(len(m.test_set))
    ev = evaluate(m.model, out_set.images, seed=cfg.seed, device=cfg.device, label=f"{out_set.name} images")
    dims = m.model.config.dims
    gap = float(m.test.bpd.mean() - ev.bpd.mean())
    stderr = float(np.hypot(*(v.std(ddof=1) / np.sqrt(len(v)) for v in (m.test.bpd, ev.bpd))))
    cf = exact = None
    if m.p is not None:
        q = Moments.of_images(out_set.images)
        if m.model.constant_volume:
            cf = closed_form(m.model, m.p, q)["gap_bpd"]
        if m.quad is not None:
            exact = nats_gap_to_bpd(m.quad.gap(m.p, q)["gap_nats"], dims)
    return {"out": out, "match": match, "label": out_set.name, "plumbing": out_set.nonstandard,
            "data": out_set.provenance(),
            "out_bpd": float(ev.bpd.mean()), "n_out": len(out_set), "gap_bpd": gap, "gap_bpd_stderr": stderr,
            "closed_form_bpd": cf, "exact_second_order_bpd": exact, "per_image_bpd": ev.bpd}


def add_entropy(table: list[dict]) -> None:
    """The entropy decomposition of every row whose OUT is also an IN of the table in the same shape (its model is
    trained anyway): OUT's test bits/dim under its own model estimate H(q) (verify.explain)."""
    own = {t["in"]: t["test_bpd"] for t in table}
    for t in table:
        for r in t["rows"]:
            r["entropy"] = entropy_decomposition(t["test_bpd"], r["out_bpd"], own[r["out"]]) \
                if r["out"] in own and not r["match"] else None


def _entropy_cell(r: dict) -> str:
    e = r.get("entropy")
    return "n/a" if e is None else f"{_num(e['entropy_difference_bpd'], True)} / {_num(e['kl_difference_bpd'], True)}"


def markdown(table: list[dict], cfg: Settings, skipped: list[str], prov: dict, plumbing: bool) -> str:
    plumbing = ["**PLUMBING RUN on non-standard data: not a result.**", ""] if plumbing else []
    lines = [f"# The paper's table of pairs: {cfg.model}, {cfg.preset} preset", "", *plumbing,
             "Gap = bpd(IN-test) − bpd(OUT-test): positive means OUT gets the HIGHER likelihood (the inversion). "
             "The next two columns are the predicted gap's sign (closed form: CV-Glow only; exact second order: "
             "flows). The last is the entropy decomposition gap = [H(IN) − H(OUT)] − [KL(OUT‖p) − KL(IN‖p)] where "
             "OUT's own model is in the table (H(OUT) estimated by it): entropy difference / KL difference, bits/dim; "
             "the inversion happens when the first exceeds the second.", "",
             "| IN | IN-train bpd | IN-test bpd | OUT | OUT-test bpd | gap (bpd) | closed form | exact 2nd order | "
             "entropy / KL (bpd) |",
             "|---|---:|---:|---|---:|---:|:---:|:---:|---:|"]
    for t in table:
        for i, r in enumerate(t["rows"]):
            head = (f"| {t['label']} | {t['train_bpd']:.3f} | {t['test_bpd']:.3f} " if i == 0 else "| | | ")
            lines.append(head + f"| {r['label']} | {_num(r['out_bpd'])} | {_num(r['gap_bpd'], True)} ± "
                         f"{_num(r['gap_bpd_stderr'])} | {_sign(r['closed_form_bpd'])} | "
                         f"{_sign(r['exact_second_order_bpd'])} | {_entropy_cell(r)} |")
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
    p.add_argument("--retrain", action="store_true",
                   help="train from scratch even where shipped weights exist (empirical.shipped)")
    add_data_arguments(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    return p


def tabulate(name: str, cfg: Settings, skipped: list[str], panels: dict, labels: dict) -> dict | None:
    """One IN's entry (its model's bits/dim and every OUT row); None when its data are optional and missing."""
    try:
        m = prepare_in(name, cfg)
    except DataNotFound as err:
        if name not in OPTIONAL:
            raise
        skipped.append(_missing(name, err))
        return None
    label = m.test_set.name.removesuffix("-test")
    entry = {"in": name, "label": label, "checkpoint": portable_path(m.checkpoint), "plumbing": m.nonstandard,
             "data": {"test": m.test_set.provenance()},
             "train_bpd": float(m.train.bpd.mean()), "test_bpd": float(m.test.bpd.mean()),
             "n_train": len(m.train.bpd), "n_test": len(m.test.bpd), "rows": []}
    for o, match in PAIRS[name]:
        try:
            r = row(m, o, match, cfg)
        except DataNotFound as err:
            if o not in OPTIONAL:
                raise
            skipped.append(_missing(f"{name} → {o}", err))
            continue
        title = f"{label} → {r['label'].replace('-test', '')}"
        panels[title] = {"in_test": m.test.bpd, "out_test": r.pop("per_image_bpd")}
        labels[title] = {"in_test": m.test_set.name, "out_test": r["label"]}
        entry["rows"].append(r)
    print(f"{name}: " + ", ".join(f"{r['out']} {r['gap_bpd']:+.3f}" for r in entry["rows"]), file=sys.stderr)
    return entry


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "verify.table", *(sys.argv[1:] if argv is None else argv)])
    start = Provenance(command)
    check_seed(args.seed)
    out = args.out or Path("runs/table") / f"{args.model}-{args.preset}"
    device = distributed.resolve_device(args.device)
    writable_dir(out, "--out")  # before any training
    writable_dir(args.runs_dir / "models", "--runs-dir")
    cfg = Settings(args.model, args.preset, args.seed, data_options(args), args.runs_dir, args.retrain, device, command)
    skipped, panels, labels = [], {}, {}
    table = [e for name in args.in_datasets if (e := tabulate(name, cfg, skipped, panels, labels)) is not None]
    if not panels:
        raise DataNotFound("nothing to tabulate: every pair asked for was skipped (" + "; ".join(skipped) + ")")
    add_entropy(table)
    plumbing = any(t["plumbing"] or any(r["plumbing"] for r in t["rows"]) for t in table)
    prov = provenance(start, device)
    report = markdown(table, cfg, skipped, prov, plumbing)
    with staged(out) as stage:  # the figure, the JSON and the table together, or none of them
        figures.histogram_grid(panels, labels, "bits/dim", stage / "pairs.png")
        write_json(stage / "table.json", {"model": args.model, "preset": args.preset, "plumbing": plumbing,
                                          "table": table, "skipped": skipped, "provenance": prov})
        atomic_write(stage / "table.md", lambda f: f.write(report.encode()))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
