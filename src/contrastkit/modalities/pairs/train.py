"""Training a :class:`~contrastkit.modalities.pairs.two_tower.TwoTower` on a pair set with the engine, and
evaluating retrieval both ways.

:func:`train_two_tower` wraps the model in :class:`~contrastkit.modalities.pairs.method.TwoTowerMethod`
and runs it under :func:`contrastkit.engine.train`: AdamW (encoders at ``lr``, heads and the
objectives' parameters at ``head_lr``), a linear warm-up over ``warmup_fraction`` of the steps and
a cosine decay to 0, gradient-norm clipping, checkpoints, exact resume, DDP and metrics.csv.

Batches: every epoch is a permutation of the pairs, a pure function of (seed, epoch)
(:class:`~contrastkit.engine.data.EpochShuffleSampler`), cut into full global batches (the
remainder is dropped: a contrastive batch of a few pairs has too few negatives). With ``W``
processes, process ``r`` takes rows ``[r*b, (r+1)*b)`` of each global batch of ``W*b``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import Dataset

from contrastkit.engine import EpochShuffleSampler, TrainResult, TrainSettings, batch_loader, train
from contrastkit.core.errors import ConfigError
from contrastkit.nn.gradcache import check_one_process
from contrastkit.modalities.pairs.harmonization import GradientHarmonizer
from contrastkit.modalities.pairs.method import TwoTowerMethod, to_device
from contrastkit.modalities.pairs.pairs import Pairs
from contrastkit.modalities.pairs.retrieval import pair_retrieval
from contrastkit.modalities.pairs.towers import TowerInput
from contrastkit.modalities.pairs.two_tower import TwoTower


@dataclass
class TrainOptions:
    """Attributes:
        max_steps: optimiser steps (None: ``epochs`` passes over the pairs; 0: no training).
        epochs: passes over the pairs when ``max_steps`` is None (fractions allowed).
        batch_size: pairs per step and process.
        lr: AdamW rate of the encoders (2e-5 suits a pretrained Transformer).
        head_lr: AdamW rate of the heads and the objectives' parameters.
        weight_decay: on weight matrices only.
        warmup_fraction: share of the steps with a linear warm-up.
        max_grad_norm: gradient-norm clip (None: off).
        seed: data order, augmentation, dropout.
        accelerator, devices, strategy: Lightning's (``devices=2, strategy="ddp"``: data parallel).
        checkpoint_every_steps: also checkpoint every N steps (besides every epoch and the end).
    """

    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 2e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_grad_norm: float | None = 1.0
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    checkpoint_every_steps: int | None = None

    def check(self, n_pairs: int) -> None:
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2 (a contrastive batch needs negatives), "
                              f"got {self.batch_size}.")
        if self.devices < 1:
            raise ConfigError(f"--devices must be at least 1, got {self.devices}.")
        if self.batch_size * self.devices > n_pairs:
            raise ConfigError(f"The global batch ({self.batch_size} x {self.devices} processes) is larger than the "
                              f"{n_pairs} training pairs; lower --batch-size.")
        if self.max_steps is not None and self.max_steps < 0:
            raise ConfigError(f"--max-steps must be >= 0, got {self.max_steps}.")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}.")
        if not (self.lr > 0 and self.head_lr > 0):
            raise ConfigError(f"--lr and --head-lr must be positive, got {self.lr} and {self.head_lr}.")

    def total_steps(self, n_pairs: int) -> int:
        """``max_steps`` if given, else ``epochs`` times the full global batches per epoch."""
        if self.max_steps is not None:
            return self.max_steps
        return math.floor(self.epochs * (n_pairs // (self.batch_size * self.devices)))

    def settings(self, n_pairs: int) -> TrainSettings:
        """The engine's settings for a run over ``n_pairs`` pairs (at least one step)."""
        steps = self.total_steps(n_pairs)
        return TrainSettings(
            optimizer="adamw", lr=self.lr, weight_decay=self.weight_decay, schedule="warmup-cosine",
            warmup_steps=int(self.warmup_fraction * steps), max_grad_norm=self.max_grad_norm, max_steps=steps,
            accelerator=self.accelerator, devices=self.devices, strategy=self.strategy, seed=self.seed,
            batch_size=self.batch_size, checkpoint_every_steps=self.checkpoint_every_steps)


