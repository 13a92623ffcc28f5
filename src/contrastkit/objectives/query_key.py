"""Query-key InfoNCE (SimCSE, MoCo, CCP) and the in-batch softmax of two-tower retrieval.

Both compare query ``i`` with every key (item) of the batch, the key of the same row being its
positive; unlike the two-view NT-Xent of :mod:`contrastkit.objectives.infonce`, queries are only
compared with keys, never with the other queries.

- :func:`query_key_infonce` / :class:`QueryKeyInfoNCE` (``query_key_infonce``): optional weights
  on the in-batch negatives (DebCSE) and a queue of extra negatives (CCP, MoCo). Used by the
  DebCSE, WhitenedCSE, CCP and ICT text methods.
- :func:`in_batch_softmax_loss` / :class:`InBatchSoftmax` (``in_batch_softmax``): the logQ
  correction of popularity-biased negatives and the masking of duplicate items (Yi et al. 2019;
  Yao et al. 2021). Used by :mod:`contrastkit.recipes.recommendation`.

With neither weights, queue, logQ nor duplicates the two are the same loss (tested).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    anchor_range,
    check_per_sample,
    check_temperature,
    in_float32,
    normalize,
)

# ----------------------------------------------------------------------------- query-key InfoNCE


@in_float32
def query_key_infonce(
    queries: Tensor,
    keys: Tensor,
    temperature: float,
    extra_negatives: Tensor | None = None,
    negative_weights: Tensor | None = None,
) -> Tensor:
    """Mean InfoNCE of ``queries`` (B, d) against ``keys`` (B, d) (+ ``extra_negatives`` (K, d));
    ``negative_weights`` (B, B) scales the in-batch negatives (its diagonal is ignored). See
    :class:`QueryKeyInfoNCE` for the formula."""
    logits = query_key_logits(queries, keys, temperature, extra_negatives, negative_weights)
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=logits.device))


def query_key_logits(queries: Tensor, keys: Tensor, temperature: float, extra_negatives: Tensor | None = None,
                     negative_weights: Tensor | None = None) -> Tensor:
    """(B, B + K) logits of the query-key InfoNCE; the positive of row i is column i."""
    _check_query_key(queries, keys, extra_negatives)
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


@in_float32
def query_key_terms(queries: Tensor, keys: Tensor, temperature: float, extra_negatives: Tensor | None = None,
                    anchor_rows: slice | None = None) -> LossTerms:
    """The query-key InfoNCE terms of the queries ``anchor_rows`` (all when None) against every key."""
    _check_query_key(queries, keys, extra_negatives)
    rows = anchor_range(anchor_rows, queries.shape[0], queries.device)
    u = normalize(queries[rows])
    logits = u @ normalize(keys).T / temperature  # (A, B); the positive of query rows[a] is key rows[a]
    if extra_negatives is not None and extra_negatives.shape[0] > 0:
        logits = torch.cat([logits, u @ normalize(extra_negatives.detach()).T / temperature], dim=1)
    return LossTerms(F.cross_entropy(logits, rows, reduction="sum"), queries.shape[0])


def _check_query_key(queries: Tensor, keys: Tensor, extra_negatives: Tensor | None) -> None:
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


@OBJECTIVES.register("query_key_infonce")
class QueryKeyInfoNCE(ContrastiveObjective):
    r"""Query-key InfoNCE: each query against the keys of the batch and an optional queue.

    Row ``i`` of ``queries`` and row ``i`` of ``keys`` are a positive pair; every other key of
    the batch, and every row of ``extra_negatives`` (a memory queue), is a negative of query
    ``i``. With ``u = normalize(queries)``, ``v = normalize(keys)``, ``n = normalize(extra_negatives)``
    (K rows), ``s_ij = u_i . v_j / temperature`` and optional weights ``w_ij >= 0`` on the in-batch
    negatives (:func:`query_key_infonce` only)::

        loss_i = -s_ii + log( exp(s_ii) + sum_{j != i} w_ij exp(s_ij) + sum_{m < K} exp(u_i . n_m / temperature) )
        loss   = mean_i loss_i

    With all ``w_ij = 1`` and no queue this is SimCSE's loss (a cross-entropy over the rows of
    ``u v^T / temperature`` with the diagonal as targets). A weight ``w_ij`` counts negative ``j``
    ``w_ij`` times in the denominator: 0 removes it (a false negative, DebCSE), 2 counts it twice.
    It is implemented as ``log w_ij`` added to the logit, so the weights never need ``exp`` of a
    large number. The queue is detached (its keys are not trained through).

    Across processes, wrapped in :class:`~contrastkit.nn.distributed.GatheredObjective`, each query
    meets the keys of every process (gathered with gradient): the loss of one process on the
    concatenated batch. The queue must be the same on every process. (Negative weights are per
    pair of a local batch and have no ``loss_terms`` form; the module does not take them.)

    Args:
        temperature: ``tau`` (SimCSE: 0.05).

    Inputs:
        queries, keys: (B, d); row i of each is a positive pair.
        extra_negatives: optional (K, d) queue, the same on every process.

    References:
        - Gao, Yao & Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP 2021,
          Eq. 1. https://arxiv.org/abs/2104.08821
        - He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020
          (the queue). https://arxiv.org/abs/1911.05722
        - Wu et al., "Unsupervised Context Aware Sentence Representation Pretraining for
          Multi-lingual Dense Retrieval" (CCP), IJCAI 2022. https://arxiv.org/abs/2206.03281
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, queries: Tensor, keys: Tensor, extra_negatives: Tensor | None = None) -> Tensor:
        return query_key_infonce(queries, keys, self.temperature, extra_negatives)

    def loss_terms(self, queries: Tensor, keys: Tensor, *, anchor_rows: slice | None = None,
                   extra_negatives: Tensor | None = None) -> LossTerms:
        return query_key_terms(queries, keys, self.temperature, extra_negatives, anchor_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


# ----------------------------------------------------------------------------- in-batch softmax


def _in_batch_logits(queries: Tensor, items: Tensor, temperature: float, item_ids: Tensor | None,
                     log_item_probability: Tensor | None, rows: Tensor | None = None) -> Tensor:
    """Logits of the query rows ``rows`` (all when None) against every item of the batch."""
    if queries.ndim != 2 or queries.shape != items.shape:
        raise DataError(
            f"in-batch softmax needs query and item embeddings of the same shape (B, d), got "
            f"{tuple(queries.shape)} and {tuple(items.shape)}."
        )
    batch = queries.shape[0]
    for name, value in (("item_ids", item_ids), ("log_item_probability", log_item_probability)):
        if value is not None:
            check_per_sample(value, batch, name, "in_batch_softmax")
    u = F.normalize(queries, dim=1)
    logits = (u if rows is None else u[rows]) @ F.normalize(items, dim=1).T / temperature
    if log_item_probability is not None:
        logits = logits - log_item_probability[None, :]
    if item_ids is not None:
        anchors = torch.arange(batch, device=logits.device) if rows is None else rows
        duplicate = (item_ids[anchors, None] == item_ids[None, :]) & (
            anchors[:, None] != torch.arange(batch, device=logits.device)[None, :]
        )
        logits = logits.masked_fill(duplicate, float("-inf"))
    return logits


def in_batch_softmax_loss(
    queries: Tensor,
    items: Tensor,
    temperature: float,
    item_ids: Tensor | None = None,
    log_item_probability: Tensor | None = None,
) -> Tensor:
    """``-1/B sum_i log softmax_j(s_ij)[i]`` with ``s_ij = <q_i, v_j> / temperature - log p_j``.

    ``queries`` (B, d), ``items`` (B, d), row i a positive pair; both are L2-normalised.
    ``log_item_probability`` (B,): ``log p_j`` of each batch item (logQ correction; omitted when
    None). ``item_ids`` (B,): when given, a column ``j != i`` holding the same item as row ``i``
    is left out of row i's softmax. See :class:`InBatchSoftmax`. Computed in the inputs' dtype.
    """
    logits = _in_batch_logits(queries, items, temperature, item_ids, log_item_probability)
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def in_batch_softmax_terms(
    queries: Tensor,
    items: Tensor,
    temperature: float,
    item_ids: Tensor | None = None,
    log_item_probability: Tensor | None = None,
    anchor_rows: slice | None = None,
) -> LossTerms:
    """The in-batch softmax terms of the queries ``anchor_rows`` (all when None) against every item."""
    rows = anchor_range(anchor_rows, queries.shape[0], queries.device)
    logits = _in_batch_logits(queries, items, temperature, item_ids, log_item_probability, rows)
    return LossTerms(F.cross_entropy(logits, rows, reduction="sum"), queries.shape[0])


@OBJECTIVES.register("in_batch_softmax")
class InBatchSoftmax(ContrastiveObjective):
    r"""The in-batch softmax of two-tower retrieval, with logQ correction and duplicate masking.

    For B positive (query, item) pairs, ``u = normalize(queries)``, ``v = normalize(items)``,
    ``log p_j`` the log probability that item ``j`` appears in a batch (``log_item_probability``,
    0 when not given) and ``D_i = {j != i : item_ids_j = item_ids_i}`` (empty without ``item_ids``)::

        s_ij   = u_i . v_j / temperature - log p_j
        loss_i = -s_ii + log sum_{j not in D_i} exp(s_ij)
        loss   = mean_i loss_i

    The other items of the batch are the negatives; subtracting ``log p_j`` corrects for popular
    items being over-represented among them (sampled softmax), and a duplicate of the positive
    item is not a negative. Without logQ and ``item_ids`` this is :class:`QueryKeyInfoNCE`.
    Computed in the inputs' dtype (as the recommendation recipe always has).

    Args:
        temperature: ``tau`` (the recommendation recipe's default: 0.1).

    Inputs:
        queries, items: (B, d); row i of each is a positive pair.
        item_ids: optional (B,) item identities (duplicates are masked).
        log_item_probability: optional (B,) ``log p_j`` of each row's item.
        Both are per-sample inputs (gathered across processes with the embeddings).

    References:
        - Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
          Recommendations", RecSys 2019 (in-batch softmax, logQ correction).
        - Yao et al., "Self-supervised Learning for Large-scale Item Recommendations", CIKM 2021.
          https://arxiv.org/abs/2007.12865
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("item_ids", "log_item_probability")

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, queries: Tensor, items: Tensor, item_ids: Tensor | None = None,
                log_item_probability: Tensor | None = None) -> Tensor:
        return in_batch_softmax_loss(queries, items, self.temperature, item_ids, log_item_probability)

    def loss_terms(self, queries: Tensor, items: Tensor, *, anchor_rows: slice | None = None,
                   item_ids: Tensor | None = None, log_item_probability: Tensor | None = None) -> LossTerms:
        return in_batch_softmax_terms(queries, items, self.temperature, item_ids, log_item_probability, anchor_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
