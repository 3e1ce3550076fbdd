"""What a comparison returns, typed: the gap, the predictions, the assumption ledger and the detection, each a
dataclass with ``to_dict()`` (results.json holds the dicts); ``Provenance`` is who asked and when; ``Result.write``
renders the report and figures without changing the result."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from empirical.io.atomic import atomic_write, staged
from empirical.io.provenance import git_commit, portable_path
from empirical.models.evaluation import part_key
from verify.report import terminal_summary, write_report


@dataclass(frozen=True)
class Provenance:
    """Who produced a result: the command (``python -m …``, or a description of the Python call), when it started
    (ISO time and ``time.time()``), where the model came from (None: said by the model itself) and the commit."""

    command: str = "verify.api.compare (Python)"
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    t0: float = field(default_factory=time.time)
    model_source: str | None = None
    commit: str = field(default_factory=lambda: git_commit())  # read at the start: a later checkout is not named


@dataclass(frozen=True)
class Gap:
    """bpd(IN-test) − bpd(OUT-test) with its standard error, and the same gap in nats per image (OUT − IN of log p):
    positive means OUT gets the higher likelihood."""

    bpd: float
    bpd_stderr: float
    nats: float


@dataclass(frozen=True)
class Prediction:
    """One prediction of the gap (closed form, exact second order, averaged curvature, input complexity)."""

    gap_nats: float
    gap_bpd: float
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Prediction:
        return cls(d["gap_nats"], d["gap_bpd"], {k: v for k, v in d.items() if k not in ("gap_nats", "gap_bpd")})

    def to_dict(self) -> dict:
        return {"gap_nats": self.gap_nats, "gap_bpd": self.gap_bpd, **self.extra}


@dataclass(frozen=True)
class Ledger:
    """The assumption ledger: one row per step from the measured gap to the paper's formula, what it says in one
    paragraph, and which step moves the number most (``steps``: moves_most, closest, moves_most_derived)."""

    rows: list[dict]
    summary: str
    steps: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Ledger:
        return cls(d["rows"], d["summary"], {k: v for k, v in d.items() if k not in ("rows", "summary")})

    def to_dict(self) -> dict:
        return {"rows": self.rows, **self.steps, "summary": self.summary}


@dataclass(frozen=True)
class ScoreMetrics:
    """How one score separates OUT-test from IN-test (OUT positive)."""

    auroc: float
    auroc_ci95: list[float]
    auprc: float
    fpr95: float
    fpr80: float
    n_in: int
    n_out: int


@dataclass(frozen=True)
class Detection:
    """Every score's metrics (the recommended first), the settings they were fitted with, the batch typicality test
    and the ensemble's gap."""

    scores: dict[str, ScoreMetrics]
    settings: dict
    batch_typicality: list[dict]
    ensemble: dict | None

    @property
    def recommended(self) -> str:
        return self.settings["recommended"]

    @classmethod
    def from_dict(cls, d: dict) -> Detection:
        return cls({k: ScoreMetrics(**v) for k, v in d["scores"].items()}, d["settings"], d["batch_typicality"],
                   d["ensemble"])

    def to_dict(self) -> dict:
        return {"settings": self.settings, "scores": {k: asdict(v) for k, v in self.scores.items()},
                "batch_typicality": self.batch_typicality, "ensemble": self.ensemble}

    def table(self) -> str:
        """The scores as a markdown table (AUROC, AUPRC, FPR at 95% TPR)."""
        rows = ["| score | AUROC | AUPRC | FPR95 |", "|---|---:|---:|---:|"]
        return "\n".join(rows + [f"| {k} | {v.auroc:.3f} | {v.auprc:.3f} | {v.fpr95:.3f} |"
                                 for k, v in self.scores.items()])


@dataclass(frozen=True)
class Result:
    """What ``compare`` found. ``results`` is what results.json holds (plain data); the typed views read it."""

    results: dict
    measurement: object  # verify.api.Measurement: the per-image evaluations
    scores: dict[str, tuple[np.ndarray, np.ndarray]]  # per-image detection scores (IN-test, OUT-test)

    @property
    def gap(self) -> Gap:
        r = self.results
        return Gap(r["gap_bpd"], r["gap_bpd_stderr"], r["gap_nats"])

    @property
    def predictions(self) -> dict[str, Prediction | None]:
        return {k: None if v is None else Prediction.from_dict(v) for k, v in self.results["prediction"].items()
                if k != "note"}

    @property
    def ledger(self) -> Ledger | None:
        return None if self.results["ledger"] is None else Ledger.from_dict(self.results["ledger"])

    @property
    def detection(self) -> Detection | None:
        return None if self.results["detection"] is None else Detection.from_dict(self.results["detection"])

    @property
    def verdict(self) -> str:
        return self.results["verdict"]

    def to_dict(self) -> dict:
        """results.json's content (a copy)."""
        return dict(self.results)

    def detection_table(self) -> str:
        """The detection scores as a markdown table (AUROC, AUPRC, FPR at 95% TPR)."""
        det = self.detection
        return det.table() if det else "(no detection)"

    def per_image(self) -> dict[str, np.ndarray]:
        """What per_image.npz holds: each set's log p (nats) and parts, and every detection score per image
        (``score_NAME_in_test``, ``score_NAME_out_test``; higher = more OOD)."""
        m = self.measurement
        return {**{f"{k}_log_px_nats": e.log_px for k, e in m.evals.items()},
                **{f"{k}_{part_key(p)}": v for k, e in m.evals.items() for p, v in e.parts.items()},
                **{f"score_{name}_{s}": v for name, pair in self.scores.items()
                   for s, v in zip(("in_test", "out_test"), pair, strict=True)}}

    def write(self, folder: str | Path) -> dict:
        """report.md, results.json, per_image.npz and the figures into ``folder``, all or none (a failure leaves the
        folder as it was); returns what results.json holds. The result itself is not changed."""
        from verify.figures import comparison_figures

        out = Path(folder)
        with staged(out) as stage:
            atomic_write(stage / "per_image.npz", lambda f: np.savez_compressed(f, **self.per_image()))
            paths = comparison_figures(self.results, self.measurement, self.scores, stage)
            written = {**self.results, "figures": [p.name for p in paths], "out_dir": portable_path(out)}
            write_report(written, stage)
        return written

    def summary(self, out_dir: str | None = None) -> str:
        """The terminal summary: bits/dim table, verdict, predictions, ledger and detection in a few lines."""
        return terminal_summary({**self.results, "out_dir": out_dir or "(not written)"})
