"""What the engine trains a graph method on: the whole graph once per epoch, or batches of nodes.

An epoch's batches are a pure function of (seed, epoch, rank), so a run resumes exactly
(:mod:`contrastkit.engine.data`):

* full graph: :class:`WholeGraph`, a one-item dataset whose batch is the graph itself -- one
  optimiser step per epoch;
* node batches (``batch_size``): :class:`NodeBatchSampler` yields sorted global node ids, either a
  uniform random partition of the nodes (Graph-MLP's sampling; the last batch may be smaller) or
  neighbourhoods: random walks of ``walk_length`` steps from random seed nodes, so a batch holds
  its seeds' neighbours (what neighbour positives and message passing need on a large graph).
  A method with ``takes_node_ids = True`` (SCGC) gets a :class:`NodeBatch` (the whole graph and
  the ids) and restricts its loss to them; the others get the subgraph the batch induces
  (:class:`NodeSamples`).

With several processes, process r takes batches r, r + R, r + 2R, ... of the epoch's sequence (a
node batch is a neighbourhood, not cut across processes), the sequence cut to a multiple of R.

:class:`RunSampler` strings the epochs together into the one engine epoch of a graph run (why:
:mod:`contrastkit.modalities.graph.train`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.graph.sources import Graph
from contrastkit.modalities.graph.views import neighbour_lists, random_walks

SAMPLERS = ("random", "neighbourhood")


@dataclass(frozen=True)
class NodeBatch:
    """A batch of nodes given by id: ``graph`` is the whole graph, ``nodes`` the sorted global ids."""

    graph: Graph
    nodes: Tensor

    def to(self, device: torch.device | str) -> NodeBatch:
        return NodeBatch(self.graph.to(device), self.nodes.to(device))


class WholeGraph(Dataset):
    """The one-item dataset of full-graph training: every batch is the graph."""

    def __init__(self, graph: Graph):
        self.graph = graph

    def __len__(self) -> int:
        return 1

    def __getitems__(self, positions: list[int]) -> Graph:
        return self.graph


class NodeSamples(Dataset):
    """Node batches by id: a :class:`NodeBatch` when ``node_ids`` (the method restricts its loss to
    the ids), else the subgraph the nodes induce."""

    def __init__(self, graph: Graph, node_ids: bool = False):
        self.graph = graph
        self.node_ids = node_ids

    def __len__(self) -> int:
        return self.graph.num_nodes

    def __getitems__(self, positions: list[int]) -> Graph | NodeBatch:
        nodes = torch.as_tensor(positions, dtype=torch.long, device=self.graph.x.device)
        return NodeBatch(self.graph, nodes) if self.node_ids else self.graph.subgraph(nodes)


class NodeBatchSampler(Sampler[list[int]]):
    """Node batches of one epoch, drawn with a generator seeded by (seed, epoch); see the module
    docstring. ``sampler``: ``random`` or ``neighbourhood``."""

    def __init__(self, graph: Graph, batch_size: int, sampler: str = "random", walk_length: int = 3,
                 seed: int = 0, rank: int = 0, num_replicas: int = 1):
        if sampler not in SAMPLERS:
            raise ConfigError(f"Unknown node sampler '{sampler}'. Valid samplers: {', '.join(SAMPLERS)}.")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}.")
        self.num_nodes = graph.num_nodes
        self.batch_size = min(batch_size, self.num_nodes)
        self.kind, self.walk_length = sampler, walk_length
        self.seed, self.rank, self.num_replicas = seed, rank, num_replicas
        self.epoch = 0
        self.seeds_per_batch = max(1, self.batch_size // (walk_length + 1))
        self.neighbours = neighbour_lists(graph.edge_index, self.num_nodes) if sampler == "neighbourhood" else None
        if self.batches_per_epoch() < num_replicas:
            raise ConfigError(
                f"An epoch has {self.batches_per_epoch()} node batches, fewer than the {num_replicas} processes; "
                f"lower --batch-size or use fewer --devices."
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> NodeBatchSampler:
        return self  # where Lightning looks for set_epoch (see engine.data.EpochShuffleSampler)

    def batches_per_epoch(self) -> int:
        """Batches of the whole epoch, over all processes."""
        if self.batch_size >= self.num_nodes:
            return 1
        per_batch = self.batch_size if self.kind == "random" else self.seeds_per_batch
        return -(-self.num_nodes // per_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch() // self.num_replicas

    def epoch_batches(self) -> Iterator[Tensor]:
        """Every batch of the epoch (all processes'), in order."""
        n, size = self.num_nodes, self.batch_size
        if size >= n:
            yield torch.arange(n)
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=generator)
        if self.kind == "random":
            for start in range(0, n, size):
                yield order[start : start + size].sort().values
            return
        for start in range(0, n, self.seeds_per_batch):
            walks = random_walks(self.neighbours, order[start : start + self.seeds_per_batch], self.walk_length,
                                 generator)
            nodes = torch.unique(walks)
            yield nodes[torch.randperm(len(nodes), generator=generator)[:size]].sort().values

    def __iter__(self) -> Iterator[list[int]]:
        kept = len(self) * self.num_replicas
        for b, nodes in enumerate(self.epoch_batches()):
            if b >= kept:
                return
            if b % self.num_replicas == self.rank:
                yield nodes.tolist()

    def batches_of_epoch(self, epoch: int) -> Iterator[list[int]]:
        """This process's batches of ``epoch``."""
        self.set_epoch(epoch)
        return iter(self)


class RunSampler(Sampler[list[int]]):
    """Every optimiser step of a run as one epoch of the engine: the batches of graph epoch 0, 1, ...
    (``batches_of(epoch)``) one after another, ``total_steps`` of them. The order is a pure function
    of the step, so the engine's loader resumes it inside its one epoch."""

    def __init__(self, batches_of: Callable[[int], Iterable[list[int]]], total_steps: int):
        self.batches_of, self.total_steps = batches_of, total_steps
        self.epoch = 0  # the engine's epoch: always 0 (it runs one)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> RunSampler:
        return self  # where Lightning looks for set_epoch (see engine.data.EpochShuffleSampler)

    def __len__(self) -> int:
        return self.total_steps

    def __iter__(self) -> Iterator[list[int]]:
        step = 0
        for epoch in itertools.count():
            for positions in self.batches_of(epoch):
                if step == self.total_steps:
                    return
                yield positions
                step += 1

