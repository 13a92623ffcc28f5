"""What the engine needs to know to train any method: optimisation, length, devices, checkpoints.

One flat dataclass for every modality. A modality's own configuration (images' ``FitConfig``, the
text command's options, ``TS2Vec``'s arguments) turns into a ``TrainSettings``; the engine reads
nothing else. Names follow the common command-line options (``max_steps`` <-> ``--max-steps``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from contrastkit.engine.optim import OPTIMIZERS, SCHEDULES
from contrastkit.core.errors import ConfigError
from contrastkit.core.init_source import requested_init
from contrastkit.core.trackers import check_trackers, requested_trackers

NAN_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class TrainSettings:
    # optimisation
    optimizer: str = "adamw"  # sgd | lars | adamw | adam
    lr: float = 1e-3  # the base rate; see lr_reference_batch
    # With a reference batch B, the rate is lr * global_batch / B (the linear scaling rule of the
    # SimCLR / lightly recipes); None keeps lr whatever the batch (AdamW recipes, text, graphs).
    lr_reference_batch: int | None = None
    weight_decay: float = 0.0
    decay_everything: bool = False  # weight decay on biases and norms too (official GraphMAE, TS2Vec)
    momentum: float = 0.9  # SGD and LARS
    schedule: str = "constant"  # warmup-cosine | warmup-linear | warmup-constant | constant
    warmup_steps: int = 0
    warmup_epochs: float | None = None  # when set, the warm-up is this share of the epochs' steps
    max_grad_norm: float | None = None  # clip the gradient's global norm
    nan_policy: str = "stop"  # stop | skip (the step of a batch whose loss is not finite)
    # length: the run stops at whichever limit comes first; at least one is required
    max_epochs: int | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    # devices (Lightning's names)
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | ...
    deterministic: bool = False
    # bookkeeping
    seed: int = 0
    batch_size: int = 1  # per process, for the rate's scaling and throughput
    checkpoint_every_steps: int | None = None  # also checkpoint every N optimiser steps
    log_every_steps: int = 1
    # experiment trackers (--logger; csv always): by default those of the enclosing
    # contrastkit.core.trackers.logging_to block, which `contrastkit fit` opens around every modality
    loggers: tuple[str, ...] = field(default_factory=requested_trackers)
    # pretrained encoder weights loaded before the first step (--init; engine/init_weights.py): by default
    # those of the enclosing contrastkit.core.init_source.starting_from block, which `contrastkit fit` opens
    init: str | None = field(default_factory=requested_init)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}.")
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {self.nan_policy!r}.")
        if self.max_epochs is None and self.max_steps is None and self.max_minutes is None:
            raise ConfigError("Give the length of the run: --max-epochs, --max-steps or --max-minutes "
                              "(the run stops at whichever comes first).")
        for name in ("max_epochs", "max_steps", "checkpoint_every_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}.")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"--max-minutes must be positive, got {self.max_minutes}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}.")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.log_every_steps < 1:
            raise ConfigError(f"Invalid settings: weight_decay={self.weight_decay} and warmup_steps="
                              f"{self.warmup_steps} must be >= 0, log_every_steps={self.log_every_steps} >= 1.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"--max-grad-norm must be positive (or unset), got {self.max_grad_norm}.")
        object.__setattr__(self, "loggers", check_trackers(self.loggers))

    def lr_for(self, world_size: int) -> float:
        """The rate the optimiser uses when ``world_size`` processes train together."""
        if self.lr_reference_batch is None:
            return self.lr
        return self.lr * self.batch_size * world_size / self.lr_reference_batch

    def replace(self, **changes) -> TrainSettings:
        return dataclasses.replace(self, **changes)
