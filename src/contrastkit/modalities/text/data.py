"""Sentences for unsupervised training, read from a lines file, served as shuffled text batches.

A lines file (``.txt`` / ``.txt.gz``, one sentence per line, blank lines skipped; see
:func:`contrastkit.modalities.text.sources.read_lines`) is taken in file order: consecutive lines are
neighbours, as the sentences of a document are. The *context* of sentence ``i`` is the window of
``context_window`` lines on each side of it, the sentence itself excluded, in file order, joined
by spaces::

    context_i = " ".join(lines[i - w : i] + lines[i + 1 : i + w + 1])

When document ids are given (:class:`SentenceData` ``document_ids``), the window stops at the
document's boundaries; a plain lines file has none, so a window at the edge of a document
reaches into its neighbour (for SciFact's sentences.txt.gz, a title line follows the last
sentence of the previous abstract).

Batches are dicts (the contract of :mod:`contrastkit.modalities.text.methods`): ``texts``, ``indices`` and,
when asked, ``contexts``. For the engine (:mod:`contrastkit.engine.data`) the sentences are a
dataset whose ``__getitems__(positions)`` builds one batch (:class:`SentenceSamples`), and
:class:`SentenceBatchSampler` says which positions: each epoch visits the sentences in a
permutation drawn from ``(seed, epoch)``, cut into global batches of ``batch_size x processes``
(the last incomplete one dropped, so every batch has the same number of in-batch negatives), of
which process ``r`` takes the ``r``-th slice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from contrastkit.engine.data import EpochShuffleSampler
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.sources import read_documents, read_lines


class SentenceData:
    """Sentences in corpus order, with their neighbouring lines as context.

    Args:
        texts: the sentences, in document order.
        context_window: lines taken on each side of a sentence for its context (0: no context).
        document_ids: optional document of each sentence; contexts never cross documents.
        name: where the sentences came from (for messages and summaries).
    """

    def __init__(self, texts: Sequence[str], context_window: int = 1,
                 document_ids: Sequence[int] | None = None, name: str = "sentences"):
        if not texts:
            raise DataError(f"'{name}' holds no sentences to train on.")
        if context_window < 0:
            raise ConfigError(f"context_window must be 0 or more lines on each side, got {context_window}.")
        if document_ids is not None and len(document_ids) != len(texts):
            raise DataError(f"document_ids has {len(document_ids)} entries for {len(texts)} sentences of '{name}'.")
        self.texts = list(texts)
        self.context_window = int(context_window)
        self.document_ids = list(document_ids) if document_ids is not None else None
        self.name = name

    @classmethod
    def from_file(cls, path: str | os.PathLike, context_window: int = 1) -> SentenceData:
        """One sentence per line of a ``.txt`` / ``.txt.gz`` file; or, for a JSONL corpus
        (``.jsonl[.gz]``, or a BEIR folder), its documents (:meth:`from_documents`)."""
        path = Path(path)
        if path.is_dir() or path.name.removesuffix(".gz").endswith(".jsonl"):
            return cls.from_documents(read_documents(path), context_window, name=str(path))
        return cls(read_lines(path), context_window=context_window, name=str(path))

    @classmethod
    def from_documents(cls, documents: Sequence[Sequence[str]], context_window: int = 1,
                       name: str = "documents") -> SentenceData:
        """The sentences of ``documents`` (lists of sentences, a title first where there is
        one) in order, with their document ids: contexts stay inside their document, so a
        window as long as the documents makes a sentence's context the rest of its document
        (the Inverse Cloze Task's passage)."""
        texts = [sentence for document in documents for sentence in document]
        ids = [number for number, document in enumerate(documents) for _ in document]
        return cls(texts, context_window=context_window, document_ids=ids, name=name)

    def __len__(self) -> int:
        return len(self.texts)

    def context(self, i: int) -> str:
        """The ``context_window`` lines on each side of sentence ``i`` (itself excluded)."""
        w = self.context_window
        neighbours = [j for j in range(max(0, i - w), min(len(self.texts), i + w + 1)) if j != i]
        if self.document_ids is not None:
            neighbours = [j for j in neighbours if self.document_ids[j] == self.document_ids[i]]
        return " ".join(self.texts[j] for j in neighbours)

    def batches_per_epoch(self, batch_size: int) -> int:
        return len(self.texts) // batch_size

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (in-batch negatives), got {batch_size}.")
        if batch_size > len(self.texts):
            raise DataError(
                f"'{self.name}' has {len(self.texts)} sentences, fewer than one batch of {batch_size}; "
                "use a smaller --batch-size or more text."
            )

    def samples(self, with_context: bool = False) -> SentenceSamples:
        """The dataset of batches the engine reads (:class:`SentenceSamples`)."""
        return SentenceSamples(self, with_context)

    def epoch(self, epoch: int, batch_size: int, seed: int = 0,
              with_context: bool = False) -> Iterator[dict]:
        """The batches of one epoch in one process: a permutation seeded by ``(seed, epoch)``, full
        batches only (what :class:`SentenceBatchSampler` and :class:`SentenceSamples` give the engine)."""
        self.check_batch_size(batch_size)
        samples = SentenceSamples(self, with_context)
        sampler = SentenceBatchSampler(len(self), batch_size, seed)
        sampler.set_epoch(epoch)
        for positions in sampler:
            yield samples.__getitems__(positions)


class SentenceSamples(Dataset):
    """The sentences as a dataset of batches: ``__getitems__(positions)`` returns the text batch
    ``{"texts", "indices"}`` (+ ``"contexts"`` when ``with_context``) of those rows."""

    def __init__(self, data: SentenceData, with_context: bool = False):
        if with_context and data.context_window == 0:
            raise ConfigError("This method needs the neighbouring lines of each sentence (contexts), "
                              "but the context window is 0 lines; set a context window of 1 or more.")
        self.data = data
        self.with_context = with_context

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, positions: list[int]) -> dict:
        rows = list(positions)
        batch = {"texts": [self.data.texts[i] for i in rows], "indices": torch.as_tensor(rows, dtype=torch.long)}
        if self.with_context:
            batch["contexts"] = [self.data.context(i) for i in rows]
        return batch


class SentenceBatchSampler(EpochShuffleSampler):
    """The engine's per-epoch batches (:class:`~contrastkit.engine.data.EpochShuffleSampler`) in the
    text order: the permutation of epoch ``e`` is drawn from a generator seeded by
    ``seed * 1_000_003 + e`` (the order text runs have always had)."""

    def epoch_order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator)
