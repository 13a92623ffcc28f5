"""`contrastkit fit`: pretrain, evaluate against baselines, and write the run directory.

The run directory (``--out``) holds::

    config.yaml        the resolved configuration
    checkpoints/last.ckpt   written atomically at the end of every epoch (--resume continues it)
    metrics.csv        Lightning's CSV log: train/loss per step, probe/* and diag/* per epoch
    embeddings.npy     representations of every sample (training part first, then held-out)
    labels.npy         their labels, when the data has labels
    split.json         which rows of embeddings.npy are training and held-out samples
    rows.npy           the sample of --data that each row of embeddings.npy embeds
    summary.json       figures of the run and of the baselines (untrained encoder, raw pixels)
    report.md + *.png  the report

Evaluation protocol: when the data has labels, a stratified ``--holdout`` share of it is kept out
of pretraining. kNN and linear probes are fit on the training part's representations (the probes'
only labels) and scored on the held-out part. The same split serves the trained encoder, the
untrained encoder (the same architecture at its initial weights; with ``--init``, the pretrained
weights the run starts from) and raw pixels.

``--data shards:DIR`` streams a shard folder instead of decoding the set into memory; what changes
then (bounded statistics, probe and evaluation samples) is in :mod:`contrastkit.modalities.image.training.run_data`.

Global BatchNorm: with more than one process, BatchNorm layers normalise over the global batch
when the method's recipe calls for it (``methods/parts.GLOBAL_BATCHNORM_RECIPES``), unless
``--no-sync-batchnorm``; ``--sync-batchnorm`` forces it. summary.json says which and why.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch

from contrastkit.modalities.image.config import FitConfig, scaled_lr, to_yaml, validate
from contrastkit.engine.run_folder import RUN_DIR_ENV, is_first_process, open_run_dir, resolve_run_dir, write_split
from contrastkit.engine.init_weights import initial_weights_record, load_initial_weights
from contrastkit.engine.trainer import train
from contrastkit.core.init_source import requested_init
from contrastkit.core.errors import ConfigError
from contrastkit.core.safe_loading import TRUST_OPTION
from contrastkit.evaluation.diagnostics import effective_rank
from contrastkit.evaluation.protocol import evaluate_embeddings
from contrastkit.nn.global_batchnorm import convert_to_global_batchnorm
from contrastkit.modalities.image.methods import build_method, image_builder
from contrastkit.modalities.image.methods.parts import GLOBAL_BATCHNORM_RECIPES, DataInfo, built_backbone_name
from contrastkit.objectives import OBJECTIVES
from contrastkit.modalities.image.training.callbacks import (
    OnlineProbe,
    embed_and_project,
    embed_images,
    objective_space_report,
)
from contrastkit.modalities.image.training.module import SSLModule
from contrastkit.modalities.image.training.run_data import RunData, data_seed, open_run_data
from contrastkit.modalities.image.views.image import EvalView

__all__ = ["RUN_DIR_ENV", "fit", "global_batchnorm_choice", "is_first_process", "raw_pixels"]


def fit(config: FitConfig, *, trust_checkpoint: bool = False) -> dict:
    """Train ``config.method`` on ``config.data`` and write the run directory; return the summary.
    With ``config.resume``, ``trust_checkpoint=True`` resumes from a last.ckpt that carries code,
    and so runs that code (otherwise such a file is refused: :mod:`contrastkit.core.safe_loading`)."""
    config = validate(config)
    image_builder(config.method)  # unknown names fail now, not after the data has loaded
    if config.objective is not None:
        OBJECTIVES.factory(config.objective)
    run_dir = resolve_run_dir(config.out, config.resume, f"{config.method}-{Path(config.data).name}")
    config = dataclasses.replace(config, out=str(run_dir))
    L.seed_everything(config.seed, workers=True, verbose=False)

    run_data = open_run_data(config)
    data = run_data.info
    method = build_method(config.method, config, data)
    check_batch_fits(len(run_data.train_rows), config)
    global_batchnorm, global_batchnorm_reason = global_batchnorm_choice(config, method)
    if global_batchnorm:
        convert_to_global_batchnorm(method)
    init = requested_init() if not config.resume else None
    if init is not None:  # --init: before the baseline's copy, so that it scores the weights the run starts from
        load_initial_weights(method, init)
    untrained = copy.deepcopy(method)  # the baseline: same architecture, same initial weights
    # Written only now that the data loaded and the method built: a run that fails on bad input
    # leaves no directory behind that would block the corrected command.
    open_run_dir(run_dir, to_yaml(config))

    probe = make_probe(run_data, config.probe_every, warn_from_epoch=max(1, math.ceil(config.warmup_epochs)))
    module = SSLModule(method, config, data)
    result = train(method, run_data.datamodule, module.settings, run_dir, resume=config.resume,
                   callbacks=[probe] if probe else [], module=module, trust_checkpoint=trust_checkpoint,
                   resume_alternative=f"Start the run again without --resume, or, if you know who made this "
                                      f"checkpoint and trust them, pass {TRUST_OPTION}, which runs its code.")
    trainer, throughput, seconds = result.trainer, result.throughput, result.seconds
    if not trainer.is_global_zero:
        return {}

    summary = {
        "method": config.method,
        "objective": config.objective,
        "data": config.data,
        "out": str(run_dir),
        "backbone": built_backbone_name(method, config.backbone, data.image_size),
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
    if initial_weights_record(method) is not None:
        summary["init"] = initial_weights_record(method).as_dict()
    summary.update(evaluate_run(method, untrained if config.baselines else None, run_data, run_dir, data_seed(config)))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if config.report:
        from contrastkit.report import write_report

        write_report(run_dir, tsne=config.tsne)
    return summary


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
    # Which sample of --data each row of embeddings.npy is (in memory: the data's row numbers; streamed,
    # a sample of the set: global ids in the shard folder), so that rows chosen from the embeddings
    # (contrastkit select) name the data's samples.
    np.save(run_dir / "rows.npy", order)
    write_split(run_dir, np.arange(n_train), np.arange(n_train, len(order)), rows="rows.npy")
    results: dict = {"collapse": _jsonable(objective_space_report(method, images, device, projected)),
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
