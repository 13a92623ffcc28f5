"""Labelled training rows, (anchor, positive, negative_1 .. negative_k), served as text batches.

The rows come from a CSV, TSV or JSONL file with named columns
(:func:`contrastkit.modalities.text.tables.read_training_pairs`); ``k`` is the same for every row and
may be 0 (in-batch negatives only). Batches follow the text contract of
:mod:`contrastkit.modalities.text.methods`, with two more keys::

    {"texts": anchors (B,), "positives": (B,), "negatives": B tuples of k texts, "indices": LongTensor (B,)}

and the epochs are those of the sentences (:class:`~contrastkit.modalities.text.data.SentenceBatchSampler`:
a permutation of the rows drawn from ``(seed, epoch)``, full global batches, process ``r`` takes the
``r``-th slice), so the methods that read them (``needs_pairs``) train and resume like the others.

Rows with a ``domain`` column add ``"domains": list[str]`` (B,) to each batch; a method that sets
``batches_by_domain`` (mnrl-moe) trains on :class:`DomainBatchSampler`'s batches, each of one domain.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.engine.data import EpochShuffleSampler
from contrastkit.modalities.text.tables import Columns, TrainingPairs, read_training_pairs


class PairData:
    """Training rows in file order (:class:`~contrastkit.modalities.text.tables.TrainingPairs`)."""

    def __init__(self, pairs: TrainingPairs):
        if len(pairs) == 0:
            raise DataError(f"'{pairs.name}' holds no training rows.")
        self.pairs = pairs
        self.name = pairs.name

    @classmethod
    def from_file(cls, path: str | os.PathLike, columns: Columns = None) -> PairData:
        """Rows from a file of named columns; an STS Benchmark file (no header) gives its pairs as
        (anchor, positive) rows without negatives, its scores left out (what ``dse`` trains on)."""
        from pathlib import Path

        from contrastkit.modalities.text.sources import is_stsb_layout, read_sts

        if columns is None and Path(path).is_file() and is_stsb_layout(Path(path)):
            sts = read_sts(path)
            return cls(TrainingPairs(list(sts.first), list(sts.second), [()] * len(sts), name=str(path)))
        return cls(read_training_pairs(path, columns))

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def negatives_per_row(self) -> int:
        return self.pairs.negatives_per_row

    @property
    def domains(self) -> list[str] | None:
        """Each row's domain (the file's ``domain`` column), or None."""
        return self.pairs.domains

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (in-batch negatives), got {batch_size}.")
        if batch_size > len(self):
            raise DataError(f"'{self.name}' has {len(self)} rows, fewer than one batch of {batch_size}; use a smaller "
                            "--batch-size or more rows.")

    def samples(self, with_context: bool = False) -> PairSamples:
        if with_context:
            raise ConfigError("This method needs the neighbouring lines of each sentence (contexts), which rows of "
                              "(anchor, positive, negatives) do not have; train it on a lines file.")
        return PairSamples(self)


class PairSamples(Dataset):
    """The rows as a dataset of batches: ``__getitems__(positions)`` returns the batch of those rows."""

    def __init__(self, data: PairData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, positions: list[int]) -> dict:
        rows = list(positions)
        pairs = self.data.pairs
        return {
            "texts": [pairs.anchors[i] for i in rows],
            "positives": [pairs.positives[i] for i in rows],
            "negatives": [pairs.negatives[i] for i in rows],
            "indices": torch.as_tensor(rows, dtype=torch.long),
            **({"domains": [pairs.domains[i] for i in rows]} if pairs.domains is not None else {}),
        }


class DomainBatchSampler(EpochShuffleSampler):
    """Global batches that each hold rows of one domain (in-batch negatives stay within a domain).

    Every epoch, each domain's rows are permuted with a generator seeded by ``(seed, epoch)`` and cut
    into full global batches of ``batch_size x processes`` (a domain's last incomplete one dropped);
    the batches of all domains are then put in one random order drawn from the same generator, so
    the domains are interleaved in proportion to their sizes. Process ``r`` takes the ``r``-th slice
    of each global batch, as :class:`~contrastkit.engine.data.EpochShuffleSampler` does.
    """

    def __init__(self, domains: list[str], batch_size: int, seed: int, rank: int = 0, num_replicas: int = 1):
        super().__init__(len(domains), batch_size, seed, rank, num_replicas)
        self.rows_of = {name: [i for i, d in enumerate(domains) if d == name] for name in dict.fromkeys(domains)}
        small = [name for name, rows in self.rows_of.items() if len(rows) < batch_size * num_replicas]
        if small:
            raise DataError(f"The domain(s) {', '.join(small)} have fewer rows than one global batch of "
                            f"{batch_size * num_replicas}; every domain needs at least one full batch.")

    def __len__(self) -> int:
        global_batch = self.batch_size * self.num_replicas
        return sum(len(rows) // global_batch for rows in self.rows_of.values())

    def global_batches(self) -> list[list[int]]:
        """The global batches of the current epoch, in training order."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        global_batch = self.batch_size * self.num_replicas
        batches = []
        for rows in self.rows_of.values():
            order = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
            batches += [order[start:start + global_batch]
                        for start in range(0, len(order) - global_batch + 1, global_batch)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self):
        start = self.rank * self.batch_size
        for batch in self.global_batches():
            yield batch[start:start + self.batch_size]
