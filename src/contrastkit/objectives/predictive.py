"""Prediction losses of the non-contrastive methods: BYOL's normalised MSE, SimSiam's negative cosine.

``p``: the online network's predictions, ``z``: the targets, row ``i`` of each from sample ``i``::

    normalized_mse(p, z)  = mean_i || p_i/||p_i|| - z_i/||z_i|| ||^2 = mean_i (2 - 2 cos(p_i, z_i))   (BYOL)
    negative_cosine(p, z) = -mean_i cos(p_i, z_i)                                                    (SimSiam)

Neither stops the gradient itself: the method decides what is detached (the target network's
output in BYOL, ``z`` in SimSiam). There are no negatives: without a predictor and a stop-gradient
(or a momentum target) these losses collapse, so they are not offered for plain view pairs. The
predictor modules stay in :mod:`contrastkit.nn.predictors`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32

_NOT_FOR_VIEW_PAIRS = (
    "it is a prediction loss without negatives: (z_a, z_b) are a predictor's output and a target "
    "whose gradient the method stops (BYOL, SimSiam); on two views alone it collapses"
)


def _row_cosines(p: Tensor, z: Tensor, objective: str) -> Tensor:
    if p.dim() != 2 or p.shape != z.shape:
        raise DataError(
            f"{objective}: predictions and targets must be (batch, dim) tensors of the same shape "
            f"(row i of each from sample i), got {tuple(p.shape)} and {tuple(z.shape)}."
        )
    return F.cosine_similarity(p, z, dim=-1)


@in_float32
def normalized_mse(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's loss ``mean_i (2 - 2 cos(p_i, z_i))``, in float32 (float64 stays float64)."""
    return (2.0 - 2.0 * _row_cosines(p, z, "normalized_mse")).mean()


@in_float32
def normalized_mse_terms(p: Tensor, z: Tensor, anchor_rows: slice | None = None) -> LossTerms:
    """The terms ``2 - 2 cos(p_i, z_i)`` of the rows ``anchor_rows`` (all when None), over N."""
    rows = anchor_range(anchor_rows, p.shape[0], p.device)
    return LossTerms((2.0 - 2.0 * _row_cosines(p, z, "normalized_mse")[rows]).sum(), p.shape[0])


@in_float32
def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's loss ``-mean_i cos(p_i, z_i)``, in float32 (float64 stays float64)."""
    return -_row_cosines(p, z, "negative_cosine").mean()


@in_float32
def negative_cosine_terms(p: Tensor, z: Tensor, anchor_rows: slice | None = None) -> LossTerms:
    """The terms ``-cos(p_i, z_i)`` of the rows ``anchor_rows`` (all when None), over N."""
    rows = anchor_range(anchor_rows, p.shape[0], p.device)
    return LossTerms(-_row_cosines(p, z, "negative_cosine")[rows].sum(), p.shape[0])


@OBJECTIVES.register("normalized_mse")
class NormalizedMSE(ContrastiveObjective):
    r"""BYOL's prediction loss: the mean squared error of L2-normalised predictions and targets.

    ::

        loss = mean_i || p_i / ||p_i|| - z_i / ||z_i|| ||^2 = mean_i (2 - 2 cos(p_i, z_i))

    Called as ``objective(p, z)``; BYOL symmetrises it over the two views and feeds the target
    network's (detached) projections as ``z``. A mean over rows: across processes it is the mean
    over the global batch.

    References:
        - Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
          NeurIPS 2020, Eq. 2. https://arxiv.org/abs/2006.07733
    """

    not_for_view_pairs = _NOT_FOR_VIEW_PAIRS

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        return normalized_mse(p, z)

    def loss_terms(self, p: Tensor, z: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return normalized_mse_terms(p, z, anchor_rows)


@OBJECTIVES.register("negative_cosine")
class NegativeCosine(ContrastiveObjective):
    r"""SimSiam's prediction loss: the negative cosine similarity of predictions and targets.

    ::

        loss = -mean_i p_i . z_i / (||p_i|| ||z_i||)

    Called as ``objective(p, z)``; SimSiam symmetrises it (``D(p1, z2) / 2 + D(p2, z1) / 2``) with
    ``z`` detached (the stop-gradient). A mean over rows: across processes it is the mean over the
    global batch.

    References:
        - Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, Eq. 1.
          https://arxiv.org/abs/2011.10566
    """

    not_for_view_pairs = _NOT_FOR_VIEW_PAIRS

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        return negative_cosine(p, z)

    def loss_terms(self, p: Tensor, z: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return negative_cosine_terms(p, z, anchor_rows)
