"""A tiny deterministic text encoder for testing text methods without a Transformer.

``BagOfWordsEncoder`` embeds a text as the mean of learned word vectors (words split on
whitespace; a word gets an id the first time it is seen). It has no dropout, so a method's
loss can be recomputed exactly from the same embeddings, and it offers the parts of
:class:`contrastkit.modalities.text.encoders.TextEncoder` the methods use: ``tokenize``, ``forward``,
``encode``, ``output_dim``.
"""

from __future__ import annotations

import torch
from torch import nn


class BagOfWordsEncoder(nn.Module):
    def __init__(self, dim: int = 8, vocabulary_size: int = 256, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.vectors = nn.Parameter(torch.randn(vocabulary_size, dim, generator=generator, dtype=torch.float64))
        self.ids: dict[str, int] = {}

    @property
    def output_dim(self) -> int:
        return self.vectors.shape[1]

    def tokenize(self, texts, max_length=None) -> dict[str, torch.Tensor]:
        rows = [[self.ids.setdefault(w, len(self.ids)) for w in t.split()] or [0] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = tokens["attention_mask"].to(self.vectors.dtype).unsqueeze(-1)
        return (self.vectors[tokens["input_ids"]] * mask).sum(1) / mask.sum(1)

    @torch.no_grad()
    def encode(self, texts, batch_size: int = 64, max_length=None) -> torch.Tensor:
        return self(self.tokenize(list(texts))).float()


SENTENCES = [
    "the cat sat on the mat",
    "a dog barked at the moon all night",
    "proteins fold into shapes",
    "cells divide by mitosis",
    "the quick brown fox jumps over the lazy dog",
    "gene expression was measured in mice",
    "we report a new vaccine trial",
    "rainfall was heavy this year in the north",
]
