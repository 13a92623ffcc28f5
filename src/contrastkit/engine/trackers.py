"""The Lightning loggers behind ``--logger``: every tracker writes inside the run folder, offline.

==============  ==========================================  =====================================
tracker         where it writes                             read it with
==============  ==========================================  =====================================
csv (always)    ``metrics.csv``                             the report, pandas, any spreadsheet
tensorboard     ``tensorboard/events.out.tfevents.*``       ``tensorboard --logdir RUN/tensorboard``
mlflow          ``mlruns/`` (MLflow's local file store)     ``mlflow ui --backend-store-uri RUN/mlruns``
wandb           ``wandb/offline-run-*/`` (offline mode)     ``wandb sync RUN/wandb/offline-run-*``
==============  ==========================================  =====================================

All of them receive the same metrics dict from Lightning, so a metric has one name everywhere
(``train/loss``, ``train/lr``, ``elapsed_s``, ``epoch`` for every modality; the probes' names where
a modality has probes). TensorBoard's extra ``hp_metric`` is turned off so that its tags are
exactly the CSV's columns (less ``step``, which every tracker keeps as its step axis).

A resumed run continues the same MLflow and W&B runs: their ids are kept in ``trackers.json`` in
the run folder, written when the run first starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from pathlib import Path

from lightning.pytorch.loggers import Logger

from contrastkit.core.trackers import check_trackers
from contrastkit.engine.metrics_log import ResumableCSVLogger
from contrastkit.engine.run_folder import is_first_process

EXPERIMENT = "contrastkit"  # the MLflow experiment and the W&B project of every run
IDS_FILE = "trackers.json"
TENSORBOARD_FOLDER = "tensorboard"
MLFLOW_FOLDER = "mlruns"


def build_loggers(names: tuple[str, ...], run_dir: Path, flush_every_steps: int = 10) -> list[Logger]:
    """The loggers of ``names`` (csv first) writing into ``run_dir``."""
    run_dir = Path(run_dir)
    ids = _saved_ids(run_dir)
    loggers: list[Logger] = []
    for name in check_trackers(names):
        if name == "csv":
            loggers.append(ResumableCSVLogger(run_dir, name="", version="", flush_logs_every_n_steps=flush_every_steps))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir, name=TENSORBOARD_FOLDER, version="", default_hp_metric=False))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked; a database
            # store needs SQLAlchemy, which mlflow-skinny lacks. The file store is what runs offline here.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            loggers.append(MLFlowLogger(experiment_name=EXPERIMENT, run_name=run_dir.name,
                                        tracking_uri=(run_dir / MLFLOW_FOLDER).resolve().as_uri(),
                                        run_id=ids.get("mlflow")))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            ids.setdefault("wandb", secrets.token_hex(4))
            loggers.append(WandbLogger(name=run_dir.name, save_dir=str(run_dir), offline=True, project=EXPERIMENT,
                                       id=ids["wandb"], resume="allow", settings=_quiet_wandb()))
    if is_first_process() and len(loggers) > 1:
        _save_ids(run_dir, loggers, ids)
    return loggers


def log_settings(loggers: list[Logger], settings) -> None:
    """The run's training settings as the trackers' parameters (not the CSV's: its folder has config.yaml)."""
    values = {key: value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
              for key, value in dataclasses.asdict(settings).items()}
    for logger in loggers:
        if not isinstance(logger, ResumableCSVLogger):
            logger.log_hyperparams(values)


def finish_trackers(loggers: list[Logger]) -> None:
    """End the W&B run (Lightning leaves it open, and a later run in the same process would log into
    it); MLflow's run is ended by Lightning's own ``finalize``."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None and is_first_process():
            logger._experiment.finish()
            logger._experiment = None


def _quiet_wandb():
    import wandb

    # No network at any time: offline, no system-metrics sampler (it probes cloud metadata endpoints),
    # no console capture, no banner.
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.Settings(mode="offline", silent=True, console="off", x_disable_stats=True, disable_git=True)


def _saved_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_ids(run_dir: Path, loggers: list[Logger], ids: dict[str, str]) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            ids["mlflow"] = logger.run_id  # creates the MLflow run now, so that a resume finds it
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{IDS_FILE}.tmp"
    tmp.write_text(json.dumps(ids, indent=2) + "\n")
    os.replace(tmp, run_dir / IDS_FILE)
