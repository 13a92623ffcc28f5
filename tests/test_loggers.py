"""`--logger csv|tensorboard|mlflow|wandb`: every tracker holds what metrics.csv holds (issue 27).

One short real run per modality logs to every tracker at once; each tracker's files are read back
with that tracker's own reader (TensorBoard's EventAccumulator, MLflow's client on its file store,
W&B's offline transaction log read record by record) and must hold the same (metric, step, value)
rows as metrics.csv, under the same names; the engine's metrics have one name in every modality.
"""

from __future__ import annotations

import csv
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.core.trackers import logging_to
from tests.conftest import module_available
from tests.test_fit_command import COMMON, case

pytestmark = pytest.mark.skipif(
    not all(module_available(m) for m in ("tensorboard", "mlflow", "wandb")),
    reason="needs the trackers extra (tensorboard, mlflow-skinny, wandb)")

TRACKERS = ["--logger", "tensorboard", "--logger", "mlflow", "--logger", "wandb"]
ENGINE_METRICS = {"train/loss", "train/lr", "epoch"}  # logged by the engine for every modality


def csv_rows(run: Path) -> Counter:
    """(name, step, float32 value) of every filled cell of metrics.csv (``step`` is the axis)."""
    rows = Counter()
    with open(run / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(float(row["step"]))
            for name, value in row.items():
                if name != "step" and value != "":
                    rows[(name, step, np.float32(float(value)))] += 1
    return rows


def tensorboard_rows(run: Path) -> Counter:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return Counter((tag, event.step, np.float32(event.value))
                   for tag in events.Tags()["scalars"] for event in events.Scalars(tag))


def mlflow_rows(run: Path) -> Counter:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("contrastkit")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_id == json.loads((run / "trackers.json").read_text())["mlflow"]
    return Counter((name, metric.step, np.float32(metric.value)) for name in mlflow_run.data.metrics
                   for metric in client.get_metric_history(mlflow_run.info.run_id, name))


def wandb_history(run: Path) -> list[dict]:
    """The history rows of the offline run's ``run-<id>.wandb``: W&B's transaction log is LevelDB's
    log format (a 7-byte file header, 32 KiB blocks, records of header <crc32 u32, length u16,
    type u8> split FULL/FIRST/MIDDLE/LAST across blocks), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data, block, position = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, pending = [], b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is zero padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: the record is complete
            records.append(pending)
            pending = b""
    history = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return history


def wandb_rows(run: Path) -> Counter:
    rows = Counter()
    for entry in wandb_history(run):
        step = entry.pop("trainer/global_step")
        for name, value in entry.items():
            if not name.startswith("_"):  # W&B's own _step, _runtime, _timestamp
                rows[(name, step, np.float32(value))] += 1
    return rows


@pytest.mark.parametrize("modality", ["image", "tabular", "timeseries"])
def test_every_tracker_holds_what_metrics_csv_holds(modality, tmp_path, monkeypatch, capsys):
    method, extra = case(modality, tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--method", method, "--modality", modality, *extra, *COMMON, *TRACKERS,
                 "--out", str(out)]) == 0, \
        capsys.readouterr().err
    expected = csv_rows(out)
    names = {name for name, _, _ in expected}
    assert ENGINE_METRICS <= names, names
    assert tensorboard_rows(out) == expected
    assert mlflow_rows(out) == expected
    assert wandb_rows(out) == expected


def test_resume_continues_the_same_mlflow_run(tmp_path, monkeypatch):
    method, extra = case("tabular", tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    options = [*extra, "--batch-size", "8", "--logger", "mlflow", "--out", str(out)]
    assert main(["fit", "--method", method, *options, "--max-epochs", "1"]) == 0
    steps_first = {step for name, step, _ in csv_rows(out) if name == "train/loss"}
    assert main(["fit", "--resume", "--out", str(out), "--max-epochs", "2", "--logger", "mlflow"]) == 0
    losses = [row for row in mlflow_rows(out).elements() if row[0] == "train/loss"]  # one MLflow run
    assert {step for _, step, _ in losses} == {step for name, step, _ in csv_rows(out) if name == "train/loss"}
    assert len(steps_first) < len(losses)


def test_unknown_tracker_is_an_error_with_the_closest_name(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean: mlflow"):
        main_raising(["fit", "--method", "scarf", "--data", "t.csv", "--logger", "mlfow"])


def main_raising(argv):
    from contrastkit.fit_command import parse_fit

    return parse_fit(argv[1:])


def test_trackers_reach_settings_made_inside_the_block():
    from contrastkit.engine.settings import TrainSettings

    assert TrainSettings(max_steps=1).loggers == ("csv",)
    with logging_to(["wandb", "tensorboard", "wandb"]):
        assert TrainSettings(max_steps=1).loggers == ("csv", "wandb", "tensorboard")
    assert TrainSettings(max_steps=1, loggers=("mlflow",)).loggers == ("csv", "mlflow")
