"""Evaluation results: per-object rows, global means, and their table / CSV / JSON forms."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from vostool.io.writers import write_text_atomic

METRIC_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectResult:
    """Scores of one object of one sequence over its evaluated frames (all but first and last)."""

    sequence: str
    object_id: int
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float
    n_frames: int

    @property
    def name(self) -> str:
        """The official tool's row label, ``<sequence>_<object id>``."""
        return f"{self.sequence}_{self.object_id}"

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2

    def metrics(self) -> dict[str, float]:
        """The seven values under the same keys as :attr:`EvalReport.global_metrics`."""
        return {
            "J&F-Mean": self.jf_mean,
            "J-Mean": self.j_mean,
            "J-Recall": self.j_recall,
            "J-Decay": self.j_decay,
            "F-Mean": self.f_mean,
            "F-Recall": self.f_recall,
            "F-Decay": self.f_decay,
        }


def global_metrics(per_object: list[ObjectResult]) -> dict[str, float]:
    """Means over objects (not sequences), J&F-Mean = (mean J-Mean + mean F-Mean) / 2, as officially."""
    if not per_object:
        raise ValueError("no objects were evaluated")
    columns = {
        "J-Mean": [o.j_mean for o in per_object],
        "J-Recall": [o.j_recall for o in per_object],
        "J-Decay": [o.j_decay for o in per_object],
        "F-Mean": [o.f_mean for o in per_object],
        "F-Recall": [o.f_recall for o in per_object],
        "F-Decay": [o.f_decay for o in per_object],
    }
    means = {key: float(np.mean(values)) for key, values in columns.items()}
    return {"J&F-Mean": (means["J-Mean"] + means["F-Mean"]) / 2.0, **means}


@dataclass(frozen=True)
class EvalReport:
    """Result of :func:`vostool.eval.evaluate_davis`."""

    global_metrics: dict[str, float]
    per_object: list[ObjectResult]
    sequences: list[str]

    @classmethod
    def from_objects(cls, per_object: list[ObjectResult], sequences: list[str]) -> "EvalReport":
        return cls(global_metrics=global_metrics(per_object), per_object=per_object, sequences=sequences)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) with the global values and one entry per object."""
        return {
            "task": "semi-supervised",
            "sequences": list(self.sequences),
            "global": dict(self.global_metrics),
            "per_object": [
                {"sequence": o.sequence, "object": o.object_id, "frames": o.n_frames, **o.metrics()}
                for o in self.per_object
            ],
        }

    def to_csv(self, path: str | Path) -> None:
        """Write a global row then one row per object, full precision, atomically."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["Sequence", "Object", *METRIC_KEYS])
        writer.writerow(["GLOBAL", "", *(repr(self.global_metrics[k]) for k in METRIC_KEYS)])
        for o in self.per_object:
            values = o.metrics()
            writer.writerow([o.sequence, o.object_id, *(repr(values[k]) for k in METRIC_KEYS)])
        write_text_atomic(path, buffer.getvalue())

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``, atomically."""
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    def render(self, console: Console) -> None:
        console.print(report_table(self))


def report_table(report: EvalReport) -> Table:
    """A rich table: the global row first, then one row per sequence object."""
    table = Table(title="DAVIS 2017 semi-supervised (J&F)", title_justify="left")
    table.add_column("Sequence")
    table.add_column("Obj", justify="right")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    table.add_row(
        "Global", "", *(f"{report.global_metrics[k]:.4f}" for k in METRIC_KEYS), style="bold", end_section=True
    )
    for o in report.per_object:
        values = o.metrics()
        table.add_row(o.sequence, str(o.object_id), *(f"{values[k]:.4f}" for k in METRIC_KEYS))
    return table
