"""Barlow Twins: drive the cross-correlation of two views' embeddings to the identity matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, check_pair, in_float32
from contrastkit.objectives.registry import OBJECTIVES

# LightlySSL's BarlowTwinsLoss (its CIFAR-10 benchmark uses the default) and the paper: lambda = 5e-3.
PAPER_REDUNDANCY_WEIGHT = 5e-3
# The paper's code standardises with BatchNorm1d(affine=False), whose eps is 1e-5.
BATCHNORM_EPS = 1e-5


def check_batch_statistics(z_a: Tensor, z_b: Tensor, objective: str) -> None:
    """Two (N, d) views of the same shape with N >= 2, so that batch variances exist."""
    if z_a.dim() == 2 and z_a.shape[0] < 2:
        raise DataError(
            f"{objective}: its variances and correlations are statistics over the batch and need at least "
            f"2 samples, got {z_a.shape[0]}; use a larger batch."
        )
    check_pair(z_a, z_b, objective)


def standardize(z: Tensor, eps: float = BATCHNORM_EPS) -> Tensor:
    """Each column centred and divided by its batch std: ``(z - mean) / sqrt(var + eps)``, ``var``
    with divisor N (BatchNorm1d without affine parameters, in training mode)."""
    centred = z - z.mean(dim=0)
    return centred / torch.sqrt(centred.pow(2).mean(dim=0) + eps)


def off_diagonal(matrix: Tensor) -> Tensor:
    """The d (d - 1) entries of a square matrix off its diagonal, as a vector."""
    d = matrix.shape[0]
    return matrix[~torch.eye(d, dtype=torch.bool, device=matrix.device)]


@in_float32
def barlow_twins_loss(z_a: Tensor, z_b: Tensor, redundancy_weight: float = PAPER_REDUNDANCY_WEIGHT,
                      eps: float = BATCHNORM_EPS) -> Tensor:
    """The Barlow Twins loss of the batch (a scalar); see :class:`BarlowTwins`."""
    check_batch_statistics(z_a, z_b, "barlow_twins")
    n = z_a.shape[0]
    correlation = standardize(z_a, eps).T @ standardize(z_b, eps) / n  # (d, d)
    invariance = (correlation.diagonal() - 1.0).pow(2).sum()
    redundancy = off_diagonal(correlation).pow(2).sum()
    return invariance + redundancy_weight * redundancy


def barlow_twins_terms(z_a: Tensor, z_b: Tensor, redundancy_weight: float = PAPER_REDUNDANCY_WEIGHT,
                       eps: float = BATCHNORM_EPS, anchor_rows: slice | None = None) -> LossTerms:
    """Every sample's term is the whole batch's loss ``L``, the count is N: ``total / count = L``."""
    loss = barlow_twins_loss(z_a, z_b, redundancy_weight, eps)
    samples = anchor_range(anchor_rows, z_a.shape[0], z_a.device).numel()
    return LossTerms(loss * samples, z_a.shape[0])


@OBJECTIVES.register("barlow_twins")
class BarlowTwins(ContrastiveObjective):
    r"""Barlow Twins: the cross-correlation of the two views' standardised embeddings -> identity.

    Each embedding dimension is standardised over the batch (``z_hat = (z - mean) / sqrt(var + eps)``,
    ``var`` with divisor N, as BatchNorm1d without affine parameters), then::

        C_kl = (1 / N) sum_i z_hat_a[i, k] z_hat_b[i, l]                   (d x d, entries in [-1, 1])
        loss = sum_k (1 - C_kk)^2 + lambda * sum_{k != l} C_kl^2

    The first sum makes each dimension invariant to the augmentation, the second decorrelates the
    dimensions (redundancy reduction), so that no dimension can copy another and the embedding
    cannot collapse to a constant: a constant dimension has C_kk = 0. It is a sum, not a mean, over
    the d^2 entries: its scale grows with d, and ``lambda`` (about 1 / d in the paper) balances the
    d diagonal terms against the d^2 - d off-diagonal ones.

    No negatives and no temperature; the two views are used symmetrically, so it also fits
    SimCLR's view pairs (``--method simclr --objective barlow_twins``).

    Data parallelism: C is a statistic of the *global* batch (the paper's code sums C over the
    devices and uses global BatchNorm). Through :class:`~contrastkit.nn.distributed.GatheredObjective`
    the embeddings are gathered with gradient and C is computed on the whole batch; the loss is not
    a sum over samples, so ``loss_terms`` gives every sample the whole loss with count N: the
    ranks' shares add up to the loss and each rank's gradient is exact, but ``local_loss`` saves
    nothing (every rank needs the whole d x d matrix).

    Args:
        redundancy_weight: ``lambda``, the weight of the off-diagonal terms. Default 5e-3, the
            paper's value for d = 8192 and the default of LightlySSL's ``BarlowTwinsLoss``, which
            its CIFAR-10 benchmark uses (with a 512 -> 2048 -> 2048 projector).
        eps: added to the variance before the square root (BatchNorm's 1e-5, as the paper's code).

    Inputs:
        z_a, z_b: (N, d) embeddings of the two views, N >= 2; row i of each comes from sample i.

    References:
        - Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via
          Redundancy Reduction", ICML 2021, Eq. 1-2 and Algorithm 1. https://arxiv.org/abs/2103.03230

    Example::

        objective = objectives.get("barlow_twins")
        loss = objective(projector(encoder(view_a)), projector(encoder(view_b)))
    """

    def __init__(self, redundancy_weight: float = PAPER_REDUNDANCY_WEIGHT, eps: float = BATCHNORM_EPS):
        super().__init__()
        if not redundancy_weight >= 0:
            raise ConfigError(
                f"barlow_twins: redundancy_weight must be >= 0, got {redundancy_weight}; the paper uses 5e-3 "
                "(about 1 / d for d = 8192 dimensions)."
            )
        if not eps >= 0:
            raise ConfigError(f"barlow_twins: eps must be >= 0, got {eps}; BatchNorm's default is 1e-5.")
        self.redundancy_weight = float(redundancy_weight)
        self.eps = float(eps)

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return barlow_twins_terms(z_a, z_b, self.redundancy_weight, self.eps, anchor_rows)

    def extra_repr(self) -> str:
        return f"redundancy_weight={self.redundancy_weight}, eps={self.eps}"
