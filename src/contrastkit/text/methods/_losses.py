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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.errors import DataError
from contrastkit.objectives._common import in_float32, normalize


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
    if queries.dim() != 2 or queries.shape != keys.shape:
        raise DataError(
            f"query_key_infonce: queries and keys must be (batch, dim) tensors of the same shape "
            f"(row i of each is a positive pair), got {tuple(queries.shape)} and {tuple(keys.shape)}."
        )
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
        if extra_negatives.dim() != 2 or extra_negatives.shape[1] != queries.shape[1]:
            raise DataError(
                f"query_key_infonce: extra_negatives must be (K, {queries.shape[1]}), "
                f"got {tuple(extra_negatives.shape)}."
            )
        logits = torch.cat([logits, u @ normalize(extra_negatives.detach()).T / temperature], dim=1)
    return F.cross_entropy(logits, torch.arange(batch, device=logits.device))
