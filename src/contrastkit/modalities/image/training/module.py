"""Images on the engine: a `FitConfig` as engine settings, and channels-last memory format.

:class:`SSLModule` is the engine's module (:mod:`contrastkit.engine.module`: optimiser, schedule,
NaN guard, per-step reseeding) with what images add: channels-last weights and views for one
process, and the run's description (its configuration and data) saved in every checkpoint, which
`contrastkit embed` needs to rebuild the model without the original command line.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from contrastkit.modalities.image.config import FitConfig, base_lr
from contrastkit.engine.module import CHECKPOINT_KEY, EngineModule
from contrastkit.engine.settings import TrainSettings
from contrastkit.modalities.image.methods.parts import DataInfo

__all__ = ["CHECKPOINT_KEY", "SSLModule", "image_settings", "resolve_channels_last", "use_channels_last"]


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


def image_settings(config: FitConfig) -> TrainSettings:
    """The engine settings of an image run: the optimiser of ``config`` with the linear scaling
    rule (lr = base_lr * global_batch / 256; AdamW unscaled), warm-up + cosine over the epochs."""
    return TrainSettings(
        optimizer=config.optimizer, lr=base_lr(config),
        lr_reference_batch=None if config.optimizer == "adamw" else 256,
        weight_decay=config.weight_decay, momentum=config.momentum,
        schedule="warmup-cosine", warmup_epochs=config.warmup_epochs, nan_policy=config.nan_policy,
        max_epochs=config.epochs, max_steps=config.max_steps, max_minutes=config.max_minutes, accelerator=config.accelerator,
        devices=config.devices, strategy=config.strategy, num_nodes=config.num_nodes,
        precision=config.precision, deterministic=config.deterministic, seed=config.seed,
        batch_size=config.batch_size, checkpoint_every_steps=config.checkpoint_every_steps,
    )


class SSLModule(EngineModule):
    def __init__(self, method: nn.Module, config: FitConfig, data: DataInfo):
        super().__init__(method, image_settings(config),
                         {"config": dataclasses.asdict(config), "data": dataclasses.asdict(data)})
        self.config = config
        self.data = data

    def setup(self, stage: str) -> None:
        # Runs on every process before the model is wrapped for DDP, once the world size is known.
        if resolve_channels_last(self.config.channels_last, self.trainer.world_size):
            use_channels_last(self.method)
