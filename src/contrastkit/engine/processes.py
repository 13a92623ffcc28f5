"""What the estimators and recipes share to train in several processes (``devices=N, strategy="ddp"``).

* :class:`ShareBatches`: the engine's resumable loader, built once the process's rank is known:
  every epoch a shuffle drawn from (seed, epoch), cut into global batches of ``batch_size`` x the
  processes, of which process ``rank`` takes rows ``rank * batch_size`` onwards.
* :class:`GlobalDrawsModule`: the engine's module, plus one thing: before each step it hands the
  method (``method.begin_step(seed, rank, world_size)``) the seed process 0 of the engine's
  per-step reseeding uses -- the same on every process -- so the method can draw its step's
  randomness for the whole global batch on every process and keep its own rows.
* :func:`lightning_strategy`: Lightning's strategy; ``"ddp"`` becomes a ``DDPStrategy`` that does
  not broadcast buffers (their buffers are data, the same on every process) and, where
  asked, finds unused parameters.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import Dataset

from contrastkit.core.errors import ConfigError
from contrastkit.engine import EpochShuffleSampler, batch_loader
from contrastkit.engine.module import EngineModule, step_seed


class ShareBatches(L.LightningDataModule):
    """``dataset`` (whose ``__getitems__`` returns a batch) in global batches of ``batch_size`` x
    the processes, this process's share of each (:class:`~contrastkit.engine.EpochShuffleSampler`)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int):
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def train_dataloader(self):
        sampler = EpochShuffleSampler(len(self.dataset), self.batch_size, self.seed, self.trainer.global_rank,
                                      self.trainer.world_size)
        return batch_loader(self.dataset, sampler)


class GlobalDrawsModule(EngineModule):
    """:class:`~contrastkit.engine.module.EngineModule` that calls ``method.begin_step(seed, rank,
    world_size)`` before each step, ``seed`` being ``step_seed(fit seed, step, 0)`` on every process."""

    def training_step(self, batch, batch_idx):
        self.method.begin_step(step_seed(self.settings.seed, self.global_step, 0), self.global_rank,
                               self.trainer.world_size)
        return super().training_step(batch, batch_idx)


def check_devices(name: str, devices: int) -> None:
    if not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"{name}: devices must be an integer >= 1, got {devices!r}.")


def lightning_strategy(strategy: Any, find_unused_parameters: bool = False) -> Any:
    """Lightning's strategy for ``strategy``; ``"ddp"`` without broadcasting buffers before every step."""
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(broadcast_buffers=False, find_unused_parameters=find_unused_parameters)
    return strategy


__all__ = ["GlobalDrawsModule", "ShareBatches", "check_devices", "lightning_strategy"]
