"""Training and evaluating a :class:`~contrastkit.multimodal.two_tower.TwoTower` on a pair set.

One plain loop (no Lightning: the batches are lists of raw samples that each tower collates
itself, and gradient harmonization needs its own backward pass):

    for each step: pairs of the batch -> collate per tower -> augmented views (when configured)
                   -> loss terms -> backward (plain, or harmonized on the towers' features)
                   -> clip gradient norm -> AdamW step -> EMA update of the momentum branch

The learning rate warms up linearly over ``warmup_fraction`` of the steps, then decays along a
cosine to 0 (:func:`contrastkit.training.optim.warmup_cosine`). The encoders train at ``lr``; heads
and the objectives' own parameters (CLIP's logit scale) at ``head_lr``, since they start from
scratch. Weight decay applies to weight matrices only.

Batches: every epoch is a new permutation of the pairs (from ``seed`` and the epoch) cut into full
global batches (the remainder is dropped: a contrastive batch of a few pairs has too few
negatives). Under ``torch.distributed`` rank ``r`` takes rows ``[r*b, (r+1)*b)`` of each global
batch of ``W*b`` and the gradients are averaged over ranks after the backward pass, as DDP does;
with the objectives gathered (:class:`~contrastkit.distributed.GatheredObjective`) a step then
equals one process on the global batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from contrastkit.distributed import rank, world_size
from contrastkit.errors import ConfigError, TrainingError
from contrastkit.multimodal.harmonization import GradientHarmonizer
from contrastkit.multimodal.pairs import Pairs
from contrastkit.multimodal.retrieval import pair_retrieval
from contrastkit.multimodal.towers import TowerInput
from contrastkit.multimodal.two_tower import TwoTower
from contrastkit.seeding import seeded
from contrastkit.training.optim import warmup_cosine


@dataclass
class TrainOptions:
    """Attributes:
        steps: optimiser steps (None: ``epochs`` passes over the pairs).
        epochs: passes over the pairs when ``steps`` is None (fractions allowed).
        batch_size: pairs per step and process.
        lr: AdamW rate of the encoders (2e-5 suits a pretrained Transformer).
        head_lr: AdamW rate of the heads and the objectives' parameters.
        weight_decay: on weight matrices only.
        warmup_fraction: share of the steps with a linear warm-up.
        max_grad_norm: gradient-norm clip (None: off).
        seed: data order, augmentation, dropout.
        log_every: steps between log lines.
    """

    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 2e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_grad_norm: float | None = 1.0
    seed: int = 0
    log_every: int = 10

    def check(self, n_pairs: int) -> None:
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2 (a contrastive batch needs negatives), got {self.batch_size}.")
        if self.batch_size * world_size() > n_pairs:
            raise ConfigError(f"The global batch ({self.batch_size} x {world_size()} processes) is larger than the "
                              f"{n_pairs} training pairs; lower --batch-size.")
        if self.steps is not None and self.steps < 0:
            raise ConfigError(f"--steps must be >= 0, got {self.steps}.")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}.")


def total_steps(n_pairs: int, options: TrainOptions) -> int:
    """``steps`` if given, else ``epochs`` times the full global batches per epoch."""
    if options.steps is not None:
        return options.steps
    return math.floor(options.epochs * (n_pairs // (options.batch_size * world_size())))


def batch_indices(n_pairs: int, batch_size: int, steps: int, seed: int) -> Iterator[Tensor]:
    """This process's rows of each of ``steps`` global batches (per-epoch permutations)."""
    global_batch = batch_size * world_size()
    per_epoch = n_pairs // global_batch
    start = rank() * batch_size
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed + epoch))
        rows = order[position * global_batch:(position + 1) * global_batch]
        yield rows[start:start + batch_size]


