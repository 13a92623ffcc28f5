"""Unsupervised SimCSE (Gao, Yao & Chen, "SimCSE: Simple Contrastive Learning of Sentence
Embeddings", EMNLP 2021, https://arxiv.org/abs/2104.08821).

Each sentence ``x_i`` of the batch is encoded twice by the same encoder in train mode; the two
passes draw different dropout masks, and that is the only augmentation ("dropout as noise",
:func:`contrastkit.modalities.text.views.identity`). With ``h_i = f(x_i)``, ``h_i^+ = f(x_i)`` (second
pass) and ``sim`` the cosine, the paper's objective (Eq. 4) is::

    loss_i = -log  exp(sim(h_i, h_i^+) / t) / sum_{j=1..N} exp(sim(h_i, h_j^+) / t),    t = 0.05

Here the loss is the catalogue's ``infonce`` (NT-Xent, :class:`contrastkit.objectives.InfoNCE`)
by default: the same positive pairs and temperature, but symmetric -- both passes are anchors
(2N terms) and the negatives of an anchor are the 2N - 2 other encodings of the batch, from both
passes, rather than the N - 1 second-pass ones. Any catalogue objective of view pairs can be named
with ``objective``. In ``contrastkit text`` runs the dropout masks are drawn per sentence
(:mod:`contrastkit.modalities.text.dropout`) and the negatives come from every process (the objective is
gathered), so two processes train as one on their joint batch. The encoder's own pooling is used (mean pooling for all-MiniLM-L6-v2; the paper
trains BERT's [CLS] with an MLP that is dropped at test time); no projection head is added.

Options (``build(encoder, **options)``):
    temperature: ``t`` (default 0.05, the paper's).
    objective: catalogue name (default ``infonce``).
    grad_cache_chunk: rows per forward pass with GradCache (default None: the whole batch at once);
        the loss and gradients are unchanged, memory is that of one chunk.

Recipe notes: the paper trains BERT-base for one epoch of 10^6 Wikipedia sentences, batch 64,
learning rate 3e-5, max length 32, evaluating on STS-B dev every 250 steps.
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.nn.gradcache import embed_tokens
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.methods._parts import (
    pair_cosines,
    pair_objective,
    positive_int_or_none,
)

DEFAULTS = {"temperature": 0.05, "objective": "infonce", "grad_cache_chunk": None}


class SimCSE(nn.Module):
    """Two dropout-noised encodings of each sentence, contrasted with in-batch negatives."""

    needs_context = False
    supports_matryoshka = True  # its objective reads the encoder's embeddings (modalities/text/matryoshka.py)

    def __init__(self, encoder: TextEncoder, objective: nn.Module, grad_cache_chunk: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.grad_cache_chunk = grad_cache_chunk

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = self.encoder.tokenize(batch["texts"])
        # Two separate passes: each draws its own dropout masks (the "augmentation").
        z_a = embed_tokens(self.encoder, tokens, self.grad_cache_chunk, self.encoder.device)
        z_b = embed_tokens(self.encoder, tokens, self.grad_cache_chunk, self.encoder.device)
        loss = self.objective(z_a, z_b)
        return loss, pair_cosines(z_a, z_b)


def build(encoder: TextEncoder, **options) -> SimCSE:
    settings = check_options("simcse", options, DEFAULTS)
    return SimCSE(
        encoder,
        objective=pair_objective(settings["objective"], settings["temperature"], "simcse"),
        grad_cache_chunk=positive_int_or_none(settings["grad_cache_chunk"], "grad_cache_chunk"),
    )
