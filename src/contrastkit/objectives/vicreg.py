"""VICReg: variance-invariance-covariance regularisation of two views' embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError
from contrastkit.objectives.barlow_twins import check_batch_statistics, off_diagonal
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES

VARIANCE_EPS = 1e-4  # the paper's epsilon inside the square root of the variance


def invariance_term(z_a: Tensor, z_b: Tensor) -> Tensor:
    """``s(Z, Z') = (1 / (N d)) sum_i ||z_i - z'_i||^2``, the mean squared error."""
    return F.mse_loss(z_a, z_b)


def variance_term(z: Tensor, eps: float = VARIANCE_EPS) -> Tensor:
    """``v(Z) = (1 / d) sum_k max(0, 1 - sqrt(Var_i(z_ik) + eps))``, unbiased variance (gamma = 1)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """``c(Z) = (1 / d) sum_{k != l} Cov(Z)_kl^2``, ``Cov(Z) = (Z - mean)^T (Z - mean) / (N - 1)``."""
    centred = z - z.mean(dim=0)
    covariance = centred.T @ centred / (z.shape[0] - 1)
    return off_diagonal(covariance).pow(2).sum() / z.shape[1]


@in_float32
def vicreg_terms(z_a: Tensor, z_b: Tensor, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                 covariance_weight: float = 1.0, eps: float = VARIANCE_EPS,
                 anchor_rows: slice | None = None) -> LossTerms:
    """VICReg's terms of the samples ``anchor_rows`` (all when None), count N; see :class:`VICReg`."""
    check_batch_statistics(z_a, z_b, "vicreg")
    n, d = z_a.shape
    samples = anchor_range(anchor_rows, n, z_a.device)
    # Sample i's share: its own squared error, plus the batch statistics (the same for every i).
    invariance = (z_a[samples] - z_b[samples]).pow(2).sum() / d
    statistics = (variance_weight * (variance_term(z_a, eps) + variance_term(z_b, eps)) / 2
                  + covariance_weight * (covariance_term(z_a) + covariance_term(z_b)))
    return LossTerms(invariance_weight * invariance + samples.numel() * statistics, n)


@OBJECTIVES.register("vicreg")
class VICReg(ContrastiveObjective):
    r"""VICReg: invariance between the views, variance above 1 and decorrelation within each view.

    For the (N, d) embeddings Z (view a) and Z' (view b), with ``gamma = 1`` and ``eps = 1e-4``::

        s(Z, Z') = (1 / (N d)) sum_i ||z_i - z'_i||^2                         invariance (MSE)
        v(Z)     = (1 / d) sum_k max(0, gamma - sqrt(Var(z_.k) + eps))       variance hinge
        c(Z)     = (1 / d) sum_{k != l} Cov(Z)_kl^2                            covariance
        loss     = lambda s(Z, Z') + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))

    ``Var`` and ``Cov`` are over the batch with divisor N - 1. The variance hinge keeps every
    dimension's std at or above gamma, so the embeddings cannot collapse to a point; the
    covariance term decorrelates the dimensions. The paper's Sec. 3; the variance term is
    averaged over the two views and the covariance term summed, as in the paper's code
    (``std_loss / 2 + ...``, ``cov_loss = c(Z) + c(Z')``). Setting ``variance_weight`` and
    ``covariance_weight`` to 0 leaves the invariance term alone, which collapses (the paper's
    ablations; measured in tests/modalities/image/test_methods_redundancy.py).

    No negatives and no temperature; symmetric in the two views, so it also fits SimCLR's view
    pairs (``--method simclr --objective vicreg``).

    Data parallelism: v and c are statistics of the *global* batch (the paper's code gathers the
    embeddings before computing them). :class:`~contrastkit.nn.distributed.GatheredObjective`
    gathers with gradient; ``loss_terms`` gives sample i its own invariance error plus the whole
    batch's variance and covariance terms, with count N, so that the ranks' shares add up to the
    loss exactly.

    Args:
        invariance_weight, variance_weight, covariance_weight: ``lambda``, ``mu``, ``nu``. Defaults
            25, 25, 1: the paper's, and the defaults of LightlySSL's ``VICRegLoss``. VICReg is not in
            LightlySSL's CIFAR-10 benchmark (which has Barlow Twins among these methods); its
            ImageNet benchmark uses these defaults.
        eps: added to the variance before the square root (the paper's 1e-4).

    Inputs:
        z_a, z_b: (N, d) embeddings of the two views, N >= 2; row i of each comes from sample i.

    References:
        - Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
          Self-Supervised Learning", ICLR 2022, Sec. 3 and Algorithm 1. https://arxiv.org/abs/2105.04906

    Example::

        objective = objectives.get("vicreg")
        loss = objective(projector(encoder(view_a)), projector(encoder(view_b)))
    """

    def __init__(self, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                 covariance_weight: float = 1.0, eps: float = VARIANCE_EPS):
        super().__init__()
        for name, value in (("invariance_weight", invariance_weight), ("variance_weight", variance_weight),
                            ("covariance_weight", covariance_weight), ("eps", eps)):
            if not value >= 0:
                raise ConfigError(
                    f"vicreg: {name} must be >= 0, got {value}; the paper uses invariance_weight 25, "
                    "variance_weight 25, covariance_weight 1 and eps 1e-4."
                )
        self.invariance_weight = float(invariance_weight)
        self.variance_weight = float(variance_weight)
        self.covariance_weight = float(covariance_weight)
        self.eps = float(eps)

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return vicreg_terms(z_a, z_b, self.invariance_weight, self.variance_weight, self.covariance_weight,
                            self.eps, anchor_rows)

    def extra_repr(self) -> str:
        return (f"invariance_weight={self.invariance_weight}, variance_weight={self.variance_weight}, "
                f"covariance_weight={self.covariance_weight}, eps={self.eps}")
