"""WhitenedCSE: contrastive sentence embeddings with shuffled group whitening as extra positives.

Zhuo, Sun, Wang, Zhu & Yang, "WhitenedCSE: Whitening-based Contrastive Learning of Sentence
Embeddings", ACL 2023 (https://arxiv.org/abs/2305.17746); the authors' code is
github.com/SupstarZh/WhitenedCSE (read for the details below, not copied).

Each sentence is encoded ``num_positives`` (P) times in one forward pass, each copy with its own
dropout mask (SimCSE's noise). Each copy ``k`` goes through shuffled group whitening with its own
random feature permutation (:mod:`._whitening`) and then the head ``g = tanh(Linear(D, D))``::

    z^k = g( SGW_{perm_k}( f(x)^k ) ),   k = 1 .. P

Whitening spreads the batch out (uniformity, like the "push" of the negatives but by a different
mechanism), and since a new permutation groups the features differently, the P copies are P
different views of each sentence: more, and more diverse, positives (alignment). The loss treats
copy 1 as the anchor and each other copy as a positive, with in-batch negatives taken from the
same copy (the paper's multi-positive loss; ``loss1 + loss2`` for P = 3 in the authors' ``cl_forward``)::

    loss = sum_{k=2..P} mean_i -log( exp(cos(z^1_i, z^k_i) / t) / sum_j exp(cos(z^1_i, z^k_j) / t) )

Defaults follow the authors' unsupervised recipe: P = 3, temperature 0.05, 128 groups (6 features
per group for BERT-base's 768; for all-MiniLM-L6-v2's 384 that is 3), ZCA whitening. As in their
``mlp_only_train`` setting, whitening and head are training-only: the sentence embedding is the
encoder's output. Under several processes each process whitens its own batch (as per-process
BatchNorm) and the InfoNCE's negatives are the whitened copies of every process (gathered).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import check_temperature
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.methods import check_options
from contrastkit.modalities.text.methods._losses import gathered_query_key_infonce
from contrastkit.modalities.text.methods._whitening import WHITENING_METHODS, shuffled_group_whiten

DEFAULTS = {"temperature": 0.05, "num_positives": 3, "num_groups": 128, "whitening": "zca", "eps": 1e-5}


class WhitenedCSE(nn.Module):
    """P dropout copies, each shuffled-group-whitened, then a tanh head; copy 1 is the anchor."""

    def __init__(self, encoder: TextEncoder, *, temperature: float = 0.05, num_positives: int = 3,
                 num_groups: int = 128, whitening: str = "zca", eps: float = 1e-5):
        super().__init__()
        dim = encoder.output_dim
        if not isinstance(num_positives, int) or num_positives < 2:
            raise ConfigError(f"Option whitenedcse.num_positives counts the anchor copy too and must be an "
                              f"integer >= 2 (the paper uses 3), got {num_positives!r}.")
        if not isinstance(num_groups, int) or num_groups < 1 or dim % num_groups:
            divisors = ", ".join(str(g) for g in range(1, dim + 1) if dim % g == 0)
            raise ConfigError(f"Option whitenedcse.num_groups must divide the encoder's {dim} features, got "
                              f"{num_groups!r}. Valid choices: {divisors}.")
        if whitening not in WHITENING_METHODS:
            raise ConfigError(f"Option whitenedcse.whitening must be one of {', '.join(WHITENING_METHODS)}, "
                              f"got {whitening!r}.")
        if not eps > 0:
            raise ConfigError(f"Option whitenedcse.eps must be positive, got {eps!r}.")
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.temperature = check_temperature(temperature)
        # The negatives of every process (whitening itself uses this process's batch, as BatchNorm does).
        self.objective = gathered_query_key_infonce(self.temperature)
        self.num_positives = num_positives
        self.num_groups = num_groups
        self.whitening = whitening
        self.eps = float(eps)

    def whitened_views(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        """Split (P*B, D) encoder outputs into P copies and whiten each with a fresh permutation."""
        views = []
        for copy in embeddings.chunk(self.num_positives):
            permutation = torch.randperm(copy.shape[1], device=copy.device)
            views.append(self.head(shuffled_group_whiten(copy, self.num_groups, permutation,
                                                         self.whitening, self.eps)))
        return views

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        texts = list(batch["texts"])
        group_size = self.encoder.output_dim // self.num_groups
        if len(texts) <= group_size:
            raise DataError(
                f"whitenedcse whitens groups of {group_size} features over the batch, which needs more "
                f"than {group_size} texts per batch; got {len(texts)}. Raise the batch size or num_groups."
            )
        tokens = self.encoder.tokenize(texts)
        # One forward pass over P stacked copies: each row gets its own dropout mask.
        repeated = {name: value.repeat(self.num_positives, 1) for name, value in tokens.items()}
        anchor, *positives = self.whitened_views(self.encoder(repeated))
        loss = sum(self.objective(anchor, positive) for positive in positives)
        with torch.no_grad():
            alignment = torch.stack([F.cosine_similarity(anchor, p, dim=-1).mean() for p in positives]).mean()
        return loss, {"positive_cosine": float(alignment)}


def build(encoder: TextEncoder, **options) -> WhitenedCSE:
    """WhitenedCSE on ``encoder``; options (defaults in ``DEFAULTS``) as in :class:`WhitenedCSE`."""
    return WhitenedCSE(encoder, **check_options("whitenedcse", options, DEFAULTS))
