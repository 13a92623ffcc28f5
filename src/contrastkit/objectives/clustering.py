"""DEC's clustering loss: KL(P || Q) between sharpened targets and Student-t soft assignments.

Xie, Girshick & Farhadi, "Unsupervised Deep Embedding for Clustering Analysis" (DEC), ICML 2016,
Eqs. 1-3 (https://arxiv.org/abs/1511.06335), as SCGC uses it for its clustering head
(Kulatilleke, Portmann & Chandra 2022, https://arxiv.org/abs/2204.12656; SDCN, Bo et al. 2020).
With embeddings ``z_i`` (B, d), cluster centres ``mu_j`` (K, d) and ``v`` degrees of freedom::

    q_ij = (1 + ||z_i - mu_j||^2 / v)^{-(v+1)/2} / sum_j' (1 + ||z_i - mu_j'||^2 / v)^{-(v+1)/2}   (Eq. 1)
    p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'),   f_j = sum_i q_ij                          (Eq. 3)
    L    = KL(P || Q) = 1/B sum_i sum_j p_ij log(p_ij / q_ij)                                    (Eq. 2)

``p`` is a target: no gradient flows through it. DEC computes it over the whole data set and
refreshes it every T iterations (pass it as ``target``); SCGC computes it from the batch's own
``q`` at every step (the default, ``target=None``). Used by :mod:`contrastkit.modalities.graph.scgc`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range


def student_t_assignments(z: Tensor, centres: Tensor, v: float = 1.0) -> Tensor:
    """q (B, K): DEC's Student-t soft assignments of the rows of z to the centres (Eq. 1)."""
    squared = torch.cdist(z, centres).pow(2)
    q = (1.0 + squared / v).pow(-(v + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q: Tensor) -> Tensor:
    """p (B, K): q squared, divided by the cluster frequencies f_j = sum_i q_ij, rows normalised (Eq. 3)."""
    weight = q.pow(2) / q.sum(dim=0)
    return weight / weight.sum(dim=1, keepdim=True)


def deep_clustering_kl(q: Tensor, p: Tensor) -> Tensor:
    """KL(P || Q) averaged over the rows (Eq. 2): q the soft assignments, p the target (B, K)."""
    return F.kl_div(q.clamp(min=1e-12).log(), p, reduction="batchmean")


def deep_clustering_kl_terms(z: Tensor, centres: Tensor, target: Tensor | None = None, v: float = 1.0,
                             anchor_rows: slice | None = None) -> LossTerms:
    """The rows' ``KL(p_i || q_i)`` of ``anchor_rows`` (all when None), summed, over the batch size B.

    With ``target`` None, p is computed (without gradient) from the q of the *whole* batch, which
    is what makes the split of the rows across processes give the one-process loss."""
    q = student_t_assignments(z, centres, v)
    p = target_distribution(q.detach()) if target is None else target
    per_row = F.kl_div(q.clamp(min=1e-12).log(), p, reduction="none").sum(dim=1)
    rows = anchor_range(anchor_rows, z.shape[0], z.device)
    return LossTerms(per_row[rows].sum(), z.shape[0])


@OBJECTIVES.register("deep_clustering_kl")
class DeepClusteringKL(ContrastiveObjective):
    r"""DEC's clustering loss on embeddings and cluster centres: ``KL(P || Q)``, a mean over rows.

    ::

        q_ij = (1 + ||z_i - mu_j||^2 / v)^{-(v+1)/2}, normalised over j     (Student-t kernel)
        p_ij = (q_ij^2 / sum_i' q_i'j), normalised over j                     (target, no gradient)
        loss = 1/B sum_i sum_j p_ij log(p_ij / q_ij)

    A single view: called as ``objective(z, centres=mu)`` (or ``objective(z, None, centres=mu)``),
    ``z`` (B, d), ``mu`` (K, d) -- in SCGC and DEC a trained parameter, which gets its gradient
    through ``q``. ``target`` (B, K), optional, is DEC's ``P`` computed elsewhere (over the whole
    data set, refreshed every T iterations); without it ``p`` comes from the batch's own ``q``
    (SCGC). ``q`` is clamped at 1e-12 before its log.

    Distributed: ``target`` is a per-sample input and ``centres`` is the same on every process;
    under :class:`~contrastkit.nn.distributed.GatheredObjective` every process computes ``q`` and
    ``p`` of the gathered batch (``f_j`` is a sum over all its rows) and the terms of its own rows,
    so the loss and the gradients are those of one process on the whole batch.

    Args:
        degrees_of_freedom: ``v`` of the Student-t kernel (DEC and SCGC: 1).

    References:
        - Xie, Girshick & Farhadi, "Unsupervised Deep Embedding for Clustering Analysis", ICML 2016,
          Eqs. 1-3. https://arxiv.org/abs/1511.06335
        - Kulatilleke, Portmann & Chandra, "SCGC: Self-Supervised Contrastive Graph Clustering",
          2022 (its clustering head). https://arxiv.org/abs/2204.12656
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("target",)
    not_for_view_pairs = (
        "it scores one view's embeddings against cluster centres (objective(z, centres=mu)); on two views "
        "it has neither the centres nor a second input to compare"
    )

    def __init__(self, degrees_of_freedom: float = 1.0):
        super().__init__()
        if not degrees_of_freedom > 0:
            raise ConfigError(
                f"deep_clustering_kl: degrees_of_freedom (v of the Student-t kernel) must be > 0 (DEC uses 1), "
                f"got {degrees_of_freedom}."
            )
        self.degrees_of_freedom = float(degrees_of_freedom)

    def forward(self, z: Tensor, z_b: Tensor | None = None, *, centres: Tensor,
                target: Tensor | None = None) -> Tensor:
        _check_inputs(z, z_b, centres, target)
        q = student_t_assignments(z, centres, self.degrees_of_freedom)
        return deep_clustering_kl(q, target_distribution(q.detach()) if target is None else target)

    def loss_terms(self, z: Tensor, z_b: Tensor | None = None, *, centres: Tensor, target: Tensor | None = None,
                   anchor_rows: slice | None = None) -> LossTerms:
        _check_inputs(z, z_b, centres, target)
        return deep_clustering_kl_terms(z, centres, target, self.degrees_of_freedom, anchor_rows)

    def extra_repr(self) -> str:
        return f"degrees_of_freedom={self.degrees_of_freedom}"


def _check_inputs(z: Tensor, z_b: Tensor | None, centres: Tensor, target: Tensor | None) -> None:
    if z_b is not None:
        raise DataError(
            "deep_clustering_kl takes one view: call it as objective(z, centres=mu) (z_b must be None)."
        )
    if z.dim() != 2 or centres.dim() != 2 or centres.shape[1] != z.shape[1]:
        raise DataError(
            f"deep_clustering_kl: z must be (B, d) and the centres (K, d) of the same d, got {tuple(z.shape)} "
            f"and {tuple(centres.shape)}."
        )
    if target is not None and target.shape != (z.shape[0], centres.shape[0]):
        raise DataError(
            f"deep_clustering_kl: the target P must be (B, K) = {(z.shape[0], centres.shape[0])}, got "
            f"{tuple(target.shape)}."
        )