class PairRows(Dataset):
    """The pairs by position; a batch is the list of raw ``(first, second)`` pairs."""

    def __init__(self, pairs: Pairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, position: int) -> tuple[Any, Any]:
        return self.pairs.first[position], self.pairs.second[position]

    def __getitems__(self, positions: list[int]) -> list[tuple[Any, Any]]:
        return [self[p] for p in positions]


class PairBatches(L.LightningDataModule):
    """Each process's batches of pairs, built once the rank and the world size are known."""

    def __init__(self, pairs: Pairs, batch_size: int, seed: int):
        super().__init__()
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed

    def train_dataloader(self):
        sampler = EpochShuffleSampler(len(self.pairs), self.batch_size, self.seed, self.trainer.global_rank,
                                      self.trainer.world_size)
        return batch_loader(PairRows(self.pairs), sampler)


def train_two_tower(model: TwoTower, pairs: Pairs, input_a: TowerInput, input_b: TowerInput,
                    options: TrainOptions, harmonizer: GradientHarmonizer | None = None, *,
                    out: str | os.PathLike | None = None, resume: bool = False, description: dict | None = None,
                    progress_bar: bool | None = None) -> TrainResult | None:
    """Train ``model`` on ``pairs`` (first side -> tower a) in place; None when there are no steps.

    ``out`` is the run directory (checkpoints/last.ckpt, metrics.csv); ``resume=True`` continues
    the run there. With ``out=None`` the run trains in a temporary directory, removed afterwards."""
    options.check(len(pairs))
    check_one_process(model.grad_cache_chunk, options.devices)
    if options.total_steps(len(pairs)) == 0:
        return None
    method = TwoTowerMethod(model, input_a, input_b, harmonizer, head_lr_scale=options.head_lr / options.lr)
    data = PairBatches(pairs, options.batch_size, options.seed)
    settings = options.settings(len(pairs))
    if out is not None:
        return train(method, data, settings, out, resume=resume, description=description, progress_bar=progress_bar)
    if resume:
        raise ConfigError("resume=True needs the run directory (out=...) to continue.")
    with tempfile.TemporaryDirectory(prefix="contrastkit-pairs-") as run_dir:
        return train(method, data, settings, run_dir, description=description, progress_bar=progress_bar)


@torch.inference_mode()
def encode_side(model: TwoTower, items: Sequence[Any], tower_input: TowerInput, side: str,
                batch_size: int = 64) -> Tensor:
    """Joint-space embeddings (N, d), float32 on CPU, in input order, with the model in eval mode.
    Strings are batched by length (less padding); the order is restored."""
    items = list(items)
    order = sorted(range(len(items)), key=lambda i: -len(items[i])) if all(isinstance(s, str) for s in items) \
        else list(range(len(items)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(items), batch_size):
            batch = tower_input.collate([items[i] for i in order[start:start + batch_size]])
            chunks.append(model.embed(to_device(batch, device), side).float().cpu())
    finally:
        model.train(was_training)
    embeddings = torch.empty(len(items), chunks[0].shape[1])
    embeddings[torch.tensor(order)] = torch.cat(chunks)
    return embeddings


def retrieval_keys(items: Sequence[Any]) -> list[Hashable] | None:
    """Items as their own keys when hashable (identical texts are one retrieval item), else None."""
    try:
        for item in items:
            hash(item)
    except TypeError:
        return None
    return list(items)


def evaluate_pairs(model: TwoTower, pairs: Pairs, input_a: TowerInput, input_b: TowerInput,
                   batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Retrieval in both directions (first -> second and back); see :func:`pair_retrieval`."""
    first = encode_side(model, pairs.first, input_a, "a", batch_size)
    second = encode_side(model, pairs.second, input_b, "b", batch_size)
    return pair_retrieval(first, second, retrieval_keys(pairs.first), retrieval_keys(pairs.second))


def options_record(*options: Any) -> dict[str, Any]:
    """The dataclass options as one flat dict (for summary.json)."""
    record: dict[str, Any] = {}
    for option in options:
        record.update(asdict(option))
    return record
