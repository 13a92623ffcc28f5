"""Multiple negatives ranking: each anchor against every positive and every hard negative of the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    anchor_range,
    check_temperature,
    in_float32,
    normalize,
)
from contrastkit.objectives.registry import OBJECTIVES


def candidate_matrix(positives: Tensor, negatives: Tensor | None) -> Tensor:
    """The (N + N k, d) candidates: the N positives, then the negatives row by row
    (``negatives[i, j]`` at ``N + i k + j``)."""
    if negatives is None or negatives.shape[1] == 0:
        return positives
    return torch.cat([positives, negatives.reshape(-1, negatives.shape[-1])])


def _check(anchors: Tensor, positives: Tensor, negatives: Tensor | None) -> None:
    if anchors.dim() != 2 or anchors.shape != positives.shape:
        raise DataError(f"multiple_negatives: anchors and positives must be (N, d) tensors of the same shape (row i "
                        f"of each is a positive pair), got {tuple(anchors.shape)} and {tuple(positives.shape)}.")
    if negatives is not None and (negatives.dim() != 3 or negatives.shape[0] != anchors.shape[0]
                                  or negatives.shape[2] != anchors.shape[1]):
        raise DataError(f"multiple_negatives: negatives must be (N, k, d) = ({anchors.shape[0]}, k, "
                        f"{anchors.shape[1]}): k hard negatives per row, got {tuple(negatives.shape)}.")


@in_float32
def multiple_negatives_terms(anchors: Tensor, positives: Tensor, temperature: float, negatives: Tensor | None = None,
                             anchor_rows: slice | None = None) -> LossTerms:
    """The summed losses of the anchors ``anchor_rows`` (all when None) and the count N; see
    :class:`MultipleNegativesRanking`."""
    _check(anchors, positives, negatives)
    rows = anchor_range(anchor_rows, anchors.shape[0], anchors.device)
    candidates = normalize(candidate_matrix(positives, negatives))
    logits = normalize(anchors[rows]) @ candidates.T / temperature  # (A, N + N k); anchor i's positive: column i
    return LossTerms(F.cross_entropy(logits, rows, reduction="sum"), anchors.shape[0])


@OBJECTIVES.register("multiple_negatives")
class MultipleNegativesRanking(ContrastiveObjective):
    r"""InfoNCE of (anchor, positive, negative_1 .. negative_k) rows with in-batch negatives.

    Row ``i`` holds anchor ``a_i``, its positive ``p_i`` and ``k`` hard negatives ``n_i1 .. n_ik``
    (``k`` may be 0). The candidates of *every* anchor are all ``N`` positives and all ``N k``
    negatives of the batch: its own positive, the other rows' positives (in-batch negatives) and
    every row's hard negatives. With cosine similarity ``s(x, y)`` and temperature ``t``::

        loss_i = -s(a_i, p_i) / t + log( sum_j exp(s(a_i, p_j) / t) + sum_{j, l} exp(s(a_i, n_jl) / t) )
        loss   = mean_i loss_i

    With ``k = 0`` this is the query-key InfoNCE (``query_key_infonce``, SimCSE's Eq. 1); the
    hard negatives of the other rows are negatives too, as in sentence-transformers'
    MultipleNegativesRankingLoss (the default scale 20 is ``t = 0.05``) and DPR's in-batch training.

    Data-parallel: ``negatives`` is a per-sample input, so :class:`~contrastkit.nn.distributed.GatheredObjective`
    gathers it (with gradient) like the positives, and every anchor meets the positives and
    negatives of every process: the loss of one process on the concatenated batch.

    Args:
        temperature: ``t`` (0.05).

    Inputs:
        anchors, positives: (N, d); row i of each is a positive pair.
        negatives: optional (N, k, d), the hard negatives of each row.

    References:
        - Henderson, Al-Rfou, Strope, Sung, Lukács, Guo, Kumar, Miklos & Kurzweil, "Efficient Natural
          Language Response Suggestion for Smart Reply", 2017 (multiple negatives ranking).
          https://arxiv.org/abs/1705.00652
        - Karpukhin, Oğuz, Min, Lewis, Wu, Edunov, Chen & Yih, "Dense Passage Retrieval for
          Open-Domain Question Answering", EMNLP 2020 (in-batch + hard negatives). https://arxiv.org/abs/2004.04906

    Example::

        objective = objectives.get("multiple_negatives", temperature=0.05)
        loss = objective(encoder(anchors), encoder(positives), negatives=encoder(negatives).view(n, k, -1))
    """

    per_sample_inputs = ("negatives",)

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def loss_terms(self, anchors: Tensor, positives: Tensor, *, anchor_rows: slice | None = None,
                   negatives: Tensor | None = None) -> LossTerms:
        return multiple_negatives_terms(anchors, positives, self.temperature, negatives, anchor_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
