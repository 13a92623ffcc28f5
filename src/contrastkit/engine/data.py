"""Training data the engine can resume in the middle of an epoch, in every modality.

An epoch's batches are a pure function of (seed, epoch, rank): a *batch sampler* yields lists of
positions (:class:`EpochShuffleSampler`, or any object with ``set_epoch``, ``epoch``, ``__len__``
and ``__iter__``), and a dataset turns a list of positions into a batch with one
``__getitems__(positions)`` call (images slice a uint8 tensor, text tokenises sentences, a graph
method's dataset of one item returns the graph).

:class:`ResumableLoader` is a ``DataLoader`` that Lightning treats as stateful: its state is the
position of the last trained batch (epoch, batches done in it), read from the trainer when a
checkpoint is written, and after ``--resume`` the sampler skips the batches the checkpoint already
holds. With the per-step reseeding of :mod:`contrastkit.engine.module`, a run killed after any
checkpoint resumes to the weights of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from contrastkit.core.errors import ConfigError

Position = tuple[int, int]  # (epoch, batches of that epoch already trained)


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

    def epoch_order(self) -> torch.Tensor:
        """The positions of the current epoch, in the order they are trained on."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order()
        global_batch = self.batch_size * self.num_replicas
        for b in range(len(self)):
            start = b * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()


class OneBatchSampler(Sampler[list[int]]):
    """One batch per epoch holding the whole (one-item) dataset: full-graph methods, where an epoch
    is one optimiser step on the whole graph."""

    def __init__(self, size: int = 1):
        self.size = size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> OneBatchSampler:
        return self

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[list[int]]:
        yield list(range(self.size))


class _ResumingBatches(Sampler[list[int]]):
    """``inner``'s batches, less the first ones of the epoch a checkpoint was written in."""

    def __init__(self, inner):
        self.inner = inner
        self.resume_at: Position | None = None

    @property
    def sampler(self):
        return self.inner.sampler if hasattr(self.inner, "sampler") else self.inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __getattr__(self, name: str):
        # The epoch sampler's own attributes (epoch, batch_size, epoch_order, ...) read through.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.inner.epoch:
            skip = self.resume_at[1]
        for b, positions in enumerate(self.inner):
            if b >= skip:
                yield positions


class ResumableLoader(DataLoader):
    """A loader over ``batch_sampler``'s batches that resumes where a checkpoint left off.

    ``position`` (set by the engine once the trainer exists) returns (epoch, batches trained in it);
    Lightning stores ``state_dict()`` in each checkpoint and calls ``load_state_dict`` on resume.
    """

    def __init__(self, dataset: Dataset, batch_sampler, num_workers: int = 0,
                 collate_fn: Callable[[Any], Any] | None = None):
        super().__init__(dataset, batch_sampler=_ResumingBatches(batch_sampler), collate_fn=collate_fn or _identity,
                         num_workers=num_workers, persistent_workers=num_workers > 0)
        self.position: Callable[[], Position] | None = None

    @property
    def epoch_sampler(self):
        """The batch sampler that decides the epoch's order (without the resume wrapper)."""
        return self.batch_sampler.inner

    def state_dict(self) -> dict[str, int]:
        if self.position is None:
            return {}
        epoch, done = self.position()
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self.batch_sampler.resume_at = (state["epoch"], state["batches_done"])


def batch_loader(samples: Dataset, sampler, num_workers: int = 0) -> ResumableLoader:
    """A resumable loader that fetches each of ``sampler``'s batches with one ``__getitems__`` call."""
    return ResumableLoader(samples, sampler, num_workers=num_workers)


def _identity(batch):
    return batch
