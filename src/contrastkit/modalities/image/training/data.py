"""The training data path: whole batches, from one uint8 tensor in memory or streamed from shards.

A per-sample ``__getitem__`` + collate costs a Python call per image; fetching a batch is one
indexing operation instead. ``__getitems__`` is what torch's DataLoader fetcher calls when it
exists, so the loader hands the training step a ready batch
``{"image": uint8 (B, C, H, W), "index": int64 (B,), "label": int64 (B,)}``, where ``index`` is
the sample's position in the training part (0..N-1; objectives with per-sample state use it).

- :class:`BatchedSamples` slices batches out of a decoded tensor (:class:`InMemoryImages`);
- :class:`ShardedSamples` reads them out of memory-mapped shards (``--data shards:DIR``,
  :class:`StreamedShards`); only the shards being read are mapped, so an epoch over a set larger
  than memory never loads it.

Shuffling is our own so that it is a pure function of (seed, epoch, rank): a resumed run sees
the same batches as an uninterrupted one, and each process of a DDP run sees its own slice of every
global batch; loaders are the engine's resumable ones (:mod:`contrastkit.engine.data`). Two epoch
orders:

- ``global`` (:class:`~contrastkit.engine.data.EpochShuffleSampler`): one permutation of all N positions, seeded by
  ``seed + epoch`` -- the in-memory order. Streaming with it gives the batches, hence the losses and
  weights, of the in-memory run on the same images; reads are random over the shards.
- ``shards`` (:class:`ShardBlockSampler`, the streaming default): the shards in a random order, the
  training samples of each shard in a random order (:func:`block_shuffled_order`, seeded by
  ``(seed, epoch)``). Reads are sequential within a shard, so a set larger than the page cache
  streams at disk speed; a batch holds samples of one or two shards, which mixes less than a
  global shuffle (write shards from shuffled data when the source is sorted by class).

Both cut the epoch's order into global batches of ``batch_size * num_replicas`` and give process
``rank`` the slice ``[rank * b, (rank + 1) * b)`` of each, dropping the incomplete last one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from contrastkit.engine.data import EpochShuffleSampler, batch_loader
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.sources.shards import ShardFolder, block_shuffled_order, shard_blocks

EPOCH_ORDERS = ("shards", "global")


class BatchedSamples(Dataset):
    """Images (N, C, H, W) uint8 and optional labels, fetched a batch at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, indices: torch.Tensor | None = None):
        self.images = images
        self.labels = labels
        # `index` is the sample's stable id in the source (objectives with per-sample state use it).
        self.indices = indices if indices is not None else torch.arange(len(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(positions, dtype=torch.long)
        labels = self.labels[rows] if self.labels is not None else torch.full((len(rows),), -1, dtype=torch.long)
        return {"image": self.images[rows], "index": self.indices[rows], "label": labels}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


class ShardBlockSampler(EpochShuffleSampler):
    """Batches of positions in shard-block order (see the module docstring), sharded over processes.

    Args:
        blocks: the positions of the training samples grouped by shard
            (:func:`contrastkit.modalities.image.sources.shards.shard_blocks`).
    """

    def __init__(self, blocks: list[np.ndarray], batch_size: int, seed: int, rank: int = 0,
                 num_replicas: int = 1):
        super().__init__(sum(len(block) for block in blocks), batch_size, seed, rank, num_replicas)
        self.blocks = blocks

    def epoch_order(self) -> torch.Tensor:
        # The whole epoch's positions (8 bytes per sample), as the in-memory sampler holds them.
        return torch.from_numpy(np.concatenate(list(block_shuffled_order(self.blocks, self.seed, self.epoch))))


class ShardedSamples(Dataset):
    """The samples ``rows`` (global ids) of a shard folder, fetched a batch at a time.

    Position ``p`` is sample ``rows[p]``; batches carry ``index = p``, as :class:`BatchedSamples`
    does for the same training part held in memory. ``labels`` are those of ``rows`` (a small
    int64 array, read once) or None.
    """

    def __init__(self, folder: ShardFolder, rows: np.ndarray, labels: np.ndarray | None):
        self.folder = folder
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        where = torch.as_tensor(positions, dtype=torch.long)
        labels = self.labels[where] if self.labels is not None else torch.full((len(where),), -1, dtype=torch.long)
        return {"image": torch.from_numpy(self.folder.read(self.rows[where.numpy()])), "index": where,
                "label": labels}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


def training_loader(
    samples: BatchedSamples, batch_size: int, seed: int, rank: int, num_replicas: int, num_workers: int = 0
) -> DataLoader:
    return batch_loader(samples, EpochShuffleSampler(len(samples), batch_size, seed, rank, num_replicas),
                        num_workers)


class InMemoryImages(L.LightningDataModule):
    """A decoded image source as Lightning training data; the loader is built once the process's
    rank and the world size are known."""

    def __init__(self, source, batch_size: int, seed: int, num_workers: int = 0,
                 pseudo_labels: np.ndarray | None = None):
        super().__init__()
        self.samples = BatchedSamples(source.images, source.labels)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        # G-SimCLR: batches keep samples of one pseudo-class apart (sampling/spread_batches.py)
        self.pseudo_labels = pseudo_labels

    def train_dataloader(self) -> DataLoader:
        if self.pseudo_labels is not None:
            from contrastkit.modalities.image.sampling.spread_batches import SpreadBatchSampler

            sampler = SpreadBatchSampler(self.pseudo_labels, self.batch_size, self.seed, self.trainer.global_rank,
                                         self.trainer.world_size)
            return batch_loader(self.samples, sampler, self.num_workers)
        return training_loader(self.samples, self.batch_size, self.seed, self.trainer.global_rank,
                               self.trainer.world_size, self.num_workers)


class StreamedShards(L.LightningDataModule):
    """The training part ``rows`` of a shard folder as Lightning training data, streamed.

    Args:
        root: the shard folder (written by ``contrastkit shard``).
        rows: global ids of the training samples (sorted; held-out samples left out).
        labels: their labels, or None.
        order: ``shards`` (block order, sequential reads) or ``global`` (the in-memory order).
    """

    def __init__(self, root: str | Path, rows: np.ndarray, labels: np.ndarray | None, batch_size: int,
                 seed: int, order: str = "shards", num_workers: int = 0):
        super().__init__()
        if order not in EPOCH_ORDERS:
            raise ConfigError(f"--stream-order '{order}' is not valid; choose one of: {', '.join(EPOCH_ORDERS)}.")
        self.samples = ShardedSamples(ShardFolder(root), rows, labels)
        self.batch_size, self.seed, self.order, self.num_workers = batch_size, seed, order, num_workers

    def make_sampler(self, rank: int, num_replicas: int) -> EpochShuffleSampler:
        if self.order == "global":
            return EpochShuffleSampler(len(self.samples), self.batch_size, self.seed, rank, num_replicas)
        folder = self.samples.folder
        blocks = shard_blocks(self.samples.rows, folder.shard_size, len(folder.counts))
        return ShardBlockSampler(blocks, self.batch_size, self.seed, rank, num_replicas)

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.samples, self.make_sampler(self.trainer.global_rank, self.trainer.world_size),
                            self.num_workers)
