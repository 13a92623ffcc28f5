"""The query-key InfoNCE shared by the DebCSE, WhitenedCSE and CCP text methods.

Row ``i`` of ``queries`` and row ``i`` of ``keys`` are a positive pair; every other key of the
batch, and every row of ``extra_negatives`` (a memory queue), is a negative of query ``i``. With
``u = normalize(queries)``, ``v = normalize(keys)``, ``n = normalize(extra_negatives)`` (K rows),
``s_ij = u_i . v_j / temperature`` and optional weights ``w_ij >= 0`` on the in-batch negatives::

    loss_i = -s_ii + log( exp(s_ii) + sum_{j != i} w_ij exp(s_ij) + sum_{m < K} exp(u_i . n_m / temperature) )
    loss   = mean_i loss_i

With all ``w_ij = 1`` and no queue this is SimCSE's loss (Gao et al. 2021, Eq. 1: a cross-entropy
over the rows of ``u v^T / temperature`` with the diagonal as targets). A weight ``w_ij`` counts
negative ``j`` ``w_ij`` times in the denominator: 0 removes it (a false negative), 2 counts it twice.
It is implemented as ``log w_ij`` added to the logit, so the weights never need ``exp`` of a large
number. Unlike the two-view NT-Xent of :mod:`contrastkit.objectives.infonce`, queries are only
compared with keys (not with the other queries), as in SimCSE, MoCo and CCP.

Across processes, :class:`QueryKeyInfoNCE` wrapped in
:class:`~contrastkit.nn.distributed.GatheredObjective` (:func:`gathered_query_key_infonce`) compares
each query with the keys of every process (gathered with gradient): the loss of one process on the
concatenated batch. Negative weights are per pair of the local batch and stay per process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.nn.distributed import GatheredObjective
from contrastkit.core.errors import DataError
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    anchor_range,
    check_temperature,
    in_float32,
    normalize,
)


@in_float32
def query_key_infonce(
    queries: Tensor,
    keys: Tensor,
    temperature: float,
    extra_negatives: Tensor | None = None,
    negative_weights: Tensor | None = None,
) -> Tensor:
    """Mean InfoNCE of ``queries`` (B, d) against ``keys`` (B, d) (+ ``extra_negatives`` (K, d));
    ``negative_weights`` (B, B) scales the in-batch negatives (its diagonal is ignored). See the
    module docstring for the formula."""
    logits = query_key_logits(queries, keys, temperature, extra_negatives, negative_weights)
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=logits.device))


def query_key_logits(queries: Tensor, keys: Tensor, temperature: float, extra_negatives: Tensor | None = None,
                     negative_weights: Tensor | None = None) -> Tensor:
    """(B, B + K) logits of the query-key InfoNCE; the positive of row i is column i."""
    check_inputs(queries, keys, extra_negatives)
    batch = queries.shape[0]
    u, v = normalize(queries), normalize(keys)
    logits = u @ v.T / temperature  # (B, B); the diagonal holds the positives
    if negative_weights is not None:
        if negative_weights.shape != (batch, batch):
            raise DataError(
                f"query_key_infonce: negative_weights must be ({batch}, {batch}), got {tuple(negative_weights.shape)}."
            )
        log_weights = torch.log(negative_weights.detach().to(logits.dtype))  # log 0 = -inf removes a negative
        log_weights = log_weights.masked_fill(torch.eye(batch, dtype=torch.bool, device=logits.device), 0.0)
        logits = logits + log_weights
    if extra_negatives is not None and extra_negatives.shape[0] > 0:
        logits = torch.cat([logits, u @ normalize(extra_negatives.detach()).T / temperature], dim=1)
    return logits


def check_inputs(queries: Tensor, keys: Tensor, extra_negatives: Tensor | None) -> None:
    if queries.dim() != 2 or queries.shape != keys.shape:
        raise DataError(
            f"query_key_infonce: queries and keys must be (batch, dim) tensors of the same shape "
            f"(row i of each is a positive pair), got {tuple(queries.shape)} and {tuple(keys.shape)}."
        )
    if extra_negatives is not None and extra_negatives.shape[0] > 0 and (
            extra_negatives.dim() != 2 or extra_negatives.shape[1] != queries.shape[1]):
        raise DataError(
            f"query_key_infonce: extra_negatives must be (K, {queries.shape[1]}), got {tuple(extra_negatives.shape)}."
        )


class QueryKeyInfoNCE(ContrastiveObjective):
    """:func:`query_key_infonce` at a fixed temperature, with the ``loss_terms`` of the distributed
    protocol: the summed losses of the queries ``anchor_rows`` against all keys, over the batch size."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, queries: Tensor, keys: Tensor, extra_negatives: Tensor | None = None) -> Tensor:
        return query_key_infonce(queries, keys, self.temperature, extra_negatives)

    def loss_terms(self, queries: Tensor, keys: Tensor, *, anchor_rows: slice | None = None,
                   extra_negatives: Tensor | None = None) -> LossTerms:
        return _query_key_terms(queries, keys, self.temperature, extra_negatives, anchor_rows)


@in_float32
def _query_key_terms(queries: Tensor, keys: Tensor, temperature: float, extra_negatives: Tensor | None,
                     anchor_rows: slice | None) -> LossTerms:
    """The query-key InfoNCE terms of the queries ``anchor_rows`` (all when None) against every key."""
    check_inputs(queries, keys, extra_negatives)
    rows = anchor_range(anchor_rows, queries.shape[0], queries.device)
    u = normalize(queries[rows])
    logits = u @ normalize(keys).T / temperature  # (A, B); the positive of query rows[a] is key rows[a]
    if extra_negatives is not None and extra_negatives.shape[0] > 0:
        logits = torch.cat([logits, u @ normalize(extra_negatives.detach()).T / temperature], dim=1)
    return LossTerms(F.cross_entropy(logits, rows, reduction="sum"), queries.shape[0])


def gathered_query_key_infonce(temperature: float) -> nn.Module:
    """:class:`QueryKeyInfoNCE` over the keys of every process (the identity wrapper in one process)."""
    return GatheredObjective(QueryKeyInfoNCE(temperature))
