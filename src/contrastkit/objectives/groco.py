"""GroCo: group ordering constraints through a differentiable sorting network.

Shvetsova, Petersen, Kukleva, Schiele, Kuehne. "Learning by Sorting: Self-supervised Learning
with Group Ordering Constraints". ICCV 2023. https://arxiv.org/abs/2301.02009 (loss checked against
the authors' code, github.com/ninatu/learning_by_sorting, ``losses/groco.py``). Sorting network:
Petersen, Borgelt, Kuehne, Deussen. "Differentiable Sorting Networks for Scalable Sorting and
Ranking Supervision". ICML 2021.

Relaxed sorting (:func:`relaxed_odd_even_sort`). The odd-even transposition network sorts ``n``
values in ``n`` layers of compare-and-swap on neighbours ``(a, b)``. Relaxed, each comparator keeps
the order with probability ``alpha = f(steepness * (b - a))`` (``f`` logistic or Cauchy CDF)::

    min' = alpha * a + (1 - alpha) * b        max' = (1 - alpha) * a + alpha * b

and the same mix of columns of the running matrix ``P`` (starting at the identity) gives a doubly
stochastic relaxed permutation: ``P[i, j]`` = probability that input ``i`` ends at ascending
position ``j``, ``sorted = x @ P``. As ``steepness -> inf`` it tends to the hard sort.

Loss, per anchor ``z_i^v`` (L2-normalised): its similarities to the ``P`` positives (the other views
of sample ``i``) and to the ``K`` most similar negatives (the other samples of view ``v``), both
computed against stop-gradient keys, are pre-ordered (negatives ascending, then positives
ascending) into ``x`` (length ``n = K + P``) and relaxed-sorted. With ``t_j = 1`` for the
positives and ``q_j = sum_{positions >= K} P[j, :]`` the probability that element ``j`` lands
among the top ``P`` positions::

    loss_i^v = mean_j BCE(q_j, t_j) = -mean_j [ t_j log q_j + (1 - t_j) log(1 - q_j) ]
    loss     = mean_i mean_v loss_i^v

(The authors average this with the same BCE on the bottom-``K`` probabilities ``1 - q_j``,
which is identical term by term.) Zero loss means every positive is ranked above every negative.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    in_float32,
    normalize,
)
from contrastkit.objectives.cacr import stack_views

SwapFunction = Literal["logistic", "cauchy"]


def swap_probability(difference: Tensor, steepness: float, swap: SwapFunction) -> Tensor:
    """``alpha = f(steepness * (b - a))``: the relaxed probability that ``a <= b`` (keep order)."""
    scaled = steepness * difference
    if swap == "logistic":
        return torch.sigmoid(scaled)
    if swap == "cauchy":
        return torch.atan(scaled) / math.pi + 0.5
    raise ConfigError(f"Unknown swap function '{swap}'. Valid swap functions: cauchy, logistic.")


def relaxed_odd_even_sort(
    values: Tensor, steepness: float = 10.0, swap: SwapFunction = "logistic"
) -> tuple[Tensor, Tensor]:
    """Relaxed ascending sort of each row of ``values`` (B, n).

    Returns ``(sorted_values (B, n), permutation (B, n, n))`` with
    ``permutation[b, i, j]`` = probability that input ``i`` ends at position ``j`` (rows and columns
    sum to 1) and ``sorted_values = values @ permutation`` row-wise.
    """
    batch, n = values.shape
    x = values
    permutation = torch.eye(n, dtype=values.dtype, device=values.device).expand(batch, n, n)
    for layer in range(n):
        low = torch.arange(layer % 2, n - 1, 2, device=values.device)
        if low.numel() == 0:
            continue
        high = low + 1
        a, b = x[:, low], x[:, high]
        alpha = swap_probability(b - a, steepness, swap)
        x = x.index_copy(1, low, alpha * a + (1 - alpha) * b).index_copy(1, high, (1 - alpha) * a + alpha * b)
        col_a, col_b, alpha = permutation[:, :, low], permutation[:, :, high], alpha.unsqueeze(1)
        permutation = permutation.index_copy(2, low, alpha * col_a + (1 - alpha) * col_b)
        permutation = permutation.index_copy(2, high, (1 - alpha) * col_a + alpha * col_b)
    return x, permutation


@in_float32
def group_ordering_loss_per_anchor(
    positive_similarity: Tensor,
    negative_similarity: Tensor,
    steepness: float = 1.0,
    swap: SwapFunction = "cauchy",
) -> Tensor:
    """GroCo loss (B,) of anchors with ``P`` positive (B, P) and ``K`` negative (B, K) similarities."""
    num_negatives, num_positives = negative_similarity.shape[1], positive_similarity.shape[1]
    ordered = torch.cat([negative_similarity.sort(dim=1).values, positive_similarity.sort(dim=1).values], dim=1)
    _, permutation = relaxed_odd_even_sort(ordered, steepness, swap)
    top_probability = permutation[:, :, num_negatives:].sum(-1).clamp(0, 1)  # numerical drift
    is_positive = torch.cat([ordered.new_zeros(num_negatives), ordered.new_ones(num_positives)])
    bce = F.binary_cross_entropy(top_probability, is_positive.expand_as(top_probability), reduction="none")
    return bce.mean(1)


@OBJECTIVES.register("groco")
class GroCo(ContrastiveObjective):
    """Group Ordering Constraints loss (module docstring).

    Args:
        num_negatives: ``K``, the hardest in-batch negatives sorted with the positives (paper: 10).
        steepness: inverse softness of the relaxed comparators (paper's configs: 1).
        swap: ``"cauchy"`` (authors' choice) or ``"logistic"`` relaxation of a comparator.
        stop_gradient: compare anchors with detached positives and negatives, as the authors do.

    Inputs:
        z_a, z_b: (B, d) embeddings of two views, or (B, V, d) tensors for more views per sample.

    Example::

        loss = objectives.get("groco", num_negatives=10)(z_a, z_b)
    """

    def __init__(
        self,
        num_negatives: int = 10,
        steepness: float = 1.0,
        swap: SwapFunction = "cauchy",
        stop_gradient: bool = True,
    ):
        super().__init__()
        if num_negatives < 1 or steepness <= 0:
            raise ConfigError(f"groco: need num_negatives >= 1 and steepness > 0, got {num_negatives}, {steepness}.")
        swap_probability(torch.zeros(1), 1.0, swap)  # validates the name
        self.num_negatives = num_negatives
        self.steepness = steepness
        self.swap = swap
        self.stop_gradient = stop_gradient

    @in_float32
    def loss_terms(
        self, z_a: Tensor, z_b: Tensor | None = None, *, anchor_rows: slice | None = None
    ) -> LossTerms:
        """Sum over samples ``anchor_rows`` of the mean over their views of the anchor losses,
        and the batch size; negatives come from the whole batch."""
        views = normalize(stack_views(z_a, z_b))
        batch, num_views = views.shape[:2]
        if num_views < 2 or batch < 2:
            raise DataError(
                f"groco needs at least 2 views of at least 2 samples; got (B, V, d) = {tuple(views.shape)}."
            )
        keys = views.detach() if self.stop_gradient else views
        rows = torch.arange(batch, device=views.device)[slice(None) if anchor_rows is None else anchor_rows]
        num_negatives = min(self.num_negatives, batch - 1)
        per_view = []
        for v in range(num_views):
            anchor = views[rows, v]  # (b, d)
            others = [u for u in range(num_views) if u != v]
            positive = torch.einsum("bd,bpd->bp", anchor, keys[rows][:, others])
            negative = anchor @ keys[:, v].T  # (b, B), the anchor's own view of all samples
            negative = negative.scatter(1, rows.unsqueeze(1), float("-inf"))  # not itself
            negative = negative.topk(num_negatives, dim=1).values
            per_view.append(group_ordering_loss_per_anchor(positive, negative, self.steepness, self.swap))
        return LossTerms(torch.stack(per_view).mean(0).sum(), batch)

    def extra_repr(self) -> str:
        return (
            f"num_negatives={self.num_negatives}, steepness={self.steepness}, swap={self.swap!r}, "
            f"stop_gradient={self.stop_gradient}"
        )
