"""metrics.csv that survives a resume.

Lightning's CSV logger deletes an existing metrics.csv when it starts, so `--resume` would erase the
history of the run it continues. This logger keeps the file and appends to it (taking over its
header), and :func:`trim_after_epoch` first drops the rows of the epoch a killed run did not finish
(the resumed run repeats that epoch from its last checkpoint).
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def trim_after_epoch(path: Path, last_kept_epoch: int) -> None:
    """Drop the rows of epochs after ``last_kept_epoch`` from a metrics.csv (atomically)."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rows = [row for row in reader if not row.get("epoch") or int(float(row["epoch"])) <= last_kept_epoch]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics.", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
