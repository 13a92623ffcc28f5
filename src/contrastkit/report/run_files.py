"""Reading the files of a run directory that the report uses.

``metrics.csv`` is written by Lightning's ``CSVLogger``: a header with ``epoch``, ``step`` and one
column per logged name (``train/loss``, ``probe/knn_top1``, ``diag/uniformity``, ...), and one
row per logging call in which only the names logged by that call have a value (sparse rows).
Names logged both per step and per epoch get the suffixes ``_step`` / ``_epoch``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.errors import DataError

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
EMBEDDINGS_FILE = "embeddings.npy"
LABELS_FILE = "labels.npy"


@dataclass(frozen=True)
class MetricsLog:
    """The non-empty cells of metrics.csv: ``rows[i][column] = float value``."""

    columns: list[str]
    rows: list[dict[str, float]]

    def series(self, column: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
        """(x values, column values) over the rows where both are present, in file order."""
        pairs = [(row[x], row[column]) for row in self.rows if x in row and column in row]
        if not pairs:
            return np.empty(0), np.empty(0)
        xs, ys = zip(*pairs, strict=True)
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    def per_epoch(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, value) with the last value logged in each epoch, by increasing epoch."""
        last: dict[float, float] = {}
        for epoch, value in zip(*self.series(column, x="epoch"), strict=True):
            last[epoch] = value
        epochs = np.asarray(sorted(last))
        return epochs, np.asarray([last[e] for e in epochs])

    def columns_with_prefix(self, prefix: str) -> list[str]:
        return [c for c in self.columns if c.startswith(prefix)]


def read_metrics_csv(path: Path) -> MetricsLog:
    """Parse a CSVLogger metrics file with the csv module, dropping empty and non-numeric cells."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = [_numeric_cells(row) for row in reader]
    except OSError as error:
        raise DataError(f"cannot read the metrics file {path}: {error}.") from error
    return MetricsLog(columns=columns, rows=[row for row in rows if row])


def read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(
            f"cannot read the run summary {path}: {error}. It should be the JSON object the "
            f"trainer writes at the end of a run."
        ) from error
    if not isinstance(summary, dict):
        raise DataError(
            f"the run summary {path} must hold a JSON object, not {type(summary).__name__}."
        )
    return summary


def read_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the array file {path}: {error}.") from error


def _numeric_cells(row: dict[str, str | None]) -> dict[str, float]:
    cells = {}
    for column, text in row.items():
        if column is None or text is None or text.strip() == "":
            continue
        try:
            value = float(text)
        except ValueError:
            continue
        if math.isfinite(value):
            cells[column] = value
    return cells
