"""The Lightning module that trains any method.

It owns what every method shares and nothing method-specific: the optimiser and its warm-up +
cosine schedule, the NaN guard, per-epoch reseeding of the augmentation randomness (so a resumed run
draws the same views as an uninterrupted one), and the run's description saved in every checkpoint
(what `contrastkit embed` needs to rebuild the model without the original command line).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn

from contrastkit.config import FitConfig, scaled_lr
from contrastkit.errors import TrainingError
from contrastkit.methods._parts import DataInfo
from contrastkit.training.optim import build_optimizer, warmup_cosine

CHECKPOINT_KEY = "contrastkit"


def use_channels_last(method: nn.Module) -> nn.Module:
    """Put ``method`` in channels-last memory format, in place: its 4-d (convolution) weights, and
    every view module's output (modules with a boolean ``channels_last`` attribute). Convolutions
    then read and write NHWC end to end; other parameters are untouched. Returns ``method``."""
    method.to(memory_format=torch.channels_last)
    for module in method.modules():
        if isinstance(getattr(module, "channels_last", None), bool):
            module.channels_last = True
    return method


def resolve_channels_last(requested: bool | None, world_size: int) -> bool:
    """``FitConfig.channels_last``: None means on for one process (where it was measured faster with
    the same numbers) and off for several (not measured there); an explicit True under several
    processes is honoured with a warning."""
    if requested is None:
        return world_size == 1
    if requested and world_size > 1:
        warnings.warn(
            "channels-last with several processes has not been measured or tested in contrastkit (it is on by "
            "default for one process only); --no-channels-last gives the tested NCHW path.", stacklevel=2)
    return requested


class SSLModule(L.LightningModule):
    def __init__(self, method: nn.Module, config: FitConfig, data: DataInfo):
        super().__init__()
        self.method = method
        self.config = config
        self.data = data
        self.skipped_steps = 0
        self.lr = 0.0  # set in configure_optimizers, once the world size is known
        self.total_steps = 0

    def setup(self, stage: str) -> None:
        # Runs on every process before the model is wrapped for DDP, once the world size is known.
        if resolve_channels_last(self.config.channels_last, self.trainer.world_size):
            use_channels_last(self.method)

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        self.lr = scaled_lr(self.config, self.config.batch_size * self.trainer.world_size)
        optimizer = build_optimizer(self.config.optimizer, self.method, self.lr, self.config.weight_decay,
                                    self.config.momentum)
        self.total_steps = int(self.trainer.estimated_stepping_batches)
        warmup = round(self.config.warmup_epochs * self.total_steps / self.config.epochs)
        total = self.total_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        # Augmentations (and dropout) draw from torch's global generator. Seeding it from (seed, step,
        # rank) makes every step's randomness a function of those three alone: a resumed run draws
        # the same views as an uninterrupted one, whatever else consumed random numbers in between
        # (Lightning creates data iterators at different moments after a restore).
        torch.manual_seed((self.config.seed * 1_000_003 + self.global_step) * 1009 + self.global_rank)
        loss, logs = self.method.training_loss(batch)
        if not torch.isfinite(loss):
            return self._non_finite_loss(loss)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        for name, value in logs.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _non_finite_loss(self, loss: torch.Tensor):
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.config.nan_policy == "skip":
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            return None  # Lightning skips the optimiser step for this batch
        raise TrainingError(
            f"The loss became {loss.item()} at {where}. Training stopped; the last good checkpoint (from the "
            f"end of the previous epoch, if any) is kept in the run directory. Lower --lr (now {self.lr:.4g}), "
            f"raise --temperature, use --precision 32-true, or pass --nan-policy skip to skip such batches; "
            f"then continue with --resume."
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        hook = getattr(self.method, "after_optimizer_step", None)
        if hook is not None:
            hook(self.global_step, self.total_steps)

    # -- checkpoints carry the run's description --------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "config": dataclasses.asdict(self.config),
            "data": dataclasses.asdict(self.data),
            "skipped_steps": self.skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = checkpoint.get(CHECKPOINT_KEY, {}).get("skipped_steps", 0)
