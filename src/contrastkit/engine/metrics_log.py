"""metrics.csv that survives a resume.

Lightning's CSV logger deletes an existing metrics.csv when it starts, so `--resume` would erase the
history of the run it continues. This logger keeps the file and appends to it (taking over its
header), and :func:`trim_after_step` first drops the rows of the steps a killed run did after its
last checkpoint (the resumed run does them again).
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


def trim_after_step(path: Path, checkpoint_step: int) -> None:
    """Drop from a metrics.csv (atomically) the rows a resumed run will write again: those of
    optimiser steps the checkpoint (taken after ``checkpoint_step`` steps) does not hold.

    A training step's row carries the step count before its update (``step < checkpoint_step``
    for the steps the checkpoint holds); an epoch's rows (probe, diagnostics) carry the count at
    the epoch's end, and were logged before the end-of-epoch checkpoint (``step <= checkpoint_step``)."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rows = [row for row in reader if _kept(row, checkpoint_step)]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics.", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _kept(row: dict, checkpoint_step: int) -> bool:
    if not row.get("step"):
        return True
    step = int(float(row["step"]))
    is_training_step = bool(row.get("train/loss"))
    return step < checkpoint_step or (step == checkpoint_step and not is_training_step)
