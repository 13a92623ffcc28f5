"""CACR: contrastive attraction and contrastive repulsion.

Zheng et al. "Contrastive Attraction and Contrastive Repulsion for Representation Learning".
TMLR 2023 (formula checked against the authors' code, github.com/JegZheng/CACR-SSL, small-scale losses).

Each sample ``i`` has ``V >= 2`` views ``z_i^1 .. z_i^V`` (L2-normalised); the cost of a pair is
the squared Euclidean distance ``c(x, y) = ||x - y||^2``.

Attraction -- every view ``v`` is pulled towards the other ``V - 1`` views of its sample, the
farthest ones hardest (a softmax over the positives of ``+c / positive_temperature``)::

    w+_{i,v,u} = softmax_{u != v}( c(z_i^v, z_i^u) / positive_temperature )
    A_i        = mean_v  sum_{u != v}  w+_{i,v,u} * alpha * c(z_i^v, z_i^u)

Repulsion -- for every pair of views ``v < u``, anchor ``z_i^v`` is pushed from the other
samples' view ``u``, the closest ones hardest (a softmax of ``-c / negative_temperature``, i.e.
of ``2 * similarity / negative_temperature`` on the sphere)::

    w-_{i,j}^{vu} = softmax_{j != i}( -c(z_i^v, z_j^u) / negative_temperature )
    R_i           = mean_{v<u}  sum_{j != i}  w-_{i,j}^{vu} * (-beta) * c(z_i^v, z_j^u)

    loss = mean_i (A_i + R_i)

As in the authors' code the weights are *not* detached (the gradient flows through the
conditional distributions too), and their ``tau_pos``, ``tau_neg`` multiply the cost:
``tau_pos = 1 / positive_temperature``, ``tau_neg = 1 / negative_temperature`` (1.0 by default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    check_temperature,
    in_float32,
    normalize,
)


def stack_views(z_a: Tensor, z_b: Tensor | None) -> Tensor:
    """(B, V, d) from two inputs that are each (B, d) (one view) or (B, V_x, d) (several views)."""
    parts = [z if z.ndim == 3 else z.unsqueeze(1) for z in (z_a, z_b) if z is not None]
    if any(p.ndim != 3 or p.shape[0] != parts[0].shape[0] for p in parts):
        raise DataError(
            "Multi-view objectives take z_a and z_b of shape (B, d) or (B, V, d) with the same B; got "
            f"{[tuple(p.shape) for p in parts]}."
        )
    return torch.cat(parts, dim=1)


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """||x_i - y_j||^2 for all pairs, (..., n, m); exact for unit vectors: 2 - 2 x.y."""
    return (x.unsqueeze(-2) - y.unsqueeze(-3)).pow(2).sum(-1)


def cacr_attraction(views: Tensor, positive_temperature: float, alpha: float = 1.0) -> Tensor:
    """``A_i`` (B,) of the module docstring; ``views`` (B, V, d) already normalised."""
    num_views = views.shape[1]
    cost = squared_distances(views, views)  # (B, V, V): c(z_i^v, z_i^u)
    off_diagonal = ~torch.eye(num_views, dtype=torch.bool, device=views.device)
    cost = cost[:, off_diagonal].view(views.shape[0], num_views, num_views - 1)
    weights = torch.softmax(cost / positive_temperature, dim=-1)
    return (weights * alpha * cost).sum(-1).mean(-1)


def cacr_repulsion(views: Tensor, negative_temperature: float, beta: float = 1.0) -> Tensor:
    """``R_i`` (B,) of the module docstring; ``views`` (B, V, d) already normalised."""
    batch, num_views = views.shape[:2]
    others = ~torch.eye(batch, dtype=torch.bool, device=views.device)
    per_pair = []
    for v in range(num_views):
        for u in range(v + 1, num_views):
            cost = squared_distances(views[:, v], views[:, u])[others].view(batch, batch - 1)
            weights = torch.softmax(-cost / negative_temperature, dim=-1)
            per_pair.append((weights * -beta * cost).sum(-1))
    return torch.stack(per_pair).mean(0)


@in_float32
def cacr_loss_per_sample(
    views: Tensor,
    positive_temperature: float = 1.0,
    negative_temperature: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    """``A_i + R_i`` (B,) for views (B, V, d) (normalised here)."""
    views = normalize(views)
    return cacr_attraction(views, positive_temperature, alpha) + cacr_repulsion(views, negative_temperature, beta)


@OBJECTIVES.register("cacr")
class CACR(ContrastiveObjective):
    """Contrastive attraction + contrastive repulsion (module docstring).

    Args:
        positive_temperature: softness of the attraction weights (large: uniform over positives).
        negative_temperature: softness of the repulsion weights (large: uniform over negatives).
        alpha, beta: scales of the attraction and repulsion costs.

    Inputs:
        z_a, z_b: (B, d) embeddings of two views, or (B, V, d) tensors for more views per sample
            (all views of a sample are positives of each other; the views of z_a come first).

    Example::

        loss = objectives.get("cacr")(z_a, z_b)
    """

    def __init__(
        self,
        positive_temperature: float = 1.0,
        negative_temperature: float = 1.0,
        alpha: float = 1.0,
        beta: float = 1.0,
    ):
        super().__init__()
        self.positive_temperature = check_temperature(positive_temperature, "positive_temperature")
        self.negative_temperature = check_temperature(negative_temperature, "negative_temperature")
        self.alpha = alpha
        self.beta = beta

    def loss_terms(
        self, z_a: Tensor, z_b: Tensor | None = None, *, anchor_rows: slice | None = None
    ) -> LossTerms:
        """Sum of ``A_i + R_i`` over ``anchor_rows`` and the batch size. Each anchor's repulsion
        needs the whole batch, so the pairwise costs are computed for all rows (O(B^2 d))."""
        views = stack_views(z_a, z_b)
        if views.shape[1] < 2 or views.shape[0] < 2:
            raise DataError(
                f"cacr needs at least 2 views of at least 2 samples; got views of shape {tuple(views.shape)} "
                "(B, V, d)."
            )
        losses = cacr_loss_per_sample(
            views, self.positive_temperature, self.negative_temperature, self.alpha, self.beta
        )
        rows = slice(None) if anchor_rows is None else anchor_rows
        return LossTerms(losses[rows].sum(), views.shape[0])

    def extra_repr(self) -> str:
        return (
            f"positive_temperature={self.positive_temperature}, negative_temperature={self.negative_temperature}, "
            f"alpha={self.alpha}, beta={self.beta}"
        )
