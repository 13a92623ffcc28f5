"""Checkpoints that are never left half-written.

A checkpoint is first written to a temporary file in the same directory, flushed and fsync'ed, then
moved over the target with ``os.replace`` (atomic on POSIX within one file system). A crash, a
SIGKILL or a full disk during the write leaves the previous checkpoint intact; the error of a full
disk is re-raised as a :class:`TrainingError` that says so.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from contrastkit.core.errors import TrainingError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A process killed during an earlier write left its temporary file; only one process writes.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            previous = "the previous checkpoint there is intact" if path.exists() else "no earlier checkpoint existed"
            raise TrainingError(
                f"The disk is full: writing checkpoint '{path}' failed ({exc.strerror}); {previous}. "
                f"Free space on that file system (or choose another --out) and continue with --resume."
            ) from None
        raise
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable across a power loss; harmless where unsupported.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O with an atomic write."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)
