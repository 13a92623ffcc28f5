"""TS2Vec's pretraining as an engine method: the training step, the batches, the epoch losses.

:class:`~contrastkit.modalities.timeseries.ts2vec.TS2Vec` trains through :func:`contrastkit.engine.train` with
these pieces; they follow the official implementation (github.com/zhihanyue/ts2vec, ``fit``):
every epoch a fresh shuffle cut into full batches, two overlapping crops of each batch encoded
with the binomial timestamp mask, the hierarchical contrastive loss, and the SWA running
average of the weights updated after every optimiser step.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset

from contrastkit.modalities.timeseries.encoders import DilatedConvEncoder
from contrastkit.engine import EpochShuffleSampler, batch_loader
from contrastkit.objectives.hierarchical import hierarchical_contrastive_loss
from contrastkit.modalities.timeseries.views import sample_overlapping_crops, take_crops

__all__ = ["EpochLosses", "StopAfterSteps", "TS2VecMethod", "TrainingSeries", "TrainingSeriesData"]


class TS2VecMethod(nn.Module):
    """TS2Vec's training step as an engine method (:mod:`contrastkit.engine.module`).

    ``training_loss(batch)``, batch (B, C, T): a random window of ``max_train_length`` steps
    when the series are longer, two overlapping crops (:func:`sample_overlapping_crops`), both
    encoded with the binomial timestamp mask (the encoder draws it in training mode), and the
    hierarchical contrastive loss on the overlap. ``after_optimizer_step`` adds the new weights
    to the SWA running average. Every random draw comes from torch's global generator, which
    the engine reseeds before each step.
    """

    def __init__(self, encoder: DilatedConvEncoder, averaged_encoder: AveragedModel,
                 max_train_length: int | None, temporal_unit: int):
        super().__init__()
        self.encoder = encoder
        self.averaged_encoder = averaged_encoder
        self.max_train_length = max_train_length
        self.temporal_unit = temporal_unit

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if self.max_train_length is not None and x.shape[2] > self.max_train_length:
            start = int(torch.randint(x.shape[2] - self.max_train_length + 1, ()))
            x = x[:, :, start : start + self.max_train_length]
        crops = sample_overlapping_crops(x.shape[0], x.shape[2], min_overlap=2 ** (self.temporal_unit + 1))
        first, second = take_crops(x, crops)
        z1 = crops.overlap_of_first(self.encoder(first))
        z2 = crops.overlap_of_second(self.encoder(second))
        return hierarchical_contrastive_loss(z1, z2, temporal_unit=self.temporal_unit), {}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.averaged_encoder.update_parameters(self.encoder)


class TrainingSeries(Dataset):
    """The prepared training series (N, C, T); a batch is the series at a list of positions."""

    def __init__(self, series: torch.Tensor):
        self.series = series

    def __len__(self) -> int:
        return len(self.series)

    def __getitems__(self, positions: list[int]) -> torch.Tensor:
        return self.series[torch.as_tensor(positions)]


class TrainingSeriesData(L.LightningDataModule):
    """The official TS2Vec batches: every epoch a fresh shuffle, a pure function of (seed, epoch),
    cut into batches of ``batch_size`` with the incomplete last one dropped; with several
    processes each takes its slice of every global batch."""

    def __init__(self, series: torch.Tensor, batch_size: int, seed: int):
        super().__init__()
        self.series, self.batch_size, self.seed = series, batch_size, seed

    def train_dataloader(self):
        sampler = EpochShuffleSampler(len(self.series), self.batch_size, self.seed, self.trainer.global_rank,
                                      self.trainer.world_size)
        return batch_loader(TrainingSeries(self.series), sampler)


class EpochLosses(L.Callback):
    """The mean training loss of every epoch (over the processes), logged as ``train/epoch_loss``.

    ``history`` holds one value per epoch that trained at least one step, the last one partial
    when the step limit ended the run inside it. The per-epoch sums are saved in every
    checkpoint, so a run resumed in the middle of an epoch reports what the uninterrupted run
    would."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.sums: dict[int, float] = {}  # epoch -> sum of this process's step losses
        self.steps: dict[int, int] = {}  # epoch -> steps this process trained
        self.means: dict[int, float] = {}  # epoch -> mean over its steps and the processes

    @property
    def history(self) -> list[float]:
        return [self.means[epoch] for epoch in sorted(self.means)]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:  # None: a skipped step (nan_policy "skip")
            epoch = trainer.current_epoch
            self.sums[epoch] = self.sums.get(epoch, 0.0) + float(loss)
            self.steps[epoch] = self.steps.get(epoch, 0) + 1

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch
        if not self.steps.get(epoch):
            return
        mean = torch.tensor(self.sums[epoch] / self.steps[epoch], dtype=torch.float64, device=module.device)
        self.means[epoch] = float(trainer.strategy.reduce(mean, reduce_op="mean"))
        # already the mean over the processes; sync_dist only tells Lightning so
        module.log("train/epoch_loss", self.means[epoch], on_step=False, on_epoch=True, sync_dist=True)
        if self.verbose and trainer.is_global_zero:
            line = f"Epoch #{epoch}: loss={self.means[epoch]:.6f}"
            bar = trainer.progress_bar_callback
            bar.print(line) if bar is not None and hasattr(bar, "print") else print(line)

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "steps": dict(self.steps), "means": dict(self.means)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.steps, self.means = dict(state["sums"]), dict(state["steps"]), dict(state["means"])


class StopAfterSteps(L.Callback):
    """Ends the run once ``steps`` optimiser steps are done, inside an epoch if need be (and at
    once when a resumed run has them all)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_train_start(self, trainer, module) -> None:
        self._stop_when_done(trainer)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._stop_when_done(trainer)

    def _stop_when_done(self, trainer) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True

