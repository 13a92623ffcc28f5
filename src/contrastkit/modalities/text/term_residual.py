"""A learned lexical term added to a sentence embedding: one vector per vocabulary token.

For a text x with the set T(x) of distinct tokens it contains (special tokens -- [CLS], [SEP],
padding -- left out) and a table W of one D-dimensional row per token::

    r(x) = sum_{t in T(x)} W[t] / sqrt(|T(x)|)            (0 when T(x) is empty)

and :class:`~contrastkit.modalities.text.encoders.TextEncoder` returns ``normalise(f(x) + r(x))`` in place of
``f(x)`` (the Transformer's pooled, possibly normalised, embedding; for a model without
normalisation, ``f(x) + r(x)``). W starts at 0, so a fresh residual changes nothing.

Why: a dense sentence embedding keeps the gist of a text and loses which rare words it holds,
while on domain corpora a good part of what ranks documents is exactly those words (BM25 beats
all-MiniLM-L6-v2 on SciFact). A row W[t] can learn "a text that says t should move towards the
documents that are about t" -- a dense, learned stand-in for lexical matching, cheap enough to train
in minutes on a CPU because the Transformer stays frozen (its embeddings can be computed once).
Trained by :mod:`contrastkit.modalities.text.methods.hybrid_distill` (``student=term-residual``) on the query
side of a two-tower retriever, so documents keep the base model's embeddings. SPAR (Chen et al.,
EMNLP 2022 Findings, https://arxiv.org/abs/2110.06918) makes the same point with a second dense
model trained to imitate BM25; here the lexical part is a bag of token vectors added to the base
model's own embedding.

Distinct tokens (not counts) and the 1/sqrt(n) scale: a repeated word should not count twice, and
the residual of a long text should not swamp its embedding. Saved as ``term_residual.safetensors``
(the non-zero rows and their token ids) beside the Transformer, and loaded with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from contrastkit.core.errors import DataError

TERM_RESIDUAL_FILE = "term_residual.safetensors"


class TermResidual(nn.Module):
    """The table W (vocabulary x dim, zeros at the start) and ``r(x)`` of the module docstring."""

    def __init__(self, vocab_size: int, dim: int, special_ids: Iterable[int] = ()) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size, dim))
        ignored = torch.zeros(vocab_size, dtype=torch.bool)
        ids = [i for i in special_ids if i is not None and 0 <= i < vocab_size]
        ignored[ids] = True
        self.register_buffer("ignored", ignored, persistent=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, D) residuals of a tokenised batch (B, L)."""
        ids = input_ids.to(self.weight.device)
        keep = attention_mask.to(self.weight.device).bool() & ~self.ignored[ids]
        # Distinct tokens per row: sort, and count a token only where it differs from its left neighbour.
        ids = torch.where(keep, ids, torch.full_like(ids, -1))
        ids, _ = ids.sort(dim=1)
        first = torch.ones_like(ids, dtype=torch.bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        use = first & (ids >= 0)
        count = use.sum(dim=1, keepdim=True).clamp_min(1).to(self.weight.dtype)
        rows = self.weight[ids.clamp_min(0)] * use.unsqueeze(-1).to(self.weight.dtype)
        return rows.sum(dim=1) / count.sqrt()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the non-zero rows (and their token ids) to ``folder/term_residual.safetensors``."""
        from safetensors.torch import save_file

        weight = self.weight.detach().float().cpu()
        rows = torch.nonzero(weight.abs().sum(dim=1) > 0).flatten()
        path = Path(folder) / TERM_RESIDUAL_FILE
        save_file({"token_ids": rows.contiguous(), "rows": weight[rows].contiguous(),
                   "shape": torch.tensor(list(weight.shape))}, str(path))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, vocab_size: int, dim: int,
             special_ids: Iterable[int] = ()) -> TermResidual:
        """The residual saved by :meth:`save`, checked against the encoder's vocabulary and width."""
        from safetensors.torch import load_file

        saved = load_file(str(path))
        shape = tuple(int(v) for v in saved["shape"].tolist())
        if shape != (vocab_size, dim):
            raise DataError(f"'{path}' holds a term residual of shape {shape}, but the encoder beside it has "
                            f"{vocab_size} tokens and {dim} dimensions: the files do not belong together.")
        residual = cls(vocab_size, dim, special_ids)
        with torch.no_grad():
            residual.weight[saved["token_ids"]] = saved["rows"]
        return residual


__all__ = ["TERM_RESIDUAL_FILE", "TermResidual"]
