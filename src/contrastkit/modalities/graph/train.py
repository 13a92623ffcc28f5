"""Training the graph methods on the engine: full graph, or node batches for large graphs.

A graph method is an engine method (:mod:`contrastkit.engine.module`): ``training_loss(batch)``
where the batch is the whole :class:`~contrastkit.modalities.graph.sources.Graph` (one optimiser step per
epoch), or with ``batch_size`` a node batch (:mod:`contrastkit.modalities.graph.data`). Two optional hooks:

* ``before_training(graph)``: work before the first step (SCGC's autoencoder start, an auxiliary
  fit); skipped when a run resumes from a checkpoint, which holds its result;
* ``on_epoch_start(epoch, graph)``: work at the start of an epoch (SCGC's k-means centres), run
  with torch's generator seeded by (seed, epoch), so a resumed run draws what an uninterrupted one
  draws.

The engine sees the whole run as one of its epochs (:class:`~contrastkit.modalities.graph.data.RunSampler`)
and a checkpoint every graph epoch is a step checkpoint (``checkpoint_every_steps``); graph
epochs are counted from the global step. Why: Lightning resumes an engine epoch-end checkpoint
as "restarted on epoch end" -- it does not call ``on_train_epoch_start`` for the next epoch and,
with several batches an epoch, cuts that epoch short -- while a checkpoint inside an epoch
resumes exactly. With the full graph every epoch end would be a checkpoint.

Optimiser and schedule (:func:`train_settings`): Adam with weight decay on every parameter (the
official GraphMAE, GRACE and SCGC code: ``torch.optim.Adam(model.parameters(), lr, weight_decay)``),
and optionally GraphMAE's cosine decay of the rate to 0, lr_s = lr (1 + cos(pi s / T)) / 2 at step
s of T -- the engine's ``warmup-cosine`` without warm-up; with the full graph s is the epoch and T
the epochs, GraphMAE's ``LambdaLR`` exactly.

Model selection: none. Every run trains for the fixed number of epochs of its configuration
(the paper's where it gives one) and the final model is evaluated; no label of any split is
looked at during training. Reproducible: the caller seeds the initialisation
(:func:`seed_everything` before the model is built); the engine reseeds torch before every step
from (seed, step, rank).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import Dataset

from contrastkit.engine import TrainSettings, batch_loader, train
from contrastkit.engine.run_folder import CHECKPOINT, is_first_process, open_run_dir, resolve_run_dir
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.graph.data import SAMPLERS, NodeBatchSampler, NodeSamples, RunSampler, WholeGraph
from contrastkit.report.run_files import read_metrics_csv
from contrastkit.core.seeding import seeded
from contrastkit.modalities.graph.sources import Graph


@dataclass
class GraphTrainConfig:
    """Optimiser, schedule, length, batches and devices of a graph run.

    Adam(lr, weight_decay on every parameter), with ``cosine_schedule`` the rate decays to 0 over
    the run (lr_t = lr * (1 + cos(pi t / T)) / 2, GraphMAE's schedule). The run stops after
    ``epochs`` epochs, or ``max_steps`` optimiser steps if that comes first (the schedule then
    spans ``max_steps``). ``batch_size``: node batches instead of the full graph."""

    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    cosine_schedule: bool = False
    batch_size: int | None = None
    sampler: str = "random"  # or "neighbourhood"
    walk_length: int = 3
    seed: int = 0
    log_every: int = 50
    max_steps: int | None = None
    checkpoint_every_steps: int | None = None
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}.")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"Unknown node sampler '{self.sampler}'. Valid samplers: {', '.join(SAMPLERS)}.")


def run_steps(config: GraphTrainConfig, steps_per_epoch: int) -> int:
    """The optimiser steps of the run: ``epochs * steps_per_epoch``, or ``max_steps`` if smaller."""
    total = config.epochs * steps_per_epoch
    return min(total, config.max_steps or total)


def train_settings(config: GraphTrainConfig, steps_per_epoch: int) -> TrainSettings:
    """The engine's settings for ``config`` (see the module docstring for the optimiser): the run's
    length in steps, and a checkpoint every epoch and every ``checkpoint_every_steps`` steps (every
    gcd of the two: a step checkpoint, see the module docstring)."""
    return TrainSettings(
        optimizer="adam", lr=config.lr, weight_decay=config.weight_decay, decay_everything=True,
        schedule="warmup-cosine" if config.cosine_schedule else "constant", warmup_steps=0,
        max_steps=run_steps(config, steps_per_epoch),
        accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
        seed=config.seed, batch_size=config.batch_size or 1,
        checkpoint_every_steps=math.gcd(config.checkpoint_every_steps or steps_per_epoch, steps_per_epoch),
        log_every_steps=1,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch: call before building a method, so its initialisation is seeded."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_start_seed(seed: int, epoch: int) -> int:
    """The seed of torch's generator for a method's ``on_epoch_start`` (the same on every process,
    unlike the steps' seeds, so that every process places the same k-means centres)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class RankedData(L.LightningDataModule):
    """A resumable loader over ``samples``, its batch sampler built once the process's rank and the
    number of processes are known: ``make_sampler(rank, num_replicas)``."""

    def __init__(self, samples: Dataset, make_sampler: Callable[[int, int], object]):
        super().__init__()
        self.samples, self.make_sampler = samples, make_sampler

    def train_dataloader(self):
        return batch_loader(self.samples, self.make_sampler(self.trainer.global_rank, self.trainer.world_size))


def graph_data(graph: Graph, config: GraphTrainConfig, node_ids: bool) -> tuple[RankedData, int]:
    """The run's batches as one engine epoch (:class:`~contrastkit.modalities.graph.data.RunSampler`): the
    whole graph once per graph epoch, or node batches (``config.batch_size``); and the optimiser
    steps of a graph epoch (the batches of one process)."""
    if not config.batch_size or config.batch_size >= graph.num_nodes:
        whole = RunSampler(lambda epoch: [[0]], run_steps(config, 1))
        return RankedData(WholeGraph(graph), lambda rank, replicas: whole), 1

    def node_batches(rank: int, replicas: int) -> NodeBatchSampler:
        return NodeBatchSampler(graph, config.batch_size, config.sampler, config.walk_length, config.seed, rank,
                                replicas)

    def make_sampler(rank: int, replicas: int) -> RunSampler:
        epochs = node_batches(rank, replicas)
        return RunSampler(epochs.batches_of_epoch, run_steps(config, len(epochs)))

    return RankedData(NodeSamples(graph, node_ids), make_sampler), len(node_batches(0, config.devices))


class EpochHooks(L.Callback):
    """Graph epochs inside the engine's one epoch: at each epoch's first step the method's
    ``on_epoch_start`` (torch seeded by (seed, epoch)); after its last, the epoch's mean of the
    logged training values, a log line every ``log_every`` epochs and ``after_epoch(epoch, record)``.
    Epochs are counted from the global step, so they survive a resume."""

    def __init__(self, method: nn.Module, graph: Graph, config: GraphTrainConfig, steps_per_epoch: int,
                 log: Callable[[str], None] | None, after_epoch: Callable[[int, dict[str, float]], None] | None):
        self.method, self.graph, self.config, self.steps_per_epoch = method, graph, config, steps_per_epoch
        self.print_line, self.after_epoch = log, after_epoch
        self._sums: dict[str, float] = {}
        self._steps = 0
        self._lr = 0.0
        self._started = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx) -> None:
        epoch, step_in_epoch = divmod(trainer.global_step, self.steps_per_epoch)
        if step_in_epoch and self._steps:
            return
        self.method.train()
        self._sums, self._steps, self._started = {}, 0, time.perf_counter()
        hook = getattr(self.method, "on_epoch_start", None)
        if hook is not None and step_in_epoch == 0:
            with seeded(epoch_start_seed(self.config.seed, epoch), module.device):
                hook(epoch, self.graph.to(module.device))

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        logged = {k.removeprefix("train/"): float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith("train/")}
        if self._steps == 0:
            self._lr = logged.get("lr", 0.0)
        for key, value in logged.items():
            if key not in ("lr", "skipped_steps"):
                self._sums[key] = self._sums.get(key, 0.0) + value
        self._steps += 1
        done = trainer.global_step
        if done % self.steps_per_epoch == 0 or done >= trainer.max_steps:
            self.end_epoch(trainer, (done - 1) // self.steps_per_epoch)

    def end_epoch(self, trainer: L.Trainer, epoch: int) -> None:
        record = {key: total / self._steps for key, total in self._sums.items()}
        record.update(epoch=epoch, lr=self._lr, seconds=time.perf_counter() - self._started)
        self._steps = 0
        due = epoch % self.config.log_every == 0 or epoch == self.config.epochs - 1
        if self.print_line is not None and trainer.is_global_zero and due:
            shown = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch", "seconds"))
            self.print_line(f"epoch {epoch + 1}/{self.config.epochs} {shown} ({record['seconds']:.2f}s)")
        if self.after_epoch is not None:
            self.after_epoch(epoch, record)
            self.method.train()


def epoch_history(metrics_csv: Path, steps_per_epoch: int = 1) -> list[dict[str, float]]:
    """One record per graph epoch of a run's metrics.csv (all of it, across resumes): the mean of
    each ``train/`` value over the epoch's steps (``loss``, the method's terms), the rate of its
    first step (``lr``) and ``epoch`` (step // steps_per_epoch)."""
    if not metrics_csv.is_file():
        return []
    records: dict[int, dict[str, list[float]]] = {}
    for row in read_metrics_csv(metrics_csv).rows:
        if "train/loss" not in row or "step" not in row:
            continue
        values = records.setdefault(int(row["step"]) // steps_per_epoch, {})
        for key, value in row.items():
            if key.startswith("train/") and key != "train/skipped_steps":
                values.setdefault(key.removeprefix("train/"), []).append(value)
    history = []
    for epoch in sorted(records):
        record = {key: float(np.mean(v)) for key, v in records[epoch].items() if key != "lr"}
        record.update(epoch=epoch, lr=records[epoch]["lr"][0] if "lr" in records[epoch] else float("nan"))
        history.append(record)
    return history


@dataclass
class GraphTraining:
    """What :func:`train_graph_method` returns."""

    history: list[dict[str, float]]  # per epoch, the whole run (across resumes); empty on processes > 0
    seconds: float  # time spent in training steps, across resumes
    steps: int  # optimiser steps done
    world_size: int
    is_global_zero: bool


@contextlib.contextmanager
def run_folder(run_dir: str | Path | None) -> Iterator[Path]:
    """``run_dir``, or a temporary folder removed afterwards when it is None."""
    if run_dir is not None:
        yield Path(run_dir)
        return
    with tempfile.TemporaryDirectory(prefix="contrastkit-graph-") as folder:
        yield Path(folder)


def train_graph_method(
    method: nn.Module,
    graph: Graph,
    config: GraphTrainConfig,
    log: Callable[[str], None] | None = print,
    after_epoch: Callable[[int, dict[str, float]], None] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    description: dict | None = None,
    progress_bar: bool | None = False,
) -> GraphTraining:
    """Train ``method`` (with ``training_loss`` and ``embed``) on ``graph`` through the engine.

    ``run_dir`` receives config.yaml (``config`` and ``description``), checkpoints/last.ckpt (every
    epoch, or every ``config.checkpoint_every_steps`` steps) and metrics.csv; ``resume=True``
    continues it from its checkpoint (a run that never wrote one starts again). Without
    ``run_dir`` the run trains in a temporary folder, removed afterwards. ``after_epoch(epoch,
    record)``, if given, runs after each epoch's optimiser steps (for learning curves; whatever it
    does to the mode, training resumes in train mode)."""
    node_ids = bool(getattr(method, "takes_node_ids", False))
    data, steps_per_epoch = graph_data(graph, config, node_ids)
    settings = train_settings(config, steps_per_epoch)
    description = {"modality": "graph", **(description or {})}
    with run_folder(run_dir) as folder:
        resume_main = resume and (folder / CHECKPOINT).is_file()
        if run_dir is not None:
            if is_first_process():
                resolve_run_dir(folder, resume_main, "graph")  # refuses to overwrite a finished run
            open_run_dir(folder, yaml.safe_dump({**description, "train": dataclasses.asdict(config)}, sort_keys=False))
        before = getattr(method, "before_training", None)
        if before is not None and not resume_main:  # else the checkpoint holds what it did
            before(graph)
        hooks = EpochHooks(method, graph, config, steps_per_epoch, log, after_epoch)
        result = train(method, data, settings, folder, resume=resume_main, description=description,
                       callbacks=[hooks], progress_bar=progress_bar)
        history = epoch_history(folder / "metrics.csv", steps_per_epoch) if result.is_global_zero else []
    method.eval()
    return GraphTraining(history, result.throughput.seconds, result.trainer.global_step,
                         result.trainer.world_size, result.is_global_zero)


@torch.no_grad()
def embed_nodes(method: nn.Module, graph: Graph) -> Tensor:
    """Embeddings of every node, in eval mode (no dropout), on the CPU."""
    method.eval()
    device = next(method.parameters()).device
    return method.embed(graph.to(device)).cpu()
