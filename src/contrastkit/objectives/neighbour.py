"""Neighbour contrastive loss (Graph-MLP's NContrast, SCGC's L_N): the graph's neighbours are positives.

Hu et al., "Graph-MLP: Node Classification without Message Passing in Graph", 2021
(https://arxiv.org/abs/2106.04051); Kulatilleke, Portmann & Chandra, "SCGC: Self-Supervised
Contrastive Graph Clustering", 2022 (https://arxiv.org/abs/2204.12656). Used by
:mod:`contrastkit.modalities.graph.scgc`, which computes the positive weights from the adjacency.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, check_temperature


def _neighbour_parts(z: Tensor, weights: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-anchor ``log denominator - log numerator`` (B,) and which anchors have a positive (B,)."""
    if z.dim() != 2 or weights.shape != (z.shape[0], z.shape[0]):
        raise DataError(
            f"neighbour_contrast: z must be (B, d) and the positive weights (B, B) over the same nodes, "
            f"got {tuple(z.shape)} and {tuple(weights.shape)}."
        )
    b = z.shape[0]
    zn = F.normalize(z, dim=1)
    logits = zn @ zn.T / temperature
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=z.device)
    weights = weights.to(z.dtype) * off_diagonal
    has_positive = weights.sum(dim=1) > 0
    log_denominator = torch.logsumexp(logits.masked_fill(~off_diagonal, float("-inf")), dim=1)
    # Rows without positives get finite dummy weights (excluded by the caller) so no NaN gradient arises.
    log_weights = torch.where(has_positive[:, None], torch.log(weights.clamp(min=0)), 0.0)
    log_numerator = torch.logsumexp(logits + log_weights, dim=1)
    return log_denominator - log_numerator, has_positive


def neighbour_contrastive_loss(z: Tensor, weights: Tensor, temperature: float = 0.5) -> Tensor:
    """L_N of :class:`NeighbourContrast`: z (B, d), weights (B, B) >= 0 (the diagonal is ignored)."""
    losses, has_positive = _neighbour_parts(z, weights, temperature)
    if not has_positive.any():
        return z.sum() * 0.0
    return losses[has_positive].mean()


def neighbour_contrastive_terms(z: Tensor, weights: Tensor, temperature: float = 0.5,
                                anchor_rows: slice | None = None) -> LossTerms:
    """The losses of the anchors ``anchor_rows`` (all when None) that have a positive, summed, over
    the number of anchors of the whole batch that have one (1 when none has)."""
    losses, has_positive = _neighbour_parts(z, weights, temperature)
    rows = anchor_range(anchor_rows, z.shape[0], z.device)
    selected = has_positive[rows]
    return LossTerms(losses[rows][selected].sum(), max(int(has_positive.sum()), 1))


@OBJECTIVES.register("neighbour_contrast")
class NeighbourContrast(ContrastiveObjective):
    r"""Neighbour contrastive loss over one set of node embeddings and positive weights.

    With ``s_ij = cos(z_i, z_j) / temperature`` and weights ``w_ij >= 0`` (SCGC: ``(A^r)_ij`` of the
    row-normalised adjacency with self-loops, or ``(A^ + ... + A^r)_ij``; the diagonal is ignored)::

        L_N = -1/|I| sum_{i in I} log( sum_{j != i} w_ij exp(s_ij) / sum_{k != i} exp(s_ik) )

    over the anchors ``I`` that have some positive weight (0 when none has). Every other node of
    the batch is in the denominator; the weighted neighbours make the numerator.

    A single view: called as ``objective(z, None, weights=W)`` (or ``objective(z, weights=W)``).
    ``weights`` is a per-sample input: row ``i`` holds anchor ``i``'s weights over *every* node of
    the global batch, so under :class:`~contrastkit.nn.distributed.GatheredObjective` each process
    passes the rows of its own nodes, (B_local, B_global), and the gathered rows make the whole W.
    That is how splitting one graph's nodes across processes gives the one-process loss; SCGC itself
    trains on one process (a full graph or batches of nodes).

    Args:
        temperature: of ``s_ij`` (the reference code's ``tau`` multiplies the similarities: its
            0.25 is a temperature of 4).

    References:
        - Hu et al., "Graph-MLP: Node Classification without Message Passing in Graph", 2021
          (NContrast). https://arxiv.org/abs/2106.04051
        - Kulatilleke, Portmann & Chandra, "SCGC: Self-Supervised Contrastive Graph Clustering",
          2022. https://arxiv.org/abs/2204.12656
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("weights",)
    not_for_view_pairs = "it contrasts one view's nodes with their graph neighbours and needs the positive weights"

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, z: Tensor, z_b: Tensor | None = None, *, weights: Tensor) -> Tensor:
        _single_view(z_b)
        return neighbour_contrastive_loss(z, weights, self.temperature)

    def loss_terms(self, z: Tensor, z_b: Tensor | None = None, *, weights: Tensor,
                   anchor_rows: slice | None = None) -> LossTerms:
        _single_view(z_b)
        return neighbour_contrastive_terms(z, weights, self.temperature, anchor_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def _single_view(z_b: Tensor | None) -> None:
    if z_b is not None:
        raise DataError("neighbour_contrast takes one view: call it as objective(z, weights=W) (z_b must be None).")
