"""Text pretraining on the engine: ``fit_text`` trains a text method and writes its run folder.

``fit_text(method, data, ...)`` runs ``method.training_loss`` on the batches of a
:class:`~contrastkit.modalities.text.data.SentenceData` (see :mod:`contrastkit.modalities.text.methods` for the contract)
through :func:`contrastkit.engine.train`, and writes into ``out_dir``:

- ``config.yaml``: the run's settings (``contrastkit text`` writes its options there, and reads
  them back for ``--resume``);
- ``checkpoints/last.ckpt``: written atomically after every epoch and every
  ``checkpoint_every_steps`` steps; ``resume=True`` continues from it, mid-epoch included;
- ``metrics.csv``: a row every ``log_every`` steps: ``train/loss``, ``train/lr``, the method's logs
  (``train/<name>``) and ``elapsed_s`` (seconds since the run began, across resumes);
- ``summary.json``: the settings, steps done, time, what stopped the run, the evaluation;
- ``encoder/``: the trained encoder (:meth:`TextEncoder.save`, reloadable with
  ``TextEncoder.from_folder``);
- ``document_encoder/``: only for a two-tower method (one with a frozen ``document_encoder``,
  e.g. ``hybrid-distill``): the encoder that embeds the documents.

Optimiser and schedule (sentence-transformers' ``fit`` defaults, as engine settings): AdamW
(fused), weight decay on weight matrices only (not biases or LayerNorm), gradient norm clipped at
``max_grad_norm``, and a multiplier of the learning rate at step ``s`` (0-based)::

    warm-up:  (s + 1) / W                    for s < W
    decay:    max(0, (T - s) / (T - W))      for s >= W, with T = max_steps

When the run is limited only by time (``max_minutes``), ``T`` is unknown in advance, so the rate
stays constant at ``lr`` after the warm-up (the engine's ``warmup-constant``: a decay tied to an
estimated ``T`` would change with the machine's speed); ``after_optimizer_step(step, total_steps)``
then receives ``total_steps`` estimated from the pace so far. ``precision="bf16"`` runs the forward
pass and the loss under bfloat16 autocast, and backward, clipping and the AdamW step outside it
(weights, gradients and optimiser state stay float32): Lightning's ``bf16-mixed``.

Randomness: the data order is a function of ``(seed, epoch)``
(:class:`~contrastkit.modalities.text.data.SentenceBatchSampler`); torch's generator is reseeded from
``(seed, step, rank)`` before every step (views, crops, ICT's kept sentences); the Transformers'
dropout masks are drawn per sample from ``(seed, step, pass, the row's place in the batch of all
processes)`` (:mod:`contrastkit.modalities.text.dropout`), except under GradCache, which replays torch's
generator. The caller's random state is left as it was (:func:`contrastkit.core.seeding.seeded`).

Resume: a run bounded by ``max_steps`` resumes to the weights, AdamW state, schedule and method
buffers (a key encoder's moving average, queues) of the uninterrupted run, bit for bit. A run
bounded by ``max_minutes`` resumes with the rest of its time budget (the elapsed training time is
in the checkpoint); where it stops, and the ``total_steps`` estimate its methods see, depend on the
machine's speed, so it is not bit-exact. ``hybrid-distill`` keeps its frozen document tower in the
checkpoint and rebuilds the rest: the corpus embeddings (from the on-disk cache) and its
per-sentence cache of base embeddings (as the batches come; a sentence embedded in another batch
after the restart may differ in the last bits, so it resumes exactly up to float rounding).

Processes: with ``devices=N, strategy="ddp"`` each process trains ``batch_size`` sentences per step
(a global batch of N x ``batch_size``), the objectives compare each query with the keys of every
process (gathered with gradient) and DDP averages the gradients, so a step equals one process on
the concatenated batch (SimCSE, Contriever, ICT; tests/modalities/text/test_text_engine.py). Only the first
process evaluates and writes the summary and the encoder. GradCache trains in one process.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import yaml
from torch import nn

from contrastkit.engine.data import batch_loader
from contrastkit.engine.module import CHECKPOINT_KEY, EngineModule
from contrastkit.engine.run_folder import CHECKPOINT, is_first_process, open_run_dir, resolve_run_dir, write_summary
from contrastkit.engine.settings import TrainSettings
from contrastkit.engine.trainer import train
from contrastkit.core.errors import ConfigError
from contrastkit.core.safe_loading import START_AGAIN, read_torch_file
from contrastkit.core.seeding import seeded
from contrastkit.modalities.text.data import SentenceBatchSampler, SentenceData
from contrastkit.modalities.text.pair_data import DomainBatchSampler, PairData
from contrastkit.modalities.text.dropout import DropoutStream, sample_seeded_dropout

EvalFn = Callable[..., dict]
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}


def check_settings(batch_size: int, lr: float, max_steps: int | None, max_minutes: float | None,
                   warmup_steps: int, weight_decay: float, log_every: int, precision: str,
                   max_length: int | None) -> None:
    """The text command's own messages; the engine's settings check the rest."""
    if max_steps is None and max_minutes is None:
        raise ConfigError("Give the length of the run: --max-steps N, --max-minutes M, or both "
                          "(the run stops at whichever comes first).")
    if not lr > 0:
        raise ConfigError(f"--lr must be positive, got {lr}; sentence-transformers fine-tuning uses 1e-5 to 5e-5.")
    if warmup_steps < 0 or weight_decay < 0 or log_every < 1 or batch_size < 2:
        raise ConfigError(
            f"Invalid training settings: warmup_steps={warmup_steps} and weight_decay={weight_decay} must be "
            f">= 0, log_every={log_every} >= 1, batch_size={batch_size} >= 2."
        )
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if max_length is not None and max_length < 2:
        raise ConfigError(f"--max-length must be at least 2 tokens, got {max_length}.")


def check_data_kind(method: nn.Module, data: SentenceData | PairData) -> None:
    """Rows of (anchor, positive, negatives) for a method that ``needs_pairs``, sentences for the others."""
    name = getattr(method, "name", type(method).__name__.lower())
    if getattr(method, "needs_pairs", False) and not isinstance(data, PairData):
        raise ConfigError(f"The text method '{name}' trains on (anchor, positive[, negatives]) rows: give --data a "
                          ".csv, .tsv or .jsonl file with named columns (anchor, positive, negative_1, ...).")
    if getattr(method, "batches_by_domain", False) and getattr(data, "domains", None) is None:
        raise ConfigError(f"The text method '{name}' routes each row by its domain: give --data rows with a "
                          "'domain' column (anchor, positive, domain).")
    if not getattr(method, "needs_pairs", False) and isinstance(data, PairData):
        raise ConfigError(f"The text method '{name}' trains on unlabeled sentences, not on (anchor, positive) rows; "
                          "train 'mnrl' on rows, or give this method a lines file.")


class SentenceBatches(L.LightningDataModule):
    """The sentences as the engine's resumable loader, built once the process's rank is known."""

    def __init__(self, data: SentenceData | PairData, batch_size: int, seed: int, with_context: bool,
                 by_domain: bool = False):
        super().__init__()
        self.samples = data.samples(with_context)
        self.batch_size, self.seed = batch_size, seed
        self.domains = data.domains if by_domain else None  # batches of one domain each (mnrl-moe)

    def train_dataloader(self):
        if self.domains is not None:
            sampler = DomainBatchSampler(self.domains, self.batch_size, self.seed, self.trainer.global_rank,
                                         self.trainer.world_size)
            return batch_loader(self.samples, sampler)
        sampler = SentenceBatchSampler(len(self.samples), self.batch_size, self.seed, self.trainer.global_rank,
                                       self.trainer.world_size)
        return batch_loader(self.samples, sampler)


class TextModule(EngineModule):
    """The engine's module, plus what text adds: each step tells the per-sample dropout its step,
    ``elapsed_s`` (seconds since the run began, across resumes) is logged with the loss, and the
    gradient is clipped in the method's parameter order, also under bf16 with the fused AdamW."""

    def __init__(self, method: nn.Module, settings: TrainSettings, description: dict,
                 dropout: DropoutStream | None):
        super().__init__(method, settings, description)
        self.dropout = dropout
        self.elapsed_before = 0.0  # seconds of the run before this process resumed it
        self._started = time.perf_counter()

    def on_train_start(self) -> None:
        super().on_train_start()
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._started

    def training_step(self, batch, batch_idx):
        if self.dropout is not None:
            self.dropout.begin_step(self.global_step)
        self.log("elapsed_s", self.elapsed(), on_step=True, on_epoch=False)
        return super().training_step(batch, batch_idx)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's bf16-mixed plugin refuses to clip for an optimiser that unscales its own gradients
        # (the fused AdamW); bf16 has no loss scale, so clipping the float32 gradients is all there is to do.
        # In the method's parameter order (not the optimiser groups'): the norm's float sum is then the one
        # text runs have always clipped with.
        if gradient_clip_val:
            parameters = [p for p in self.method.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY]["elapsed_s"] = self.elapsed()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.elapsed_before = checkpoint.get(CHECKPOINT_KEY, {}).get("elapsed_s", 0.0)


