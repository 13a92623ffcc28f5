"""MNRL: supervised fine-tuning on (anchor, positive, negative_1 .. negative_k) rows with in-batch
negatives -- sentence-transformers' MultipleNegativesRankingLoss (Henderson et al., "Efficient
Natural Language Response Suggestion for Smart Reply", 2017, https://arxiv.org/abs/1705.00652; the
hard negatives as in DPR, Karpukhin et al., EMNLP 2020, https://arxiv.org/abs/2004.04906).

Each row holds an anchor ``a_i`` (a query, a claim, a sentence), its positive ``p_i`` (the passage
that answers it, a paraphrase) and ``k >= 0`` hard negatives ``n_i1 .. n_ik`` (from a file, or mined:
:func:`contrastkit.modalities.text.mining.mine_hard_negatives`). One shared encoder embeds all three;
every anchor is contrasted with all ``N`` positives and all ``N k`` negatives of the batch (of every
process), with cosine similarity and temperature ``t``::

    loss_i = -s(a_i, p_i) / t + log( sum_j exp(s(a_i, p_j) / t) + sum_{j, l} exp(s(a_i, n_jl) / t) )

(the catalogue's ``multiple_negatives``, :class:`contrastkit.objectives.multiple_negatives.MultipleNegativesRanking`,
gathered across processes with the hard negatives as a per-sample input). The anchors, the positives
and the negatives are three forward passes, so the per-sample dropout masks of N processes are those
of one process on the joint batch (:mod:`contrastkit.modalities.text.dropout`).

Data: ``--data`` is a CSV, TSV or JSONL file with named columns (``anchor, positive, negative_1 ..``
or the aliases of :mod:`contrastkit.modalities.text.tables`; ``--columns`` names them otherwise).

Options (``build(encoder, **options)``):
    temperature: ``t`` (0.05, sentence-transformers' scale 20).
    document_length: tokens kept of positives and negatives (None: the training ``--max-length``);
        anchors use ``--max-length``.
    grad_cache_chunk: rows per forward pass with GradCache (None).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit import objectives
from contrastkit.core.errors import DataError
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.methods._parts import pair_cosines, positive_int_or_none
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.gradcache import embed_tokens

DEFAULTS = {"temperature": 0.05, "document_length": None, "grad_cache_chunk": None}


class MNRL(nn.Module):
    """Anchors against every positive and hard negative of the batch, one shared encoder."""

    name = "mnrl"
    needs_context = False
    needs_pairs = True
    supports_matryoshka = True

    def __init__(self, encoder: TextEncoder, objective: nn.Module, document_length: int | None = None,
                 grad_cache_chunk: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.document_length = document_length
        self.grad_cache_chunk = grad_cache_chunk

    def embed(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        tokens = self.encoder.tokenize(texts, max_length)
        return embed_tokens(self.encoder, tokens, self.grad_cache_chunk, next(self.encoder.parameters()).device)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "positives" not in batch:
            raise DataError("mnrl needs (anchor, positive[, negatives]) rows: train it on a .csv, .tsv or .jsonl file "
                            "with named columns (contrastkit.modalities.text.pair_data.PairData).")
        anchors = self.embed(batch["texts"])
        positives = self.embed(batch["positives"], self.document_length)
        k = len(batch["negatives"][0]) if batch.get("negatives") else 0
        extra, logs = {}, {}
        if k:
            flat = [text for row in batch["negatives"] for text in row]  # row by row: negatives[i, l] at i k + l
            negatives = self.embed(flat, self.document_length).view(len(batch["texts"]), k, -1)
            extra["negatives"] = negatives
            with torch.no_grad():
                u = F.normalize(anchors.detach().float(), dim=-1)
                logs["hard_negative_cosine"] = float((u.unsqueeze(1) * F.normalize(negatives.detach().float(), dim=-1))
                                                     .sum(-1).mean())
        loss = self.objective(anchors, positives, **extra)
        return loss, {**pair_cosines(anchors, positives), **logs}


def build(encoder: TextEncoder, **options) -> MNRL:
    settings = check_options("mnrl", options, DEFAULTS)
    objective = objectives.get("multiple_negatives", temperature=settings["temperature"])
    return MNRL(
        encoder, GatheredObjective(objective),
        document_length=positive_int_or_none(settings["document_length"], "document_length"),
        grad_cache_chunk=positive_int_or_none(settings["grad_cache_chunk"], "grad_cache_chunk"),
    )
