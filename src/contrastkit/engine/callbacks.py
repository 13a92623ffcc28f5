"""The engine's callbacks: throughput timing and checkpoints (every epoch and every N steps)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from contrastkit.engine.data import ResumableLoader
from contrastkit.engine.metrics_log import LAST_STEP_ROW, pending_step_row


class Throughput(L.Callback):
    """Training samples per second, over the time spent inside training batches (probes, checkpoint
    writing and evaluation excluded), counted across all processes; and the wall time of the
    training epochs (``epoch_seconds``, data loading included, probes excluded)."""

    def __init__(self, batch_size: int | None = None):
        self.batch_size = batch_size  # samples per process per step, when the batch does not say
        self.samples = 0
        self.seconds = 0.0
        self.epoch_seconds = 0.0
        self._started = 0.0
        self._epoch_started = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:  # runs before the probe (callback order)
        self.epoch_seconds += time.perf_counter() - self._epoch_started

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._started
        self.samples += self.batch_size_of(batch) * trainer.world_size

    def batch_size_of(self, batch) -> int:
        if isinstance(batch, dict) and isinstance(batch.get("index"), torch.Tensor):
            return len(batch["index"])
        return self.batch_size or 1

    # Saved in checkpoints (Lightning stores a callback's state_dict), so a resumed run reports the
    # throughput of all its training, not only of the part after the restart.
    def state_dict(self) -> dict[str, float]:
        return {"samples": self.samples, "seconds": self.seconds, "epoch_seconds": self.epoch_seconds}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.samples, self.seconds = int(state["samples"]), float(state["seconds"])
        self.epoch_seconds = float(state.get("epoch_seconds", 0.0))

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


class Checkpointing(L.Callback):
    """Writes ``last.ckpt`` (atomically, through the trainer's checkpoint I/O) at the end of every
    epoch, after the callbacks before it in the list (the probe) have logged, and every
    ``every_steps`` optimiser steps when given. `--resume` continues from it, mid-epoch included."""

    def __init__(self, path: Path, every_steps: int | None = None):
        self.path = Path(path)
        self.every_steps = every_steps
        self._last_step_row: dict | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Resumable loaders store, in each checkpoint, the epoch and the batches of it already
        # trained (a checkpoint written at a batch's end counts that batch).
        def position() -> tuple[int, int]:
            return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready

        loaders = trainer.train_dataloader
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            if isinstance(loader, ResumableLoader):
                loader.position = position
        # Lightning hands a restored run's loader states to the loaders when it first sets up the
        # data, but a schedule over epochs asks for the number of steps (which sets up the data)
        # while the optimisers are configured, before the checkpoint's loop state is restored. It
        # is restored now; the loader's first batch has not been drawn yet.
        trainer.fit_loop._load_combined_loader_states()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self.every_steps or trainer.global_step == 0 or trainer.global_step % self.every_steps:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the last batch of the epoch: the end-of-epoch checkpoint follows, after the probe
        # Lightning writes this step's row after the callbacks' on_train_batch_end: a kill between the
        # two would lose it for good (the resumed run starts at the next step). The checkpoint carries
        # it, and a resume writes it back if metrics.csv lacks it (metrics_log.trim_after_step).
        self._last_step_row = pending_step_row(trainer)
        try:
            self._save(trainer)
        finally:
            self._last_step_row = None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._save(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        if self._last_step_row is not None:
            checkpoint[LAST_STEP_ROW] = self._last_step_row

    def _save(self, trainer: L.Trainer) -> None:
        # The metrics logged so far go to disk first: after a SIGKILL, metrics.csv then holds the
        # rows of every step in the checkpoint but the last one, which the checkpoint carries.
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(self.path)

