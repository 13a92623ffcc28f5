"""The training loop of the text methods: AdamW with sentence-transformers' schedule, on CPU or GPU.

``fit_text(method, data, ...)`` runs ``method.training_loss`` on the batches of a
:class:`~contrastkit.text.data.SentenceData` (see :mod:`contrastkit.text.methods` for the
contract) and writes into ``out_dir``:

- ``encoder/``: the trained encoder (:meth:`TextEncoder.save`, reloadable with
  ``TextEncoder.from_folder``);
- ``document_encoder/``: only for a two-tower method (one with a frozen ``document_encoder``,
  e.g. ``hybrid-distill``): the encoder that embeds the documents;
- ``metrics.csv``: one row every ``log_every`` steps (step, epoch, lr, the window's mean loss and
  method logs, elapsed seconds, steps per second), written as it goes;
- ``summary.json``: the settings, steps done, time, what stopped the run, the evaluation.

Optimiser and schedule (sentence-transformers' ``fit`` defaults): AdamW (fused), weight decay on weight
matrices only (not biases or LayerNorm), gradient norm clipped at ``max_grad_norm``, and a
multiplier of the learning rate at step ``s`` (0-based)::

    warm-up:  (s + 1) / W                    for s < W
    decay:    max(0, (T - s) / (T - W))      for s >= W, with T = max_steps

When the run is limited only by time (``max_minutes``), ``T`` is unknown in advance, so the rate
stays constant at ``lr`` after the warm-up (a decay tied to an estimated ``T`` would change with
the machine's speed). ``after_optimizer_step(step, total_steps)`` then receives ``total_steps``
estimated from the pace so far.

Reproducibility: the caller's random state is left as it was (:func:`contrastkit.seeding.seeded`);
inside, the data order comes from ``(seed, epoch)`` and torch's generator is reseeded from
``(seed, step)`` before every step, so dropout and views are the same for the same seed (a run
limited by ``max_steps`` is deterministic on a given machine; one limited by time stops at a
step that depends on the machine's speed).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from contrastkit.errors import ConfigError, TrainingError
from contrastkit.seeding import seeded
from contrastkit.text.data import SentenceData
from contrastkit.text.evaluation import autocast
from contrastkit.training.optim import parameter_groups

EvalFn = Callable[..., dict]


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int | None) -> float:
    """The learning-rate multiplier at 0-based ``step`` (see the module docstring); constant 1
    after the warm-up when ``total_steps`` is None."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def step_seed(seed: int, step: int) -> int:
    """The seed of torch's generator at ``step`` of a run seeded with ``seed``."""
    return (seed * 1_000_003 + step) % (2**63 - 1)


def check_settings(batch_size: int, lr: float, max_steps: int | None, max_minutes: float | None,
                   warmup_steps: int, weight_decay: float, log_every: int) -> None:
    if max_steps is None and max_minutes is None:
        raise ConfigError("Give the length of the run: --max-steps N, --max-minutes M, or both "
                          "(the run stops at whichever comes first).")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be a positive number of optimiser steps, got {max_steps}.")
    if max_minutes is not None and not max_minutes > 0:
        raise ConfigError(f"--max-minutes must be positive, got {max_minutes}.")
    if not lr > 0:
        raise ConfigError(f"--lr must be positive, got {lr}; sentence-transformers fine-tuning uses 1e-5 to 5e-5.")
    if warmup_steps < 0 or weight_decay < 0 or log_every < 1 or batch_size < 2:
        raise ConfigError(
            f"Invalid training settings: warmup_steps={warmup_steps} and weight_decay={weight_decay} must be "
            f">= 0, log_every={log_every} >= 1, batch_size={batch_size} >= 2."
        )


