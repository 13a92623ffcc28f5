"""MMCR: maximum manifold capacity representations.

Yerxa, Kuang, Simoncelli & Chung, "Learning Efficient Coding of Natural Images with Maximum
Manifold Capacity Representations", NeurIPS 2023. https://arxiv.org/abs/2303.03307
(formula checked against the authors' code, github.com/ThomasYerxa/mmcr, ``loss_mmcr.py``).

Each of the ``B`` samples has ``k`` views ``z_i^1 .. z_i^k`` in ``R^d``, L2-normalised. ``Z_i`` is
the (k, d) matrix of sample ``i``'s views and ``C`` the (B, d) matrix of their centroids::

    c_i  = (1 / k) sum_v z_i^v / ||z_i^v||                      (row i of C, ||c_i|| <= 1)
    loss = -||C||_*  +  lambda * (1 / B) sum_i ||Z_i||_*

where ``||M||_*`` is the nuclear norm, the sum of the singular values of ``M``. The first term
is large when the centroids are long (the views of a sample agree: ``||c_i|| = 1`` only when
they are equal) and spread over many orthogonal directions: for ``B <= d`` orthogonal centroids
of norm ``r`` it is ``-B r``, while centroids that all point one way give ``-sqrt(sum_i ||c_i||^2)
>= -sqrt(B)``. The second, optional term (``local_weight`` = lambda) shrinks each sample's
manifold of views; the paper uses lambda = 0 on CIFAR-10 and STL-10 (its official CIFAR script)
and LightlySSL's ``MMCRLoss`` defaults to the paper's ImageNet value 5e-3.

Data-parallel training: ``||C||_*`` is a function of the whole (global) centroid matrix, not a sum
over samples. :class:`contrastkit.nn.distributed.GatheredObjective` gathers every process's views
with their gradient (k times the numbers of the centroids alone, B k d in all; the centroids are
the same function of them), so every process computes the SVD of the *global* C, exactly as one
process on the concatenated batch. For the ``loss_terms`` protocol the global term is split evenly
over the samples (sample ``i``'s term is ``-||C||_* + lambda ||Z_i||_*``, and the loss is their
mean), so the terms of any partition of the batch sum to the whole loss and the local-loss mode
is exact too; it saves nothing, since each process still takes the SVD of the global (B, d)
matrix. (The authors' distributed code gathers the views without gradient and keeps the gradient
of its own rows only, so that DDP's average divides the gradient by the number of processes; here
the gradient is the single-process one.)

Cost: one SVD of a (B, d) matrix, O(B d min(B, d)), plus B SVDs of (k, d) matrices when lambda > 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    anchor_range,
    in_float32,
    normalize,
)
from contrastkit.objectives.cacr import stack_views
from contrastkit.objectives.registry import OBJECTIVES


def nuclear_norm(matrix: Tensor) -> Tensor:
    """Sum of the singular values of ``matrix`` (..., m, n); batched over leading dimensions.

    Its gradient is ``U V^T`` of the thin SVD, defined wherever no singular value is 0."""
    return torch.linalg.svdvals(matrix).sum(dim=-1)


def centroids(views: Tensor) -> Tensor:
    """(B, d) matrix ``C`` of the means of each sample's normalised views; ``views`` is (B, k, d)."""
    return normalize(views).mean(dim=1)


def _check_views(views: Tensor) -> None:
    if views.dim() != 3 or views.shape[0] < 1 or views.shape[1] < 1:
        raise DataError(
            f"mmcr: views must be a (B, k, d) tensor (sample, view, embedding), got shape {tuple(views.shape)}; "
            "stack the k views of each sample along dimension 1."
        )


@in_float32
def mmcr_terms(views: Tensor, local_weight: float = 0.0, anchor_rows: slice | None = None) -> LossTerms:
    """Sum over samples ``anchor_rows`` of ``-||C||_* + lambda ||Z_i||_*``, over B (module docstring).

    ``views``: (B, k, d), all views of the whole (global) batch; they are normalised here."""
    _check_views(views)
    batch = views.shape[0]
    rows = anchor_range(anchor_rows, batch, views.device)
    total = -rows.numel() * nuclear_norm(centroids(views))
    if local_weight:
        total = total + local_weight * nuclear_norm(normalize(views[rows])).sum()
    return LossTerms(total, batch)


def mmcr_loss(views: Tensor, local_weight: float = 0.0) -> Tensor:
    """The MMCR loss ``-||C||_* + lambda * mean_i ||Z_i||_*`` of (B, k, d) ``views`` (module docstring)."""
    return mmcr_terms(views, local_weight).mean()


@OBJECTIVES.register("mmcr")
class MMCRLoss(ContrastiveObjective):
    """Maximum manifold capacity: minus the nuclear norm of the matrix of view centroids.

    ``loss = -||C||_* + local_weight * mean_i ||Z_i||_*`` (module docstring for the symbols).

    Args:
        local_weight: lambda, the weight of the mean nuclear norm of each sample's (k, d) matrix of
            normalised views (default 0, the paper's CIFAR-10 setting; 5e-3 is its ImageNet one).

    Inputs:
        z_a: (B, k, d), the k views of each sample (``z_b`` left out); or
        z_a, z_b: (B, d) or (B, k_x, d) each, whose views are stacked (those of ``z_a`` first),
            so that a method with two views calls it like any two-view objective.

    The loss is not bounded below by a constant independent of the batch: its minimum over unit
    views is ``-sqrt(B * min(B, d))`` (orthogonal unit centroids when B <= d), so compare values
    at equal batch size and dimension.

    Example::

        objective = objectives.get("mmcr")
        loss = objective(torch.stack([projector(encoder(v)) for v in views], dim=1))   # (B, k, d)
    """

    def __init__(self, local_weight: float = 0.0):
        super().__init__()
        if not local_weight >= 0:
            raise ConfigError(f"mmcr: local_weight (lambda) must be >= 0, got {local_weight}; the paper uses 0 "
                              "(CIFAR-10) or 5e-3 (ImageNet).")
        self.local_weight = float(local_weight)

    def loss_terms(self, z_a: Tensor, z_b: Tensor | None = None, *, anchor_rows: slice | None = None) -> LossTerms:
        views = z_a if z_b is None and z_a.dim() == 3 else stack_views(z_a, z_b)
        return mmcr_terms(views, self.local_weight, anchor_rows)

    def forward(self, z_a: Tensor, z_b: Tensor | None = None) -> Tensor:
        return self.loss_terms(z_a, z_b).mean()

    def extra_repr(self) -> str:
        return f"local_weight={self.local_weight}"
