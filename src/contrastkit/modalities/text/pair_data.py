"""Labelled training rows, (anchor, positive, negative_1 .. negative_k), served as text batches.

The rows come from a CSV, TSV or JSONL file with named columns
(:func:`contrastkit.modalities.text.tables.read_training_pairs`); ``k`` is the same for every row and
may be 0 (in-batch negatives only). Batches follow the text contract of
:mod:`contrastkit.modalities.text.methods`, with two more keys::

    {"texts": anchors (B,), "positives": (B,), "negatives": B tuples of k texts, "indices": LongTensor (B,)}

and the epochs are those of the sentences (:class:`~contrastkit.modalities.text.data.SentenceBatchSampler`:
a permutation of the rows drawn from ``(seed, epoch)``, full global batches, process ``r`` takes the
``r``-th slice), so the methods that read them (``needs_pairs``) train and resume like the others.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from contrastkit.core.errors import ConfigError, DataError
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
        }