class MetricsWriter:
    """metrics.csv, one row per logging window, flushed so a killed run keeps its history."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        self.writer = None

    def write(self, row: dict) -> None:
        if self.writer is None:
            # Kept open for the whole run (closed in close()), so no context manager.
            self.handle = open(self.path, "w", newline="")  # noqa: SIM115
            self.writer = csv.DictWriter(self.handle, fieldnames=list(row), extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def fit_text(method: nn.Module, data: SentenceData, *, batch_size: int, lr: float,
             max_steps: int | None = None, max_minutes: float | None = None, warmup_steps: int = 0,
             weight_decay: float = 0.01, seed: int = 0, out_dir: str | os.PathLike, log_every: int = 50,
             eval_fn: EvalFn | None = None, max_grad_norm: float | None = 1.0,
             max_length: int | None = None, device: str | torch.device | None = None,
             extra_summary: dict | None = None, precision: str = "fp32") -> dict:
    """Train ``method`` on ``data`` and write the run into ``out_dir`` (which must not hold a run).

    Args:
        method: a text method (:mod:`contrastkit.text.methods` contract).
        data: the sentences; contexts are added to batches when ``method.needs_context``.
        batch_size: sentences per step.
        lr: peak learning rate of AdamW.
        max_steps, max_minutes: stop after this many optimiser steps and/or this much training
            time (evaluation excluded); at least one is required.
        warmup_steps: linear warm-up length.
        weight_decay: AdamW's decoupled weight decay on weight matrices (0.01 as sentence-transformers).
        seed: seeds the data order, dropout and views.
        out_dir: the run directory (created).
        log_every: steps per metrics.csv row.
        eval_fn: called as ``eval_fn(method.encoder)`` before training and after; its dicts are
            stored in the summary as ``evaluation.before`` and ``evaluation.after``. A two-tower
            method (one with a ``document_encoder``, the frozen document side) is evaluated as
            ``eval_fn(method.encoder, document_encoder=method.document_encoder)``.
        max_grad_norm: clip the gradient's global norm (None: no clipping).
        max_length: tokens per text during training (default: the encoder's ``max_length``). The
            encoder's own value is restored afterwards, so it is saved and evaluated with the
            length it was loaded with (256 for all-MiniLM-L6-v2) even when trained on short inputs.
        device: where to train (default: where the method already is).
        extra_summary: more entries for summary.json (e.g. the command's method name and options).
        precision: ``fp32``, or ``bf16`` to run the forward passes under bfloat16 autocast (weights,
            optimiser state and gradients stay float32; on CPUs with AVX512-BF16 a step is about
            twice as fast).

    Returns:
        The summary (also written to ``out_dir/summary.json``).

    Raises:
        TrainingError: the loss became NaN or infinite (the encoder is not saved).
    """
    check_settings(batch_size, lr, max_steps, max_minutes, warmup_steps, weight_decay, log_every)
    if max_length is not None and max_length < 2:
        raise ConfigError(f"--max-length must be at least 2 tokens, got {max_length}.")
    data.check_batch_size(batch_size)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"The output folder '{out}' already exists and is not empty; choose another one "
                          "(a run is never overwritten).")
    out.mkdir(parents=True, exist_ok=True)
    if device is not None:
        method.to(device)
    with_context = bool(getattr(method, "needs_context", False))
    summary: dict = {
        "method": getattr(method, "name", type(method).__name__.lower()),
        "data": data.name, "sentences": len(data), "batch_size": batch_size, "lr": lr,
        "max_steps": max_steps, "max_minutes": max_minutes, "warmup_steps": warmup_steps,
        "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "seed": seed,
        "schedule": "linear warm-up, linear decay" if max_steps is not None else "linear warm-up, constant",
        "max_length": max_length or method.encoder.max_length, "precision": precision,
        **(extra_summary or {}),
    }
    document_encoder = getattr(method, "document_encoder", None)
    if document_encoder is not None:
        # A two-tower method trains the query side only: documents keep the base model's embeddings.
        summary["documents_embedded_by"] = "the base model, frozen (document_encoder/)"
    evaluation = {}
    if eval_fn is not None:
        evaluation["before"] = _evaluate(eval_fn, method.encoder, document_encoder)

    inference_length = method.encoder.max_length
    try:
        method.encoder.max_length = max_length or inference_length
        with seeded(seed, method.encoder.device):
            progress = _train(method, data, batch_size, lr, max_steps, max_minutes, warmup_steps, weight_decay,
                              seed, out / "metrics.csv", log_every, with_context, max_grad_norm, precision)
    finally:
        method.encoder.max_length = inference_length
    summary.update(progress)
    method.encoder.save(out / "encoder")
    summary["encoder_dir"] = str(out / "encoder")
    if document_encoder is not None:
        # Saved beside the query tower, so the run alone is enough to retrieve with (its base may
        # be a random-small draw or a folder that later changes).
        document_encoder.save(out / "document_encoder")
        summary["document_encoder_dir"] = str(out / "document_encoder")
    if eval_fn is not None:
        evaluation["after"] = _evaluate(eval_fn, method.encoder, document_encoder)
        summary["evaluation"] = evaluation
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _evaluate(eval_fn: EvalFn, encoder: nn.Module, document_encoder: nn.Module | None) -> dict:
    return eval_fn(encoder) if document_encoder is None else eval_fn(encoder, document_encoder=document_encoder)


def _train(method: nn.Module, data: SentenceData, batch_size: int, lr: float, max_steps: int | None,
           max_minutes: float | None, warmup_steps: int, weight_decay: float, seed: int,
           metrics_path: Path, log_every: int, with_context: bool, max_grad_norm: float | None,
           precision: str = "fp32") -> dict:
    """The optimisation loop; returns the progress part of the summary."""
    parameters = [p for p in method.parameters() if p.requires_grad]
    optimizer = adamw(parameter_groups(method, weight_decay), lr)
    per_epoch = data.batches_per_epoch(batch_size)
    budget_s = None if max_minutes is None else 60.0 * max_minutes
    metrics = MetricsWriter(metrics_path)
    window: dict[str, list[float]] = {}
    step, epoch, stopped_by = 0, 0, "max_steps"
    started = time.perf_counter()
    method.train()
    try:
        while True:
            for batch in data.epoch(epoch, batch_size, seed, with_context):
                if max_steps is not None and step >= max_steps:
                    break
                elapsed = time.perf_counter() - started
                if budget_s is not None and elapsed >= budget_s:
                    stopped_by = "time_budget"
                    break
                _reseed(step_seed(seed, step), method.encoder.device)
                multiplier = linear_warmup_decay(step, warmup_steps, max_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * multiplier
                # Only the forward pass and the loss run under autocast (PyTorch's rule): with the
                # gradient clipping and the fused AdamW step inside a bf16 autocast region,
                # all-MiniLM-L6-v2 drifted from cos 0.94 to 0.50 with its base in 100 steps.
                with autocast(precision):
                    loss, logs = method.training_loss(batch)
                if not torch.isfinite(loss.detach()):
                    raise TrainingError(
                        f"The training loss became {float(loss.detach())} at step {step + 1} (epoch {epoch}) of "
                        f"'{data.name}'. Lower the learning rate (now {lr}), raise the method's temperature, "
                        "or check the data for empty lines; the encoder was not saved."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
                optimizer.step()
                step += 1
                if hasattr(method, "after_optimizer_step"):
                    method.after_optimizer_step(step, _planned_steps(step, max_steps, budget_s, started))
                for name, value in {"loss": float(loss.detach()), **logs}.items():
                    window.setdefault(name, []).append(float(value))
                if step % log_every == 0:
                    _log(metrics, window, step, step / per_epoch, lr * multiplier, started)
            else:
                epoch += 1
                continue
            break
    finally:
        if window:
            _log(metrics, window, step, step / per_epoch, optimizer.param_groups[0]["lr"], started)
        metrics.close()
    seconds = time.perf_counter() - started
    return {"steps": step, "epochs": round(step / per_epoch, 4), "stopped_by": stopped_by,
            "train_seconds": round(seconds, 2), "steps_per_second": round(step / max(seconds, 1e-9), 4)}


def adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel per step where torch supports it (CPU and CUDA parameters):
    on a 2-core CPU the fused step over MiniLM's 22M parameters is ~10x faster than the loop."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=lr)


def _reseed(seed: int, device: torch.device) -> None:
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _planned_steps(step: int, max_steps: int | None, budget_s: float | None, started: float) -> int:
    if max_steps is not None:
        return max_steps
    pace = step / max(time.perf_counter() - started, 1e-9)
    return max(step, math.ceil(pace * budget_s))


def _log(metrics: MetricsWriter, window: dict[str, list[float]], step: int, epoch: float, lr: float,
         started: float) -> None:
    elapsed = time.perf_counter() - started
    row = {"step": step, "epoch": round(epoch, 4), "lr": lr}
    row.update({name: sum(values) / len(values) for name, values in window.items()})
    row.update({"elapsed_s": round(elapsed, 2), "steps_per_second": round(step / max(elapsed, 1e-9), 4)})
    metrics.write(row)
    window.clear()
