"""Batches that keep samples of one pseudo-class apart (G-SimCLR's guided batching).

Chakraborty, Gosthipaty & Paul, "G-SimCLR: Self-Supervised Contrastive Learning with Guided
Projection via Pseudo Labelling", ICDM Workshops 2020. SimCLR treats every other image of the batch
as a negative; images of the same class among them are false negatives. G-SimCLR clusters the
unlabeled data (:mod:`contrastkit.modalities.image.sampling.pseudo_labels`) and builds batches in which samples of
the same pseudo-class are as rare as the class sizes allow.

Construction (per epoch, a pure function of ``(labels, seed + epoch)``): with ``N`` samples,
``W`` processes, ``b`` samples per process, ``G = W b`` per global batch and ``M = floor(N / G)``
batches,

1. shuffle the samples within each pseudo-class and the order of the classes, and lay the
   classes end to end: a sequence ``S`` in which each class is one contiguous block;
2. deal ``S`` like cards: ``S[p]`` goes to global batch ``p mod M`` as its ``k = p div M``-th
   sample; within a global batch, its ``k``-th sample goes to rank ``k mod W``; samples with
   ``k >= G`` are left out this epoch (fewer than ``G`` in all, ``N - M G``);
3. shuffle the order of the global batches.

Guarantee. Class ``c`` (``n_c`` samples) is a block of ``n_c`` consecutive cards, so every global
batch gets at most ``ceil(n_c / M)`` of them, in consecutive positions ``k``, which the ranks
take in turn: each process's batch holds at most ``ceil(ceil(n_c / M) / W) = ceil(n_c / (M W))``.
When ``G`` divides ``N`` these are ``ceil(G n_c / N)`` per global batch and ``ceil(b n_c / N)``
per process: the least possible maxima (``n_c`` samples in ``M`` batches put at least
``n_c / M`` in one of them). Every kept sample appears once per epoch, each global batch is the
union of the processes' batches (as with :class:`~contrastkit.modalities.image.training.data.EpochShuffleSampler`),
and the samples left out change from epoch to epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.engine.data import EpochShuffleSampler


def spread_order(labels: np.ndarray, global_batch: int, num_replicas: int, seed: int) -> np.ndarray:
    """The epoch's batches as an int64 array ``(M, num_replicas, global_batch // num_replicas)``
    of sample positions: ``[j, r]`` is rank ``r``'s part of global batch ``j`` (see the module
    docstring for the construction and its guarantee)."""
    rng = np.random.default_rng(seed)
    num_batches = len(labels) // global_batch
    per_rank = global_batch // num_replicas
    classes = rng.permutation(np.unique(labels))
    sequence = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in classes])
    position = np.arange(len(sequence))
    batch, slot = position % num_batches, position // num_batches
    kept = slot < global_batch
    batches = np.empty((num_batches, num_replicas, per_rank), dtype=np.int64)
    batches[batch[kept], slot[kept] % num_replicas, slot[kept] // num_replicas] = sequence[kept]
    return batches[rng.permutation(num_batches)]


class SpreadBatchSampler(EpochShuffleSampler):
    """A batch sampler that spreads each pseudo-class evenly over the batches of an epoch.

    An :class:`~contrastkit.modalities.image.training.data.EpochShuffleSampler` (``set_epoch``, ``sampler``, length,
    rank-aware) whose epoch order spreads the classes, so it drops into ``DataLoader(batch_sampler=...)``. Per epoch, with
    ``M = floor(N / (batch_size * num_replicas))`` batches, every global batch holds at most
    ``ceil(n_c / M)`` samples of pseudo-class ``c`` and every process's batch at most
    ``ceil(n_c / (M * num_replicas))`` (``ceil(batch_size * n_c / N)`` when the global batch
    divides ``N``).

    Args:
        labels: pseudo-label of every training position, ``(N,)`` integers (e.g. from
            :func:`~contrastkit.modalities.image.sampling.pseudo_labels.pseudo_labels`).
        batch_size: samples per process and batch.
        seed: the epoch's order is a function of ``seed + epoch``.
        rank, num_replicas: this process and the number of processes.
    """

    def __init__(self, labels, batch_size: int, seed: int, rank: int = 0, num_replicas: int = 1):
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"SpreadBatchSampler needs one integer pseudo-label per sample, shape (N,), got shape "
                f"{labels.shape} and dtype {labels.dtype}; compute them with contrastkit.modalities.image.sampling.pseudo_labels."
            )
        global_batch = batch_size * num_replicas
        if batch_size < 1 or global_batch > len(labels):
            raise ConfigError(
                f"The global batch ({batch_size} per process x {num_replicas} processes = {global_batch}) "
                f"must be between 1 and the {len(labels)} training samples. Lower --batch-size to at most "
                f"{len(labels) // num_replicas} or use more data."
            )
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in [0, {num_replicas}), got {rank}.")
        super().__init__(len(labels), batch_size, seed, rank, num_replicas)
        self.labels = labels

    def __iter__(self) -> Iterator[list[int]]:
        batches = spread_order(self.labels, self.batch_size * self.num_replicas, self.num_replicas,
                               self.seed + self.epoch)
        for batch in batches[:, self.rank]:
            yield batch.tolist()

    def bounds(self) -> dict[int, tuple[int, int]]:
        """The guarantee per class: ``{c: (max per global batch, max per process batch)}``."""
        num_batches = len(self)
        classes, counts = np.unique(self.labels, return_counts=True)
        return {int(c): (-(-int(n) // num_batches), -(-int(n) // (num_batches * self.num_replicas)))
                for c, n in zip(classes, counts, strict=True)}

