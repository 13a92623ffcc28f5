"""GraphMAE's scaled cosine error: a reconstruction loss that down-weights the easy rows.

Hou et al., "GraphMAE: Self-Supervised Masked Graph Autoencoders", KDD 2022, Eq. 5
(https://arxiv.org/abs/2205.10803). Used by :mod:`contrastkit.modalities.graph.graphmae` on the
masked nodes of a graph.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range


def scaled_cosine_errors(reconstruction: Tensor, target: Tensor, alpha: float = 3.0) -> Tensor:
    """The per-row errors ``(1 - cos(reconstruction_i, target_i))^alpha``, shape (N,)."""
    if reconstruction.shape != target.shape or reconstruction.dim() < 1:
        raise DataError(
            f"scaled_cosine_error: the reconstruction and its target must have the same shape (rows = "
            f"samples), got {tuple(reconstruction.shape)} and {tuple(target.shape)}."
        )
    cosine = (F.normalize(reconstruction, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)
    return (1.0 - cosine).pow(alpha)


def scaled_cosine_error(reconstruction: Tensor, target: Tensor, alpha: float = 3.0) -> Tensor:
    """mean_i (1 - cos(reconstruction_i, target_i))^alpha over the rows; see :class:`ScaledCosineError`."""
    return scaled_cosine_errors(reconstruction, target, alpha).mean()


def scaled_cosine_error_terms(reconstruction: Tensor, target: Tensor, alpha: float = 3.0,
                              anchor_rows: slice | None = None) -> LossTerms:
    """The errors of the rows ``anchor_rows`` (all when None), summed, over the number of rows N."""
    errors = scaled_cosine_errors(reconstruction, target, alpha).reshape(reconstruction.shape[0], -1)
    rows = anchor_range(anchor_rows, reconstruction.shape[0], reconstruction.device)
    return LossTerms(errors[rows].sum(), errors.numel())


@OBJECTIVES.register("scaled_cosine_error")
class ScaledCosineError(ContrastiveObjective):
    r"""GraphMAE's scaled cosine error (SCE) between reconstructed rows and their targets.

    With ``x_i`` the target (original features) and ``z_i`` the reconstruction of row ``i``::

        loss = 1/N sum_i (1 - x_i . z_i / (||x_i|| ||z_i||))^alpha,   alpha >= 1

    ``alpha > 1`` down-weights the rows that are already well reconstructed (cosine near 1), as a
    focal loss does. Cosines are computed with ``F.normalize`` (eps 1e-12), in the inputs' dtype
    (as GraphMAE always has).

    Called as ``objective(reconstruction, target)``: not two views, so not offered for view pairs.
    A mean over rows, so splitting the rows across processes and gathering them
    (:class:`~contrastkit.nn.distributed.GatheredObjective`) gives the one-process loss; GraphMAE
    itself reconstructs the masked nodes of one whole graph in one process.

    Args:
        alpha: the scaling exponent (the paper: 1-3, by data set).

    References:
        - Hou et al., "GraphMAE: Self-Supervised Masked Graph Autoencoders", KDD 2022, Eq. 5.
          https://arxiv.org/abs/2205.10803
    """

    not_for_view_pairs = (
        "it is a reconstruction error: (z_a, z_b) are a reconstruction and its target, and without "
        "negatives two views would collapse"
    )

    def __init__(self, alpha: float = 3.0):
        super().__init__()
        if not alpha >= 1:
            raise ConfigError(f"scaled_cosine_error: alpha must be >= 1 (the paper uses 1-3), got {alpha}.")
        self.alpha = float(alpha)

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        return scaled_cosine_error(reconstruction, target, self.alpha)

    def loss_terms(self, reconstruction: Tensor, target: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return scaled_cosine_error_terms(reconstruction, target, self.alpha, anchor_rows)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
