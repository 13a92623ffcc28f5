"""The training loop of the graph methods: full-batch, or node batches for large graphs.

The image path (``contrastkit.training``) is built around image batches; graph methods instead
see the whole graph each step (Cora: 2,708 nodes fit at once), or, with ``batch_size``, batches
of nodes:

* methods whose ``training_loss`` takes ``nodes`` (SCGC) get the global ids of the batch and
  restrict their loss to it;
* the others get the subgraph the batch induces (``Graph.subgraph``).

Batches are either uniform random node sets (Graph-MLP's sampling) or neighbourhoods: random
walks of ``walk_length`` steps from random seed nodes, so that a batch holds its seeds'
neighbours (what neighbour positives and message passing need on a large graph).

Model selection: none. Every run trains for the fixed number of epochs of its configuration
(the paper's where it gives one) and the final model is evaluated; no label of any split is
looked at during training. Reproducible: ``seed`` seeds Python, numpy and torch before the model
is built.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError, TrainingError
from contrastkit.sources.graphs import Graph
from contrastkit.views.graph import neighbour_lists, random_walks


@dataclass
class GraphTrainConfig:
    """Optimiser and schedule: Adam(lr, weight_decay), optional cosine decay of the learning rate
    to 0 over ``epochs`` (lr_t = lr * (1 + cos(pi t / epochs)) / 2, GraphMAE's schedule)."""

    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    cosine_schedule: bool = False
    batch_size: int | None = None
    sampler: str = "random"  # or "neighbourhood"
    walk_length: int = 3
    seed: int = 0
    log_every: int = 50


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def node_batches(graph: Graph, config: GraphTrainConfig) -> Iterator[Tensor]:
    """One epoch of node batches (sorted global ids); see the module docstring."""
    n = graph.num_nodes
    size = config.batch_size or n
    if size >= n:
        yield torch.arange(n)
        return
    order = torch.randperm(n)
    if config.sampler == "random":
        for start in range(0, n, size):
            yield order[start : start + size].sort().values
    elif config.sampler == "neighbourhood":
        seeds_per_batch = max(1, size // (config.walk_length + 1))
        neighbours = neighbour_lists(graph.edge_index, n)
        for start in range(0, n, seeds_per_batch):
            nodes = torch.unique(random_walks(neighbours, order[start : start + seeds_per_batch], config.walk_length))
            yield nodes[torch.randperm(len(nodes))[:size]].sort().values
    else:
        raise ConfigError(f"Unknown node sampler '{config.sampler}'. Valid samplers: random, neighbourhood.")


def _takes_nodes(method: nn.Module) -> bool:
    return "nodes" in inspect.signature(method.training_loss).parameters


def train_graph_method(
    method: nn.Module,
    graph: Graph,
    config: GraphTrainConfig,
    log: Callable[[str], None] | None = print,
    after_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``method`` (with ``training_loss`` and ``embed``) on ``graph``; returns one log dict
    per epoch (mean of the batch logs, plus ``loss``, ``lr`` and ``seconds``).

    ``after_epoch(epoch, record)``, if given, runs after each epoch's optimiser steps (for learning
    curves; whatever it does to the mode, training resumes in train mode)."""
    if config.epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {config.epochs}.")
    optimizer = torch.optim.Adam(method.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = None
    if config.cosine_schedule and config.epochs > 0:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: (1 + math.cos(epoch * math.pi / config.epochs)) / 2
        )
    takes_nodes = _takes_nodes(method)
    history: list[dict[str, float]] = []
    for epoch in range(config.epochs):
        method.train()
        if hasattr(method, "on_epoch_start"):
            method.on_epoch_start(epoch, graph)
        started = time.perf_counter()
        totals: dict[str, float] = {}
        steps = 0
        for nodes in node_batches(graph, config) if config.batch_size else [None]:
            if nodes is None:
                loss, logs = method.training_loss(graph)
            elif takes_nodes:
                loss, logs = method.training_loss(graph, nodes=nodes.to(graph.x.device))
            else:
                loss, logs = method.training_loss(graph.subgraph(nodes.to(graph.x.device)))
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"The loss became {float(loss)} at epoch {epoch}; lower the learning rate "
                    f"(now {config.lr}) or the temperature."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            for key, value in {"loss": float(loss.detach()), **logs}.items():
                totals[key] = totals.get(key, 0.0) + value
        record = {key: value / steps for key, value in totals.items()}
        record.update(epoch=epoch, lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started)
        history.append(record)
        if scheduler is not None:
            scheduler.step()
        if after_epoch is not None:
            after_epoch(epoch, record)
        if log is not None and (epoch % config.log_every == 0 or epoch == config.epochs - 1):
            shown = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch", "seconds"))
            log(f"epoch {epoch + 1}/{config.epochs} {shown} ({record['seconds']:.2f}s)")
    method.eval()
    return history


@torch.no_grad()
def embed_nodes(method: nn.Module, graph: Graph) -> Tensor:
    """Embeddings of every node, in eval mode (no dropout), on the CPU."""
    method.eval()
    return method.embed(graph).cpu()
