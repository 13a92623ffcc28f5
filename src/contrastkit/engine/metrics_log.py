"""metrics.csv that survives a resume.

Lightning's CSV logger deletes an existing metrics.csv when it starts, so `--resume` would erase the
history of the run it continues. This logger keeps the file and appends to it (taking over its
header), and :func:`trim_after_step` first drops the rows of the steps a killed run did after its
last checkpoint (the resumed run does them again).

A checkpoint written every N steps is written before Lightning logs the row of its last step, so a
run killed between the two would resume without that row. The checkpoint carries the row
(:func:`pending_step_row`, under ``LAST_STEP_ROW``) and :func:`trim_after_step` writes it back when
the file lacks it. Besides appending rows, the file is only ever replaced whole
(:func:`write_rows_atomically`): by the trim, and when a new column makes Lightning rewrite it.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # A new column (a probe's first epoch, a term logged late) rewrites the whole file. Lightning
        # truncates it in place, so a kill during the rewrite would lose the run's history.
        path = Path(self.metrics_file_path)
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        try:
            write_rows_atomically(path, fieldnames, rows)
        except BaseException:
            self.metrics_keys = sorted(reader.fieldnames or [])  # the file's header still: the next save rewrites
            raise


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


LAST_STEP_ROW = "contrastkit_last_step_row"  # the checkpoint's key for the row of its last step


def pending_step_row(trainer) -> dict | None:
    """The row Lightning will log for the training step that just ended, as its CSV writer gets it;
    None when this step logs none. Called from a callback's ``on_train_batch_end``: Lightning logs
    ``metrics["log"]`` right after those hooks (``_LoggerConnector.update_train_step_metrics``),
    adding the epoch and taking as step the batches stepped before this one's count is added."""
    connector = trainer._logger_connector
    if not trainer.loggers or not connector.should_update_logs:
        return None
    row = convert_tensors_to_scalars(connector.metrics["log"])
    if not row:
        return None
    row.setdefault("epoch", trainer.current_epoch)
    row["step"] = trainer.fit_loop.epoch_loop._batches_that_stepped
    return row


def trim_after_step(path: Path, checkpoint_step: int, last_step_row: dict | None = None) -> None:
    """Drop from a metrics.csv (atomically) the rows a resumed run will write again: those of
    optimiser steps the checkpoint (taken after ``checkpoint_step`` steps) does not hold.

    A training step's row carries the step count before its update (``step < checkpoint_step``
    for the steps the checkpoint holds); an epoch's rows (probe, diagnostics) carry the count at
    the epoch's end, and were logged before the end-of-epoch checkpoint (``step <= checkpoint_step``).
    ``last_step_row`` (the checkpoint's ``LAST_STEP_ROW``) is appended when the file has no row
    of that step: the run was killed after the checkpoint and before Lightning wrote it."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rows = [row for row in reader if _kept(row, checkpoint_step)]
    if last_step_row is not None and not any(_is_training_row(row) and _step(row) == last_step_row["step"]
                                             for row in rows):
        fields = fields + [key for key in last_step_row if key not in fields]
        rows.append(last_step_row)
    write_rows_atomically(path, fields, rows)


def write_rows_atomically(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Replace ``path`` by a CSV of ``rows`` under the header ``fields``: a temporary file beside it, then
    ``os.replace``, so that a kill at any moment leaves the old file or the new one, whole."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics.", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _step(row: dict) -> int:
    return int(float(row["step"]))


def _is_training_row(row: dict) -> bool:
    return bool(row.get("train/loss"))


def _kept(row: dict, checkpoint_step: int) -> bool:
    if not row.get("step"):
        return True
    return _step(row) < checkpoint_step or (_step(row) == checkpoint_step and not _is_training_row(row))