def fit_text(method: nn.Module, data: SentenceData | PairData, *, batch_size: int, lr: float,
             max_steps: int | None = None, max_minutes: float | None = None, warmup_steps: int = 0,
             weight_decay: float = 0.01, seed: int = 0, out_dir: str | os.PathLike, log_every: int = 50,
             eval_fn: EvalFn | None = None, max_grad_norm: float | None = 1.0,
             max_length: int | None = None, device: str | torch.device | None = None,
             extra_summary: dict | None = None, precision: str = "fp32", resume: bool = False,
             checkpoint_every_steps: int | None = None, devices: int = 1, strategy: str = "auto",
             config: dict | None = None) -> dict:
    """Train ``method`` on ``data`` and write the run into ``out_dir`` (see the module docstring).

    Args:
        method: a text method (:mod:`contrastkit.modalities.text.methods` contract).
        data: the sentences; contexts are added to batches when ``method.needs_context``. Or, for a
            method that ``needs_pairs``, labelled rows (:class:`~contrastkit.modalities.text.pair_data.PairData`).
        batch_size: sentences per step and process.
        lr: peak learning rate of AdamW.
        max_steps, max_minutes: stop after this many optimiser steps and/or this much training
            time (evaluation excluded); at least one is required.
        warmup_steps: linear warm-up length.
        weight_decay: AdamW's decoupled weight decay on weight matrices (0.01 as sentence-transformers).
        seed: seeds the data order, dropout and views.
        out_dir: the run directory; it must not hold a run unless ``resume``.
        log_every: steps per metrics.csv row.
        eval_fn: called as ``eval_fn(method.encoder)`` before training and after; its dicts are
            stored in the summary as ``evaluation.before`` and ``evaluation.after``. A two-tower
            method (one with a ``document_encoder``, the frozen document side) is evaluated as
            ``eval_fn(method.encoder, document_encoder=method.document_encoder)``. A resumed run
            takes ``before`` from its checkpoint.
        max_grad_norm: clip the gradient's global norm (None: no clipping).
        max_length: tokens per text during training (default: the encoder's ``max_length``). The
            encoder's own value is restored afterwards, so it is saved and evaluated with the
            length it was loaded with (256 for all-MiniLM-L6-v2) even when trained on short inputs.
        device: where to train (default: where the method already is); ``cuda`` trains on GPUs.
        extra_summary: more entries for summary.json (e.g. the command's method name and options).
        precision: ``fp32``, or ``bf16`` to run the forward passes under bfloat16 autocast (weights,
            optimiser state and gradients stay float32; on CPUs with AVX512-BF16 a step is about
            twice as fast).
        resume: continue the run in ``out_dir`` from ``checkpoints/last.ckpt`` (build ``method``
            and ``data`` as for the first start).
        checkpoint_every_steps: also write the checkpoint every this many steps.
        devices, strategy: processes (Lightning's names); ``devices=2, strategy="ddp"`` trains
            in two processes, launched by re-running the command, so call it from a script.
        config: what config.yaml holds (default: the run's settings).

    Returns:
        The summary (also written to ``out_dir/summary.json``); ``{}`` in processes other than
        the first.

    Raises:
        TrainingError: the loss became NaN or infinite (the encoder is not saved).
    """
    check_settings(batch_size, lr, max_steps, max_minutes, warmup_steps, weight_decay, log_every, precision,
                   max_length)
    data.check_batch_size(batch_size)
    grad_cache = getattr(method, "grad_cache_chunk", None) is not None
    if grad_cache and devices != 1:
        raise ConfigError("GradCache (grad_cache_chunk) trains in one process: it recomputes each chunk in the "
                          "backward pass, which DDP does not allow. Use --devices 1, or drop --grad-cache-chunk.")
    run_dir = resolve_run_dir(out_dir, resume, getattr(method, "name", type(method).__name__.lower()))
    if device is not None:
        method.to(device)
    device = method.encoder.device
    with_context = bool(getattr(method, "needs_context", False))
    check_data_kind(method, data)
    summary: dict = {
        "method": getattr(method, "name", type(method).__name__.lower()),
        "data": data.name, "sentences": len(data), "batch_size": batch_size, "lr": lr,
        "max_steps": max_steps, "max_minutes": max_minutes, "warmup_steps": warmup_steps,
        "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "seed": seed,
        "schedule": "linear warm-up, linear decay" if max_steps is not None else "linear warm-up, constant",
        "max_length": max_length or method.encoder.max_length, "precision": precision,
        "dropout": "torch's (GradCache replays it)" if grad_cache else "per sample (contrastkit.modalities.text.dropout)",
        **({"negatives_per_row": data.negatives_per_row} if isinstance(data, PairData) else {}),
        **(extra_summary or {}),
    }
    document_encoder = getattr(method, "document_encoder", None)
    if document_encoder is not None:
        # A two-tower method trains the query side only: documents keep the base model's embeddings.
        summary["documents_embedded_by"] = "the base model, frozen (document_encoder/)"
    open_run_dir(run_dir, yaml.safe_dump(config if config is not None else summary, sort_keys=False))

    evaluation = {}
    if eval_fn is not None and is_first_process():
        evaluation["before"] = (_checkpoint_description(run_dir).get("evaluation_before") if resume else None) \
            or _evaluate(eval_fn, method.encoder, document_encoder)
    settings = TrainSettings(
        optimizer="adamw", lr=lr, weight_decay=weight_decay, schedule="warmup-linear", warmup_steps=warmup_steps,
        max_grad_norm=max_grad_norm, max_steps=max_steps, max_minutes=max_minutes,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index] if device.index is not None and devices == 1 else devices,
        # The pooler of a Hugging Face model takes no part in any text loss; DDP must expect unused parameters.
        strategy="ddp_find_unused_parameters_true" if strategy == "ddp" else strategy,
        precision=PRECISIONS[precision], seed=seed, batch_size=batch_size,
        checkpoint_every_steps=checkpoint_every_steps, log_every_steps=log_every,
    )
    description = {"modality": "text", "settings": summary, "evaluation_before": evaluation.get("before")}

    inference_length = method.encoder.max_length
    try:
        method.encoder.max_length = max_length or inference_length
        # The engine sets the training mode (dropout on, the method's frozen towers in eval) before the first step.
        with seeded(seed, device), _dropout(method, seed, grad_cache) as dropout:
            module = TextModule(method, settings, description, dropout)
            batches = SentenceBatches(data, batch_size, seed, with_context, getattr(method, "batches_by_domain", False))
            result = train(method, batches, settings, run_dir,
                           resume=resume, module=module)
    finally:
        method.encoder.max_length = inference_length
    if not result.is_global_zero:
        return {}
    method.to(device)  # Lightning hands the model back on the CPU
    trainer, throughput = result.trainer, result.throughput
    steps = trainer.global_step
    train_seconds = throughput.seconds
    per_epoch = max(1, len(data) // (batch_size * trainer.world_size))
    summary.update({
        "steps": steps, "epochs": round(steps / per_epoch, 4),
        "stopped_by": "max_steps" if max_steps is not None and steps >= max_steps else "time_budget",
        "train_seconds": round(train_seconds, 2), "steps_per_second": round(steps / max(train_seconds, 1e-9), 4),
        "fit_call_seconds": round(result.seconds, 2), "world_size": trainer.world_size,
        "global_batch_size": batch_size * trainer.world_size, "out": str(run_dir),
    })
    method.encoder.save(run_dir / "encoder")
    summary["encoder_dir"] = str(run_dir / "encoder")
    if document_encoder is not None:
        # Saved beside the query tower, so the run alone is enough to retrieve with (its base may
        # be a random-small draw or a folder that later changes).
        document_encoder.save(run_dir / "document_encoder")
        summary["document_encoder_dir"] = str(run_dir / "document_encoder")
    if eval_fn is not None:
        evaluation["after"] = _evaluate(eval_fn, method.encoder, document_encoder)
        summary["evaluation"] = evaluation
    write_summary(run_dir, summary)
    return summary


def _dropout(method: nn.Module, seed: int, grad_cache: bool):
    """Per-sample dropout for the run, or torch's under GradCache (which replays torch's generator)."""
    return contextlib.nullcontext() if grad_cache else sample_seeded_dropout(method, seed)


def _checkpoint_description(run_dir: Path) -> dict:
    checkpoint = read_torch_file(run_dir / CHECKPOINT, alternative=START_AGAIN, mmap=True)
    return checkpoint.get(CHECKPOINT_KEY, {}) if isinstance(checkpoint, dict) else {}


def _evaluate(eval_fn: EvalFn, encoder: nn.Module, document_encoder: nn.Module | None) -> dict:
    return eval_fn(encoder) if document_encoder is None else eval_fn(encoder, document_encoder=document_encoder)
