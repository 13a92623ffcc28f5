"""List-wise Wasserstein loss over candidate lists with graded relevance.

Esfandiarpoor, Zerveas, Zhang, Mgonzo, Eickhoff, Bach. "Beyond Contrastive Learning: Synthetic
Data Enables List-wise Training with Multiple Levels of Relevance". Findings of EMNLP 2025.
https://arxiv.org/abs/2503.23239 (definition checked against the authors' code,
github.com/BatsResearch/sycl, ``WS2Loss``).

Each query ``q_i`` (B, d) comes with a list of ``L`` candidates ``c_il`` (B, L, d) and graded
relevance labels ``r_il`` (B, L), e.g. 0..3. Two distributions over each list::

    predicted p_i = softmax_l( cos(q_i, c_il) / temperature )
    target    t_i = softmax_l( r_il / label_temperature )            (authors: label_temperature 1)

With ``in_batch_negatives=True`` every query is also scored against the other queries' candidates
(relevance 0), as in the authors' code: the lists then have length ``B * L``.

Two distances are offered (``distance=``):

``"gaussian_w2"`` (the paper's loss, default). The ``B`` rows of ``P = [p_i]`` and ``T = [t_i]``
are treated as samples of two Gaussians in ``R^L`` with means ``mu_P, mu_T`` and covariances
``S_P, S_T`` (``1/(B-1)`` normalisation), and the loss is their squared 2-Wasserstein distance::

    W2^2 = ||mu_P - mu_T||^2 + tr(S_P) + tr(S_T) - 2 tr( (S_P^{1/2} S_T S_P^{1/2})^{1/2} )

computed exactly without a matrix square root: with ``S_P = C_P C_P^T`` (``C_P`` the centred
samples over ``sqrt(B-1)``, L x B), ``tr((S_P^{1/2} S_T S_P^{1/2})^{1/2})`` is the sum of the
square roots of the eigenvalues of ``S_P S_T``, i.e. of the singular values of ``C_P^T C_T``
(its nuclear norm). It is a statistic of the whole batch, not a sum over queries, so it has no
per-rank ``local_loss`` form: wrap it with ``GatheredObjective(..., local_loss=False)``.

``"ordinal_w1"`` (a per-query alternative added here, not in the paper; it decomposes over
queries, so it has a ``local_loss`` form, and needs no batch statistics). For each query, the 1-D Wasserstein-1 distance
between ``p_i`` and ``t_i`` placed on the ordinal relevance axis (candidate ``l`` sits at
``r_il``): moving mass between grades ``g < h`` costs ``h - g``, inside a grade nothing::

    W1_i = sum_k |F_p(g_k) - F_t(g_k)| * (g_{k+1} - g_k)      (F: CDFs over the sorted grades)
    loss = mean_i W1_i
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    check_temperature,
    in_float32,
    normalize,
)

ListDistance = Literal["gaussian_w2", "ordinal_w1"]


def list_logits_and_relevance(
    query: Tensor, candidates: Tensor, relevance: Tensor, in_batch_negatives: bool = False
) -> tuple[Tensor, Tensor]:
    """Cosine similarities of each query to its list, and the matching relevance, (B, L) each,
    or (B, B*L) with in-batch negatives (other queries' candidates get relevance 0)."""
    query, candidates = normalize(query), normalize(candidates)
    if not in_batch_negatives:
        return torch.einsum("bd,bld->bl", query, candidates), relevance
    batch, length = relevance.shape
    logits = query @ candidates.reshape(batch * length, -1).T
    own_list = torch.eye(batch, dtype=torch.bool, device=relevance.device).repeat_interleave(length, dim=1)
    full_relevance = relevance.new_zeros(batch, batch * length)
    full_relevance[own_list] = relevance.reshape(-1)
    return logits, full_relevance


@in_float32
def gaussian_wasserstein2_squared(predicted: Tensor, target: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance between Gaussians fitted to the rows of ``predicted`` and
    ``target`` (B, L) (B >= 2 samples in R^L). Formula and its SVD form in the module docstring."""
    batch = predicted.shape[0]
    centred_p = (predicted - predicted.mean(0)) / (batch - 1) ** 0.5  # rows: samples; C_P^T
    centred_t = (target - target.mean(0)) / (batch - 1) ** 0.5
    mean_term = (predicted.mean(0) - target.mean(0)).pow(2).sum()
    trace_term = centred_p.pow(2).sum() + centred_t.pow(2).sum()
    cross_term = torch.linalg.svdvals(centred_p @ centred_t.T).sum()
    return mean_term + trace_term - 2 * cross_term


@in_float32
def ordinal_wasserstein1(predicted: Tensor, target: Tensor, relevance: Tensor) -> Tensor:
    """Per-list W1 (B,) between ``predicted`` and ``target`` masses (B, L) located at the
    relevance grades ``relevance`` (B, L) on the real line."""
    grades, order = relevance.to(predicted.dtype).sort(dim=1)
    cdf_gap = (predicted.gather(1, order) - target.gather(1, order)).cumsum(1)[:, :-1]
    return (cdf_gap.abs() * grades.diff(dim=1)).sum(1)


@OBJECTIVES.register("listwise")
class ListwiseWasserstein(ContrastiveObjective):
    """List-wise Wasserstein loss with graded relevance (module docstring).

    Args:
        temperature: temperature of the predicted distribution over a list (the paper's value is
            not given here; 0.05 is a common choice for cosine-similarity retrievers).
        label_temperature: temperature of the target distribution ``softmax(r / label_temperature)``.
        distance: ``"gaussian_w2"`` (paper) or ``"ordinal_w1"``.
        in_batch_negatives: also score each query against the other queries' candidates.

    Inputs:
        query: (B, d) query embeddings.
        candidates: (B, L, d) embeddings of each query's list, or (B, d) for one candidate per
            query (then use ``in_batch_negatives=True`` so that the lists are not trivial).
        relevance: (B, L) (or (B,)) graded labels, higher = more relevant.

    Example::

        objective = objectives.get("listwise", temperature=0.05)
        loss = objective(q, c.view(B, L, -1), relevance=grades)      # grades in {0, 1, 2, 3}
    """

    not_for_view_pairs = "it needs candidate lists with graded relevance labels, not view pairs"

    per_sample_inputs = ("relevance",)

    def __init__(
        self,
        temperature: float = 0.05,
        label_temperature: float = 1.0,
        distance: ListDistance = "gaussian_w2",
        in_batch_negatives: bool = False,
    ):
        super().__init__()
        if distance not in ("gaussian_w2", "ordinal_w1"):
            raise ConfigError(f"Unknown listwise distance '{distance}'. Valid distances: gaussian_w2, ordinal_w1.")
        self.temperature = check_temperature(temperature)
        self.label_temperature = check_temperature(label_temperature, "label_temperature")
        self.distance = distance
        self.in_batch_negatives = in_batch_negatives

    @in_float32
    def distributions(
        self, query: Tensor, candidates: Tensor, relevance: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted and target distributions (B, L') and the relevance of each list entry."""
        if relevance is None:
            raise DataError("listwise needs graded labels: call it as listwise(query, candidates, relevance=labels).")
        if candidates.ndim == 2:  # one candidate per query
            candidates, relevance = candidates.unsqueeze(1), relevance.reshape(-1, 1)
        if query.ndim != 2 or candidates.ndim != 3 or candidates.shape[0] != query.shape[0] \
                or candidates.shape[2] != query.shape[1] or relevance.shape != candidates.shape[:2]:
            raise DataError(
                f"listwise: expected query (B, d), candidates (B, L, d), relevance (B, L); got "
                f"{tuple(query.shape)}, {tuple(candidates.shape)}, {tuple(relevance.shape)}."
            )
        logits, relevance = list_logits_and_relevance(query, candidates, relevance, self.in_batch_negatives)
        predicted = torch.softmax(logits / self.temperature, dim=1)
        target = torch.softmax(relevance.to(logits.dtype) / self.label_temperature, dim=1)
        return predicted, target, relevance

    def loss_terms(
        self, query: Tensor, candidates: Tensor, *, relevance: Tensor | None = None, anchor_rows: slice | None = None
    ) -> LossTerms:
        """Per-query form (``ordinal_w1`` only): sum of ``W1_i`` over ``anchor_rows`` and ``B``."""
        if self.distance != "ordinal_w1":
            raise ConfigError(
                "listwise with distance='gaussian_w2' is a statistic of the whole batch and has no per-rank "
                "local loss: wrap it with GatheredObjective(objective, local_loss=False), or use "
                "distance='ordinal_w1'."
            )
        rows = slice(None) if anchor_rows is None else anchor_rows
        predicted, target, relevance = self.distributions(query, candidates, relevance)
        return LossTerms(ordinal_wasserstein1(predicted[rows], target[rows], relevance[rows]).sum(), query.shape[0])

    def forward(self, query: Tensor, candidates: Tensor, *, relevance: Tensor | None = None) -> Tensor:
        if self.distance == "ordinal_w1":
            return self.loss_terms(query, candidates, relevance=relevance).mean()
        predicted, target, _ = self.distributions(query, candidates, relevance)
        if predicted.shape[0] < 2:
            raise DataError(
                "listwise with distance='gaussian_w2' fits covariances over the batch: it needs B >= 2 queries."
            )
        return gaussian_wasserstein2_squared(predicted, target)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, label_temperature={self.label_temperature}, "
            f"distance={self.distance!r}, in_batch_negatives={self.in_batch_negatives}"
        )
