"""`contrastkit fit`: pretrain, evaluate against baselines, and write the run directory.

The run directory (``--out``) holds::

    config.yaml        the resolved configuration
    checkpoints/last.ckpt   written atomically at the end of every epoch (--resume continues it)
    metrics.csv        Lightning's CSV log: train/loss per step, probe/* and diag/* per epoch
    embeddings.npy     representations of every sample (training part first, then held-out)
    labels.npy         their labels, when the data has labels
    split.json         which rows of embeddings.npy are training and held-out samples
    summary.json       figures of the run and of the baselines (untrained encoder, raw pixels)
    report.md + *.png  the report

Evaluation protocol: when the data has labels, a stratified ``--holdout`` share of it is kept out
of pretraining. kNN and linear probes are fit on the training part's representations (the probes'
only labels) and scored on the held-out part. The same split serves the trained encoder, the
untrained encoder (the same architecture at its initial weights) and raw pixels.

``--data shards:DIR`` streams a shard folder instead of decoding the set into memory; what changes
then (bounded statistics, probe and evaluation samples) is in :mod:`contrastkit.training.run_data`.

Global BatchNorm: with more than one process, BatchNorm layers normalise over the global batch
when the method's recipe calls for it (``methods/_parts.GLOBAL_BATCHNORM_RECIPES``), unless
``--no-sync-batchnorm``; ``--sync-batchnorm`` forces it. summary.json says which and why.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from contrastkit.config import FitConfig, scaled_lr, to_yaml, validate
from contrastkit.errors import ConfigError
from contrastkit.evaluation.diagnostics import collapse_report, effective_rank
from contrastkit.evaluation.protocol import evaluate_embeddings
from contrastkit.global_batchnorm import convert_to_global_batchnorm
from contrastkit.methods import METHODS
from contrastkit.methods._parts import GLOBAL_BATCHNORM_RECIPES, DataInfo, backbone_name
from contrastkit.objectives import OBJECTIVES
from contrastkit.training.callbacks import (
    EpochCheckpoint,
    OnlineProbe,
    Throughput,
    embed_and_project,
    embed_images,
)
from contrastkit.training.checkpoint import AtomicCheckpointIO
from contrastkit.training.metrics_log import ResumableCSVLogger, trim_after_epoch
from contrastkit.training.module import SSLModule
from contrastkit.training.run_data import RunData, open_run_data
from contrastkit.views.image import EvalView

RUN_DIR_ENV = "CONTRASTKIT_RUN_DIR"  # set by rank 0 so that DDP child processes use the same directory


def fit(config: FitConfig) -> dict:
    """Train ``config.method`` on ``config.data`` and write the run directory; return the summary."""
    config = validate(config)
    METHODS.factory(config.method)  # unknown names fail now, not after the data has loaded
    if config.objective is not None:
        OBJECTIVES.factory(config.objective)
    run_dir = resolve_run_dir(config)
    config = dataclasses.replace(config, out=str(run_dir))
    L.seed_everything(config.seed, workers=True, verbose=False)

    run_data = open_run_data(config)
    data = run_data.info
    method = METHODS.build(config.method, config=config, data=data)
    check_batch_fits(len(run_data.train_rows), config)
    global_batchnorm, global_batchnorm_reason = global_batchnorm_choice(config, method)
    if global_batchnorm:
        convert_to_global_batchnorm(method)
    untrained = copy.deepcopy(method)  # the baseline: same architecture, same initial weights
    # Written only now that the data loaded and the method built: a run that fails on bad input
    # leaves no directory behind that would block the corrected command.
    write_run_config(run_dir, config)

    probe = make_probe(run_data, config.probe_every, warn_from_epoch=max(1, math.ceil(config.warmup_epochs)))
    throughput = Throughput()
    checkpoint = EpochCheckpoint(run_dir / "checkpoints" / "last.ckpt")
    callbacks = [throughput, *([probe] if probe else []), checkpoint]
    trainer = make_trainer(config, run_dir, callbacks)
    module = SSLModule(method, config, data)
    datamodule = run_data.datamodule
    resume_from = checkpoint.path if config.resume else None
    if resume_from is not None and is_first_process():
        trim_after_epoch(run_dir / "metrics.csv", torch.load(resume_from, map_location="cpu", weights_only=False)["epoch"])
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {}

    summary = {
        "method": config.method,
        "objective": config.objective,
        "data": config.data,
        "out": str(run_dir),
        "backbone": backbone_name(config.backbone, data.image_size),
        "epochs": config.epochs,
        "seconds": round(throughput.epoch_seconds, 2),  # training epochs' wall time, across resumes
        "samples_per_second": round(throughput.samples_per_second, 2),  # inside training steps
        "train_seconds": round(throughput.seconds, 2),  # inside training steps, across resumes
        "fit_call_seconds": round(seconds, 2),  # this invocation's trainer.fit, probes included
        "world_size": trainer.world_size,
        "per_process_batch_size": config.batch_size,
        "global_batch_size": config.batch_size * trainer.world_size,
        "lr": scaled_lr(config, config.batch_size * trainer.world_size),
        "sync_batchnorm": global_batchnorm,
        "sync_batchnorm_reason": global_batchnorm_reason,
        **run_data.describe(),
        "parameters": sum(p.numel() for p in method.parameters()),
        "skipped_steps": module.skipped_steps,
        "collapse_warnings": probe.collapse_warnings if probe else [],
    }
    summary.update(evaluate_run(method, untrained if config.baselines else None, run_data, run_dir, config.seed))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if config.report:
        from contrastkit.report import write_report

        write_report(run_dir, tsne=config.tsne)
    return summary


def is_first_process() -> bool:
    """Rank 0 of node 0, also before Lightning has launched (or in a launched DDP child)."""
    return int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0")) == 0


def make_trainer(config: FitConfig, run_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=config.precision,
        deterministic=config.deterministic,
        default_root_dir=run_dir,
        logger=ResumableCSVLogger(run_dir, name="", version="", flush_logs_every_n_steps=10),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # our sampler shards by rank itself (see training/data.py)
        enable_checkpointing=False,  # EpochCheckpoint writes last.ckpt
        enable_model_summary=False,
        enable_progress_bar=os.isatty(2),
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )


def resolve_run_dir(config: FitConfig) -> Path:
    """The run directory; refuse to reuse one that holds a run unless resuming (nothing is written)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and not is_first_process():
        return Path(inherited)  # a DDP child process: rank 0 chose the directory
    if config.out is None:
        if config.resume:
            raise ConfigError("--resume needs --out: the run directory to continue.")
        name = f"{config.method}-{Path(config.data).name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path("runs") / name
    else:
        run_dir = Path(config.out)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if config.resume:
        if not checkpoint.is_file():
            raise ConfigError(
                f"--resume: no checkpoint at '{checkpoint}'. A run directory holds checkpoints/last.ckpt once "
                f"its first epoch has finished; start the run again without --resume."
            )
    elif checkpoint.exists() or (run_dir / "summary.json").exists():
        raise ConfigError(
            f"The run directory '{run_dir}' already holds a run; nothing in it is overwritten. "
            f"Pass --resume to continue it, or choose another --out."
        )
    elif is_first_process() and (run_dir / "metrics.csv").exists():
        # A run that died before its first checkpoint cannot be resumed; it starts again here, and
        # the little it logged is kept beside the new log.
        (run_dir / "metrics.csv").rename(run_dir / f"metrics-aborted-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    return run_dir


def process_count(config: FitConfig) -> int:
    """Processes that train together: devices per node x nodes."""
    return config.devices * config.num_nodes if isinstance(config.devices, int) else 1


def global_batchnorm_choice(config: FitConfig, method: torch.nn.Module) -> tuple[bool, str]:
    """(whether BatchNorm normalises over the global batch, why), before the method is converted.

    The explicit ``--sync-batchnorm`` / ``--no-sync-batchnorm`` wins. Otherwise: with one process it
    is not needed (BatchNorm already sees the whole batch); with several, the method's recipe decides.
    ``--sync-batchnorm`` converts a one-process run too: the result is the same BatchNorm up to
    float rounding, computed by the same code as the multi-process run it is compared with.
    """
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in method.modules()):
        return False, "the model has no BatchNorm"
    if config.sync_batchnorm is not None:
        return config.sync_batchnorm, f"--{'' if config.sync_batchnorm else 'no-'}sync-batchnorm"
    if process_count(config) == 1:
        return False, "one process: BatchNorm already sees the whole batch"
    recipe = GLOBAL_BATCHNORM_RECIPES.get(config.method)
    if recipe is None:
        return False, f"the recipe of '{config.method}' keeps per-process BatchNorm statistics"
    return True, f"the method's recipe: {recipe}"


