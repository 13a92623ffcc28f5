"""``train``: run a method under the engine, with checkpoints, resume, DDP and a metrics log.

Every modality's pretraining goes through here::

    module = train(method, loader, settings, run_dir, resume=False, description={...})

``loader`` is a :class:`~contrastkit.engine.data.ResumableLoader` or a LightningDataModule whose
``train_dataloader`` returns one (built once the rank and world size are known). The trainer
writes ``metrics.csv`` (appending on resume) and ``checkpoints/last.ckpt`` (atomically, every epoch
and every ``settings.checkpoint_every_steps`` steps); ``resume=True`` continues from that file,
in the middle of an epoch if that is where it was written. Runs bounded by ``max_steps`` or
``max_epochs`` resume to the weights, optimiser state and method buffers of an uninterrupted run,
bit for bit; a run bounded by ``max_minutes`` resumes with the rest of its time budget (Lightning
saves the elapsed time in the checkpoint), so where it stops depends on the machine's speed.

The checkpoint a resume reads is unpickled without running code (``weights_only=True``, here and in
Lightning's own load; :mod:`contrastkit.core.safe_loading`): a ``last.ckpt`` replaced by a file that
carries code is refused with a DataError, unless ``trust_checkpoint=True``.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch.distributed as dist
from torch import nn

from contrastkit.core.errors import DataError
from contrastkit.core.safe_loading import START_AGAIN, read_torch_file
from contrastkit.engine.callbacks import Checkpointing, Throughput
from contrastkit.engine.checkpoint import AtomicCheckpointIO
from contrastkit.engine.data import ResumableLoader
from contrastkit.engine.init_weights import load_initial_weights, write_init_record
from contrastkit.engine.metrics_log import LAST_STEP_ROW, trim_after_step
from contrastkit.engine.module import EngineModule
from contrastkit.engine.run_folder import CHECKPOINT, claim_run_dir, is_first_process, release_run_dir
from contrastkit.engine.settings import TrainSettings
from contrastkit.engine.trackers import build_loggers, finish_trackers, log_settings


@dataclass
class TrainResult:
    module: EngineModule
    trainer: L.Trainer
    throughput: Throughput
    seconds: float  # this call's trainer.fit, callbacks included

    @property
    def is_global_zero(self) -> bool:
        return self.trainer.is_global_zero


def make_trainer(settings: TrainSettings, run_dir: Path, callbacks: list[L.Callback],
                 progress_bar: bool | None = None) -> L.Trainer:
    return L.Trainer(
        max_epochs=settings.max_epochs if settings.max_epochs is not None else -1,
        max_steps=settings.max_steps if settings.max_steps is not None else -1,
        max_time={"seconds": 60.0 * settings.max_minutes} if settings.max_minutes is not None else None,
        accelerator=settings.accelerator,
        devices=settings.devices,
        strategy=settings.strategy,
        num_nodes=settings.num_nodes,
        precision=settings.precision,
        deterministic=settings.deterministic,
        gradient_clip_val=settings.max_grad_norm,
        gradient_clip_algorithm="norm" if settings.max_grad_norm is not None else None,
        default_root_dir=run_dir,
        logger=build_loggers(settings.loggers, run_dir, flush_every_steps=10),  # metrics.csv + --logger's
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # our samplers shard by rank themselves (engine/data.py)
        enable_checkpointing=False,  # Checkpointing writes last.ckpt
        enable_model_summary=False,
        enable_progress_bar=os.isatty(2) if progress_bar is None else progress_bar,
        # A run shorter than the logging interval still logs its last step (metrics.csv is never empty).
        log_every_n_steps=min(settings.log_every_steps, settings.max_steps or settings.log_every_steps),
        num_sanity_val_steps=0,
    )


def train(method: nn.Module, data: ResumableLoader | L.LightningDataModule, settings: TrainSettings,
          run_dir: str | os.PathLike, *, resume: bool = False, description: dict | None = None,
          callbacks: list[L.Callback] = (), module: EngineModule | None = None,
          progress_bar: bool | None = None, trust_checkpoint: bool = False,
          resume_alternative: str | None = None) -> TrainResult:
    """Train ``method`` on ``data`` into ``run_dir`` (see the module docstring).

    ``callbacks`` run before the checkpoint at the end of an epoch (probes log first, and their
    state is saved with it). ``module`` replaces the default :class:`EngineModule` (a modality's
    subclass with its own ``setup``). ``trust_checkpoint=True`` resumes from a checkpoint that
    carries code, running it; ``resume_alternative`` ends the refusal's message otherwise (what
    the command offers instead). With ``settings.init`` (``--init``), a run that is not resumed first
    loads those weights into the method's encoder (:mod:`contrastkit.engine.init_weights`) and
    writes ``init.json`` saying what it loaded."""
    run_dir = Path(run_dir)
    claim_run_dir(run_dir)
    try:
        return _train(method, data, settings, run_dir, resume, description, callbacks, module, progress_bar,
                      trust_checkpoint, resume_alternative)
    finally:
        # From here the folder holds a checkpoint (or the run failed): a second run is refused by
        # the checkpoint, or may start again.
        release_run_dir(run_dir)


def _train(method, data, settings, run_dir, resume, description, callbacks, module, progress_bar,
           trust_checkpoint, resume_alternative) -> TrainResult:
    if settings.init is not None and not resume:  # a resumed run restores its weights from its checkpoint
        record = load_initial_weights(method, settings.init)
        if is_first_process():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_init_record(run_dir, record)
    throughput = Throughput(batch_size=settings.batch_size)
    checkpointing = Checkpointing(run_dir / CHECKPOINT, settings.checkpoint_every_steps)
    trainer = make_trainer(settings, run_dir, [throughput, *callbacks, checkpointing], progress_bar)
    if not resume:  # a tracker's parameters are fixed once logged (MLflow refuses a changed one)
        log_settings(trainer.loggers, settings)
    module = module if module is not None else EngineModule(method, settings, description)
    resume_from = run_dir / CHECKPOINT if resume else None
    if resume_from is not None:
        # Every process reads it first: a refused file is one clear error on each, before any of
        # them starts the process group.
        checkpoint = read_torch_file(resume_from, trust=trust_checkpoint,
                                     alternative=resume_alternative or START_AGAIN)
        if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
            raise DataError(f"'{resume_from}' is not a checkpoint of a run (no 'global_step'); start the run "
                            f"again without resuming it.")
        if is_first_process():
            trim_after_step(run_dir / "metrics.csv", checkpoint["global_step"], checkpoint.get(LAST_STEP_ROW))
        del checkpoint
    # Lightning keeps the modes it finds: a Hugging Face model loads in eval mode (no dropout), and a
    # method keeps its frozen parts in eval through its own train() (gcl-local's encoder, whose BatchNorm
    # statistics must not move; hybrid-distill's teacher). Applied here, it holds from the first step on,
    # and a module still in eval mode is so on purpose: Lightning's warning about those is not shown.
    method.train()
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            if isinstance(data, L.LightningDataModule):
                trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=not trust_checkpoint)
            else:
                trainer.fit(module, train_dataloaders=data, ckpt_path=resume_from, weights_only=not trust_checkpoint)
    finally:
        finish_trackers(trainer.loggers)
    seconds = time.perf_counter() - started
    leave_process_group()
    return TrainResult(module, trainer, throughput, seconds)


def leave_process_group() -> None:
    """End a multi-process run's process group on every process, together.

    Lightning leaves the group alive after ``fit``. A DDP child that then exits while the first
    process still encodes and writes destroys the group's gloo threads at interpreter exit, and
    that aborts it now and then ("terminate called without an active exception", the launcher
    then kills the first process too). A barrier and an explicit destroy end it cleanly; what
    follows ``train`` is single-process work (encoding, the summary, the report). A later
    ``train`` in the same processes starts a new group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
