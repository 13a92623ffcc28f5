"""Supervised contrastive loss (SupCon, the L_out variant)."""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    anchor_range,
    check_pair,
    check_per_sample,
    check_temperature,
    in_float32,
    mask_value,
    normalize,
)


@in_float32
def supcon_terms(
    z_a: Tensor,
    z_b: Tensor | None,
    labels: Tensor,
    temperature: float,
    anchor_rows: slice | None = None,
) -> LossTerms:
    """SupCon terms of the anchors of samples ``anchor_rows``; see :class:`SupCon`.

    ``count`` is the number of anchors of the whole batch that have at least one positive.
    """
    check_pair(z_a, z_b, "supcon", allow_single=True)
    check_per_sample(labels, z_a.shape[0], "labels", "supcon")
    if labels.is_floating_point() or labels.dim() != 1:
        raise DataError(f"supcon: 'labels' must be a 1-d integer tensor of class ids, got {labels.dtype} {tuple(labels.shape)}.")
    n = z_a.shape[0]
    views = 1 if z_b is None else 2
    z = normalize(z_a if z_b is None else torch.cat([z_a, z_b]))  # (V N, d)
    y = labels.repeat(views)  # views share their sample's label
    samples = anchor_range(anchor_rows, n, z.device)
    anchors = torch.cat([samples + v * n for v in range(views)])

    logits = (z[anchors] @ z.T / temperature).scatter(1, anchors[:, None], mask_value(z.dtype))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # over all j != i
    positive = y[anchors, None] == y[None, :]
    positive[torch.arange(len(anchors), device=z.device), anchors] = False
    num_positives = positive.sum(dim=1)
    has_positive = num_positives > 0
    # where(), not multiplication: the masked diagonal of log_prob may be -inf, and -inf * 0 = nan.
    mean_log_prob_positive = torch.where(positive, log_prob, 0.0).sum(dim=1) / num_positives.clamp_min(1)
    total = -(mean_log_prob_positive * has_positive).sum()

    # Anchors of the whole batch with a positive: those whose label occurs at least twice among all V N rows.
    _, inverse, class_counts = torch.unique(y, return_inverse=True, return_counts=True)
    count = (class_counts[inverse] > 1).sum().to(z.dtype)
    return LossTerms(total, count.clamp_min(1))


@OBJECTIVES.register("supcon")
class SupCon(ContrastiveObjective):
    r"""Supervised contrastive loss, L_out (the average over positives is outside the log).

    With ``z = normalize(cat([z_a, z_b]))`` (V N rows, V = 2 views, or V = 1 when ``z_b`` is
    None), labels ``y`` repeated for each view, ``s_ij = z_i . z_j / temperature``, positives
    ``P(i) = {p != i : y_p = y_i}`` and ``A(i) = {a != i}``::

        loss_i = -1 / |P(i)| * sum_{p in P(i)} ( s_ip - log sum_{a in A(i)} exp(s_ia) )
        loss   = mean over the anchors i with |P(i)| > 0

    Anchors without a positive (a class seen once, single view) are left out of the mean.
    With all labels distinct and two views this is NT-Xent. The official code multiplies the
    loss by ``temperature / base_temperature``; here ``base_temperature = temperature`` (no
    factor). Embeddings are L2-normalised internally.

    Args:
        temperature: ``tau`` (0.1 in the paper).

    Inputs:
        z_a, z_b: (N, d) embeddings of the two views (``z_b`` may be None: single view).
        labels: (N,) integer class ids, one per sample (required keyword argument).

    References:
        - Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. 2.
          https://arxiv.org/abs/2004.11362
    """

    per_sample_inputs = ("labels",)

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def loss_terms(
        self, z_a: Tensor, z_b: Tensor | None = None, *, labels: Tensor, anchor_rows: slice | None = None
    ) -> LossTerms:
        return supcon_terms(z_a, z_b, labels, self.temperature, anchor_rows)

    def forward(self, z_a: Tensor, z_b: Tensor | None = None, *, labels: Tensor) -> Tensor:
        return self.loss_terms(z_a, z_b, labels=labels).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
