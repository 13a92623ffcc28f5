"""The one LightningModule: it trains any method of any modality.

A method is an ``nn.Module`` with

- ``training_loss(batch) -> (loss, logs)``: the scalar to minimise and a dict of floats to log;
- optionally ``after_optimizer_step(step, total_steps)``: state updates after each optimiser step
  (EMA targets, queues, temperature schedules); ``step`` counts steps done, from 1;
- optionally ``backward_loss(loss)``: its own backward pass in place of ``loss.backward()`` (gradient
  harmonisation backpropagates through the towers' features in two stages);
- optionally ``before_optimizer_step()``: gradient surgery after backward and before clipping and
  the step;
- optionally ``parameter_groups(weight_decay) -> list[dict]``: its own optimiser groups (a group may
  carry ``lr_scale``, a multiple of the base rate); by default weight decay falls on weight matrices
  only (:func:`contrastkit.engine.optim.parameter_groups`).

The module owns what every method shares and nothing method-specific: the optimiser and its
schedule, the NaN guard, per-step reseeding, and the run's description saved in every checkpoint.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch import nn

from contrastkit.engine.optim import adamw, build_optimizer, lr_multiplier, LARS
from contrastkit.engine.settings import TrainSettings
from contrastkit.core.errors import TrainingError

CHECKPOINT_KEY = "contrastkit"


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of torch's generators before optimiser step ``step`` on process ``rank``.

    Every step's randomness (views, masks, dropout) is a function of (seed, step, rank) alone: a
    resumed run draws what an uninterrupted one draws, whatever else consumed random numbers in
    between (Lightning creates data iterators at different moments after a restore)."""
    return ((seed * 1_000_003 + step) * 1009 + rank) % (2**63 - 1)


class EngineModule(L.LightningModule):
    """Trains ``method`` under ``settings``; ``description`` (JSON-able) is saved in every checkpoint
    under ``checkpoint["contrastkit"]`` so a run can be rebuilt without its command line."""

    def __init__(self, method: nn.Module, settings: TrainSettings, description: dict | None = None):
        super().__init__()
        self.method = method
        self.settings = settings
        self.description = dict(description or {})
        self.skipped_steps = 0
        self.lr = settings.lr  # set in configure_optimizers, once the world size is known
        self.total_steps: int | None = None  # None when only a time budget bounds the run
        self._fit_started = 0.0

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        s = self.settings
        self.lr = s.lr_for(self.trainer.world_size)
        optimizer = self._build_optimizer()
        estimated = self.trainer.estimated_stepping_batches
        self.total_steps = int(estimated) if math.isfinite(estimated) else None
        if s.warmup_epochs is not None and self.total_steps is not None and s.max_epochs:
            warmup = round(s.warmup_epochs * self.total_steps / s.max_epochs)
        else:
            warmup = s.warmup_steps
        total = self.total_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(s.schedule, step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _build_optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        own_groups = getattr(self.method, "parameter_groups", None)
        if own_groups is None:
            return build_optimizer(s.optimizer, self.method, self.lr, s.weight_decay, s.momentum,
                                   decay_everything=s.decay_everything)
        groups = [dict(group) for group in own_groups(s.weight_decay) if group["params"]]
        for group in groups:
            group["lr"] = self.lr * group.pop("lr_scale", 1.0)
        if s.optimizer == "adamw":
            return adamw(groups, self.lr)
        if s.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        if s.optimizer == "lars":
            return LARS(groups, lr=self.lr, momentum=s.momentum)
        return torch.optim.SGD(groups, lr=self.lr, momentum=s.momentum)

    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int):
        torch.manual_seed(step_seed(self.settings.seed, self.global_step, self.global_rank))
        loss, logs = self.method.training_loss(batch)
        if not torch.isfinite(loss.detach()):
            return self._non_finite_loss(loss)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        for name, value in logs.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _non_finite_loss(self, loss: torch.Tensor):
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.settings.nan_policy == "skip":
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            return None  # Lightning skips the optimiser step for this batch
        raise TrainingError(
            f"The loss became {loss.detach().item()} at {where}. Training stopped; the last good checkpoint "
            f"(if any) is kept in the run directory. Lower --lr (now {self.lr:.4g}), raise the objective's "
            f"temperature, use --precision 32-true, or pass --nan-policy skip to skip such batches; "
            f"then continue with --resume."
        )

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        custom = getattr(self.method, "backward_loss", None)
        if custom is None:
            super().backward(loss, *args, **kwargs)
        else:
            custom(loss)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        hook = getattr(self.method, "before_optimizer_step", None)
        if hook is not None:
            hook()

    def optimizer_step(self, *args, **kwargs) -> None:
        # The method's state update runs right after the optimiser step, before any callback's
        # on_train_batch_end: a checkpoint written there already holds the updated EMA or queue.
        super().optimizer_step(*args, **kwargs)
        hook = getattr(self.method, "after_optimizer_step", None)
        if hook is not None:
            # Lightning counts the step as done only once this hook returns: this one is step
            # global_step + 1 (the EMA schedules of BYOL and MoCo read it).
            hook(self.global_step + 1, self.planned_steps())

    def planned_steps(self) -> int:
        """Total optimiser steps of the run; for a run bounded only by time, estimated from the pace."""
        if self.total_steps is not None:
            return self.total_steps
        budget = 60.0 * (self.settings.max_minutes or 0.0)
        pace = self.global_step / max(time.perf_counter() - self._fit_started, 1e-9)
        return max(self.global_step, math.ceil(pace * budget))

    # -- checkpoints carry the run's description --------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {**self.description, "skipped_steps": self.skipped_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = checkpoint.get(CHECKPOINT_KEY, {}).get("skipped_steps", 0)
        # Lightning restores the loops after this hook, from this same dictionary.
        start_next_epoch(checkpoint.get("loops", {}).get("fit_loop"))


def start_next_epoch(fit_loop: dict[str, Any] | None) -> None:
    """Make the loop state of a checkpoint written at an epoch's end (inside ``on_train_epoch_end``)
    that of the next epoch's start, in place.

    Written there, the epoch counts as processed but not completed. Lightning 2.6 resumes such a
    state as "finished" only when the run is bounded by epochs; bounded by steps, it re-enters the
    finished epoch, and the run goes on one batch off the uninterrupted one. What is left of an
    epoch after its end hooks is bookkeeping (its ``completed`` count; nothing trains, and the
    engine's schedules step per batch), so the two states are the same run: the epoch is marked
    completed and the batch counters of the epoch in progress start again from zero.
    """
    if not fit_loop or "epoch_progress" not in fit_loop:
        return
    epochs = fit_loop["epoch_progress"]
    current, total = epochs["current"], epochs["total"]
    at_epoch_end = (current["ready"] == current["started"] == current["processed"]
                    and current["completed"] == current["processed"] - 1)
    if not at_epoch_end:
        return
    current["completed"] = current["processed"]
    total["completed"] = total["processed"]
    batches = fit_loop.get("epoch_loop.batch_progress")
    if batches is not None:
        batches["current"] = {key: 0 for key in batches["current"]}
        batches["is_last_batch"] = False
