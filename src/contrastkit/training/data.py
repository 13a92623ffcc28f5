"""The training data path for in-memory sources: whole batches sliced out of one uint8 tensor.

A per-sample ``__getitem__`` + collate costs a Python call per image; for data that is already a
decoded tensor, fetching a batch is one indexing operation. ``BatchedSamples.__getitems__`` is what
torch's DataLoader fetcher calls when it exists, so the loader hands the training step a ready batch
``{"image": uint8 (B, C, H, W), "index": int64 (B,), "label": int64 (B,)}``.

Shuffling is our own so that it is a pure function of (seed, epoch, rank): a resumed run sees
the same batches as an uninterrupted one, and each process of a DDP run sees its own shard.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from contrastkit.errors import ConfigError


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


class EpochShuffleSampler(Sampler[list[int]]):
    """Batches of positions, shuffled by (seed, epoch), sharded over ``num_replicas`` processes.

    Every epoch the N positions are permuted with a generator seeded by ``seed + epoch``; the
    permutation is cut into global batches of ``batch_size * num_replicas`` and process ``rank``
    takes its slice of each, so the union of the processes' batches is exactly the single-process
    global batch (what makes a 2-process run equal to one process on the concatenated batch).
    The incomplete last global batch is dropped (contrastive losses want full batches).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, num_replicas: int = 1):
        global_batch = batch_size * num_replicas
        if global_batch > num_samples:
            raise ConfigError(
                f"The global batch ({batch_size} per process x {num_replicas} processes = {global_batch}) is "
                f"larger than the {num_samples} training samples. Lower --batch-size to at most "
                f"{num_samples // num_replicas} or use more data."
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (with the resumed epoch after --resume)."""
        self.epoch = epoch

    @property
    def sampler(self) -> EpochShuffleSampler:
        # Lightning looks for `set_epoch` on `loader.sampler` and `loader.batch_sampler.sampler`, not on
        # the batch sampler itself; pointing at ourselves is how this batch sampler gets its epoch.
        return self

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        global_batch = self.batch_size * self.num_replicas
        for b in range(len(self)):
            start = b * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()


def training_loader(
    samples: BatchedSamples, batch_size: int, seed: int, rank: int, num_replicas: int, num_workers: int = 0
) -> DataLoader:
    sampler = EpochShuffleSampler(len(samples), batch_size, seed, rank, num_replicas)
    return DataLoader(
        samples,
        batch_sampler=sampler,
        collate_fn=_identity,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def _identity(batch):
    return batch


class InMemoryImages(L.LightningDataModule):
    """A decoded image source as Lightning training data; the loader is built once the process's
    rank and the world size are known."""

    def __init__(self, source, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.samples = BatchedSamples(source.images, source.labels)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        return training_loader(self.samples, self.batch_size, self.seed, self.trainer.global_rank,
                               self.trainer.world_size, self.num_workers)
