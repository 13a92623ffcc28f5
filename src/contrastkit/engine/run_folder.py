"""The run folder every modality writes, and the rules that keep it safe.

::

    config.yaml             the resolved configuration (what --resume and `embed` read back)
    checkpoints/last.ckpt   written atomically every epoch and every --checkpoint-every-steps steps
    metrics.csv             one row per logged step, epoch-level rows (probes, diagnostics) between
    summary.json            the figures of the run
    report.md + plots/      the report
    <the trained encoder in an exportable form: encoder/ (text), embeddings.npy (images), ...>
    split.json              where a run embeds its training and held-out samples together (image, audio and
                            tabular runs): which rows of embeddings.npy are which (:func:`write_split`)

Nothing is written until the data has loaded and the method has been built, and an existing run is
never overwritten: only ``--resume`` reopens it. One process at a time trains in a folder: the first
process holds an exclusive lock on ``.contrastkit.lock`` from the moment it takes the folder until its
training ends (:func:`claim_run_dir`; the operating system drops the lock when the process ends, even
killed, so a crashed run can always be resumed). Before its first checkpoint a run's folder holds
only config.yaml and metrics.csv, which a second run would otherwise take for an abandoned start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; folders are then not guarded against a second process
    fcntl = None

from contrastkit.core.errors import ConfigError

RUN_DIR_ENV = "CONTRASTKIT_RUN_DIR"  # set by rank 0 so that DDP child processes use the same directory
CHECKPOINT = Path("checkpoints") / "last.ckpt"
LOCK_FILE = ".contrastkit.lock"

_held_locks: dict[Path, int] = {}  # run folder -> the open lock file through which this process holds it


def claim_run_dir(run_dir: Path) -> None:
    """Take ``run_dir`` for this process (first process only): an exclusive ``flock`` on its lock file,
    kept until :func:`release_run_dir`. Raises ConfigError, naming the holder's pid, while another
    process holds it. Claiming a folder this process already holds does nothing."""
    key = Path(run_dir).resolve()
    if fcntl is None or not is_first_process() or key in _held_locks:
        return
    key.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip()
        os.close(descriptor)
        raise ConfigError(
            f"Another process{f' (pid {holder})' if holder else ''} is training in the run directory '{run_dir}'; "
            f"two runs in one folder would write over each other's checkpoint and log. Wait for it to end (then "
            f"--resume continues it), or choose another --out."
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, str(os.getpid()).encode())
    _held_locks[key] = descriptor


def release_run_dir(run_dir: Path) -> None:
    """Let other processes take ``run_dir`` again (the end of its training)."""
    descriptor = _held_locks.pop(Path(run_dir).resolve(), None)
    if descriptor is not None:
        os.close(descriptor)  # closing the only descriptor of the open file drops its flock


def is_first_process() -> bool:
    """Rank 0 of node 0, also before Lightning has launched (or in a launched DDP child)."""
    return int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0")) == 0


def resolve_run_dir(out: str | os.PathLike | None, resume: bool, default_name: str) -> Path:
    """The run directory; refuse to reuse one that holds a run unless resuming (nothing is written).

    ``default_name`` names the folder under ``runs/`` when ``out`` is None."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and not is_first_process():
        return Path(inherited)  # a DDP child process: rank 0 chose the directory
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out: the run directory to continue.")
        run_dir = Path("runs") / f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        run_dir = Path(out)
    checkpoint = run_dir / CHECKPOINT
    if run_dir.is_dir():
        claim_run_dir(run_dir)  # before anything in it is read as abandoned (the aborted metrics.csv below)
    if resume:
        if not checkpoint.is_file():
            raise ConfigError(
                f"--resume: no checkpoint at '{checkpoint}'. A run directory holds checkpoints/last.ckpt once "
                f"its first epoch (or its first --checkpoint-every-steps steps) has finished; start the run "
                f"again without --resume."
            )
    elif checkpoint.exists() or (run_dir / "summary.json").exists():
        raise ConfigError(
            f"The run directory '{run_dir}' already holds a run; nothing in it is overwritten. "
            f"Pass --resume to continue it, or choose another --out."
        )
    elif is_first_process() and (run_dir / "metrics.csv").exists():
        # A run that died before its first checkpoint cannot be resumed; it starts again here, and
        # the little it logged is kept beside the new log.
        (run_dir / "metrics.csv").rename(run_dir / f"metrics-aborted-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    return run_dir


def open_run_dir(run_dir: Path, config_yaml: str) -> None:
    """Create the run directory and write its config.yaml (rank 0); DDP children inherit the path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(run_dir)
    if is_first_process():
        (run_dir / "config.yaml").write_text(config_yaml)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))


SPLIT_FILE = "split.json"


def write_split(run_dir: Path, train, holdout, **facts) -> None:
    """``split.json``: which rows of the run's ``embeddings.npy`` are its training part and which its
    held-out part, so that ``select --run``, ``evaluate --task semi-supervised --run`` and the report
    keep the held-out rows unseen. A part is written as ``[start, stop]`` where its rows are one
    ascending run of numbers (image runs embed the training part first), else as ``{"rows": [...]}``
    (audio and tabular runs keep their data's order). ``facts`` (e.g. ``held_out``: which part of the
    data was held out) are written beside them."""
    import numpy as np

    def part(rows) -> list | dict:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        start = int(rows[0]) if len(rows) else 0
        if np.array_equal(rows, np.arange(start, start + len(rows))):
            return [start, start + len(rows)]
        return {"rows": rows.tolist()}

    (Path(run_dir) / SPLIT_FILE).write_text(json.dumps({"train": part(train), "holdout": part(holdout), **facts}))


def read_split(run_dir: Path, rows: int | None = None):
    """``(training rows, held-out rows)`` of ``embeddings.npy`` as int64 arrays, from the run's
    ``split.json`` (either form of :func:`write_split`; an audio run written before it kept its
    parts in ``parts.json``, ``train`` and ``evaluated``); ``None`` where the run has neither. With
    ``rows`` (the length of ``embeddings.npy``), a part naming a row outside it is a DataError."""
    import numpy as np

    from contrastkit.core.errors import DataError

    file = Path(run_dir) / SPLIT_FILE
    legacy = Path(run_dir) / "parts.json"
    try:
        if file.is_file():
            split = json.loads(file.read_text())
            parts = split["train"], split["holdout"]
        elif legacy.is_file():
            file, split = legacy, json.loads(legacy.read_text())
            parts = {"rows": split["train"]}, {"rows": split["evaluated"]}
        else:
            return None
        train, holdout = (np.asarray(part["rows"], dtype=np.int64) if isinstance(part, dict)
                          else np.arange(*part, dtype=np.int64) for part in parts)
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"'{file}' does not name a run's training and held-out rows ({error!r}); it is written "
                        f"by 'contrastkit fit' with the run's embeddings.npy.") from None
    for name, part in (("training", train), ("held-out", holdout)):
        if rows is not None and len(part) and not (part.min() >= 0 and part.max() < rows):
            raise DataError(f"'{file}' names {name} rows outside the {rows} rows of the run's embeddings.npy; "
                            f"the file belongs to another run.")
    return train, holdout


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


@contextlib.contextmanager
def estimator_run_dir(run_dir: Path | None, name: str, description: dict) -> Iterator[tuple[Path, bool]]:
    """The folder an estimator's ``fit`` trains in: ``run_dir`` (already resolved, see
    :func:`resolve_run_dir`), opened with ``description`` as its config.yaml; or, when None, a
    temporary folder that is removed afterwards. Yields ``(folder, kept)``."""
    if run_dir is not None:
        open_run_dir(run_dir, yaml.safe_dump(description, sort_keys=False))
        yield run_dir, True
        return
    folder = Path(tempfile.mkdtemp(prefix=f"contrastkit-{name}-"))
    try:
        yield folder, False
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_estimator_run(run_dir: Path, result, summary: dict, weights: dict) -> None:
    """summary.json (``summary`` plus the engine's step count, timing and skipped steps), the
    trained weights as ``model.safetensors`` and report.md (facts and loss curve), in a kept
    estimator run folder."""
    from safetensors.torch import save_file

    write_summary(run_dir, {
        **summary,
        "steps": result.trainer.global_step,
        "seconds": round(result.throughput.epoch_seconds, 2),
        "samples_per_second": round(result.throughput.samples_per_second, 2),
        "skipped_steps": result.module.skipped_steps,
    })
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, run_dir / "model.safetensors")
    from contrastkit.report import write_report  # the report reads the folder; imported only here

    write_report(run_dir)