def build_optimizer(model: TwoTower, options: TrainOptions) -> torch.optim.AdamW:
    """AdamW with the encoders at ``lr`` and everything else trainable at ``head_lr``; no decay
    on biases, norms and scalars."""
    encoder_ids = {id(p) for side in ("a", "b") for p in model.encoder(side).parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault((id(parameter) in encoder_ids, parameter.ndim > 1), []).append(parameter)
    return torch.optim.AdamW([
        {"params": params, "lr": options.lr if is_encoder else options.head_lr, "base_lr":
         options.lr if is_encoder else options.head_lr, "weight_decay": options.weight_decay if decays else 0.0}
        for (is_encoder, decays), params in groups.items()
    ])


def average_gradients(model: nn.Module) -> None:
    """Average every parameter's gradient over the processes (what DDP does; no-op alone)."""
    if world_size() == 1:
        return
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= world_size()


def backward(model: TwoTower, batch_a: Any, batch_b: Any, view_a: Any, view_b: Any,
             harmonizer: GradientHarmonizer | None = None, progress: float = 0.0) -> dict[str, float]:
    """Loss terms and their backward pass; returns the terms' values (and harmonization stats).

    Harmonized: the terms are computed from detached copies of the towers' features, each term's
    gradient on them is taken separately, the harmonizer combines those per sample, and the
    encoders are back-propagated once with the combined gradient. Everything after the features
    (heads, objectives, a second online view) gets the plain gradient of the sum.
    """
    h_a, h_b = model.features(batch_a, batch_b)
    if harmonizer is None:
        terms = model.loss_terms(h_a, h_b, view_a, view_b)
        sum(terms.values()).backward()
        return {name: float(value.detach()) for name, value in terms.items()}
    shared = [h_a.detach().requires_grad_(), h_b.detach().requires_grad_()]
    terms = model.loss_terms(shared[0], shared[1], view_a, view_b)
    per_loss = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, shared, retain_graph=True, allow_unused=True)
        per_loss[name] = [torch.zeros_like(s) if g is None else g for s, g in zip(shared, grads)]
    sum(terms.values()).backward()
    combined, stats = harmonizer.combine(per_loss, progress)
    torch.autograd.backward([h_a, h_b], combined)
    return {**{name: float(value.detach()) for name, value in terms.items()}, **stats}


def train_two_tower(model: TwoTower, pairs: Pairs, input_a: TowerInput, input_b: TowerInput,
                    options: TrainOptions, harmonizer: GradientHarmonizer | None = None,
                    log: Callable[[str], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` on ``pairs`` (first side -> tower a); returns one record per logged step."""
    options.check(len(pairs))
    steps = total_steps(len(pairs), options)
    warmup = int(options.warmup_fraction * steps)
    optimizer = build_optimizer(model, options)
    augment_generator = torch.Generator().manual_seed(options.seed * 1000 + 17 + rank())
    history: list[dict[str, float]] = []
    model.train()
    started = time.perf_counter()
    with seeded(options.seed + rank()):
        for step, rows in enumerate(batch_indices(len(pairs), options.batch_size, steps, options.seed)):
            rows = rows.tolist()
            batch_a = input_a.collate([pairs.first[i] for i in rows])
            batch_b = input_b.collate([pairs.second[i] for i in rows])
            view_a = input_a.augment(batch_a, augment_generator)
            view_b = input_b.augment(batch_b, augment_generator)
            factor = warmup_cosine(step, warmup, steps)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            values = backward(model, batch_a, batch_b, view_a, view_b, harmonizer, step / max(1, steps))
            loss = sum(v for k, v in values.items() if k == "cross" or k.startswith("in_"))
            if not math.isfinite(loss):
                raise TrainingError(f"The two-tower loss became {loss} at step {step} ({values}); lower --lr or "
                                    "--head-lr, or raise --temperature.")
            average_gradients(model)
            if options.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                               options.max_grad_norm)
            optimizer.step()
            model.after_optimizer_step()
            if (step + 1) % options.log_every == 0 or step + 1 == steps:
                record = {"step": step + 1, "loss": loss, **values, "lr_factor": factor,
                          "seconds": time.perf_counter() - started}
                history.append(record)
                if log is not None:
                    log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    return history


@torch.inference_mode()
def encode_side(model: TwoTower, items: Sequence[Any], tower_input: TowerInput, side: str,
                batch_size: int = 64) -> Tensor:
    """Joint-space embeddings (N, d), float32 on CPU, in input order, with the model in eval mode.
    Strings are batched by length (less padding); the order is restored."""
    items = list(items)
    order = sorted(range(len(items)), key=lambda i: -len(items[i])) if all(isinstance(s, str) for s in items) \
        else list(range(len(items)))
    was_training = model.training
    model.eval()
    try:
        chunks = [model.embed(tower_input.collate([items[i] for i in order[start:start + batch_size]]), side).float().cpu()
                  for start in range(0, len(items), batch_size)]
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