def check_batch_fits(num_samples: int, config: FitConfig) -> None:
    processes = process_count(config)
    if config.batch_size * processes > num_samples:
        raise ConfigError(
            f"--batch-size {config.batch_size} (x {processes} processes) is larger than the {num_samples} "
            f"training samples of '{config.data}'. Lower --batch-size to at most {num_samples // processes}, "
            f"or use more data (--holdout and --limit reduce it)."
        )


def write_run_config(run_dir: Path, config: FitConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_first_process():
        (run_dir / "config.yaml").write_text(to_yaml(config))
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())


def make_probe(run_data: RunData, every: int, warn_from_epoch: int) -> OnlineProbe | None:
    """The online probe on a fixed, seeded subset (at most 5,000 bank and 2,000 query images)."""
    rows = run_data.probe_rows()
    if every <= 0 or rows is None:
        return None
    bank, queries = rows
    labels = torch.from_numpy(run_data.labels)
    return OnlineProbe(run_data.read(bank), labels[bank], run_data.read(queries), labels[queries],
                       every=every, warn_from_epoch=warn_from_epoch)


def evaluate_run(method, untrained: torch.nn.Module | None, run_data: RunData, run_dir: Path, seed: int) -> dict:
    """Embed the evaluation rows (every sample in memory; a bounded sample when streaming) with the
    trained and untrained encoders, save the embeddings, and score them and raw pixels with the
    same held-out protocol."""
    data = run_data.info
    order, n_train = run_data.eval_rows, run_data.eval_train
    images = run_data.read(order)
    device = next(method.parameters()).device
    learned, projected = embed_and_project(method, images, device)
    learned = learned.numpy()
    np.save(run_dir / "embeddings.npy", learned)
    split = {"train": [0, n_train], "holdout": [n_train, len(order)]}
    if run_data.streamed:  # a sample of the set: which samples (global ids in the shard folder)
        np.save(run_dir / "rows.npy", order)
        split["rows"] = "rows.npy"
    (run_dir / "split.json").write_text(json.dumps(split))
    results: dict = {"collapse": _jsonable(collapse_report(projected)),
                     "rankme": float(effective_rank(torch.from_numpy(learned)))}
    if run_data.labels is None or n_train == len(order):
        return results
    labels = run_data.labels[order]
    np.save(run_dir / "labels.npy", labels)
    train_index = np.arange(n_train)
    test_index = np.arange(n_train, len(order))

    def score(embeddings: np.ndarray) -> dict:
        figures = evaluate_embeddings(embeddings, labels, seed=seed, train_index=train_index, test_index=test_index)
        return {k: v for k, v in figures.items() if k not in ("n_train", "n_test")}

    results.update(score(learned))
    results["n_train"], results["n_test"] = n_train, len(order) - n_train
    if untrained is not None:
        results["baselines"] = {
            "untrained": score(embed_images(untrained, images, device).numpy()),
            "raw": score(raw_pixels(images, data)),
        }
    return results


def raw_pixels(images: torch.Tensor, data: DataInfo) -> np.ndarray:
    """The input itself as the encoder sees it: pixels normalised per channel with the training
    part's mean and std (the eval view), flattened. Centring matters for the cosine kNN: on pixels
    in [0, 1] every pair of images has a large positive cosine dominated by brightness."""
    view = EvalView(mean=data.mean, std=data.std)
    with torch.inference_mode():
        return torch.cat([view(images[i : i + 1024]).flatten(1) for i in range(0, len(images), 1024)]).numpy()


def _jsonable(report: dict) -> dict:
    out = {}
    for key, value in report.items():
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out
