"""TS2Vec's hierarchical contrastive loss: instance-wise and temporal contrast at every time scale.

Yue et al., "TS2Vec: Towards Universal Representation of Time Series", AAAI 2022, Sec. 3.3.
Inputs are per-time-step representations ``z1, z2`` (B, T, D) of the *overlap* of two crops:
``z1[i, t]`` and ``z2[i, t]`` are the same time step of series ``i`` seen in two contexts.
Similarities are raw dot products (no normalisation, no temperature), as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import in_float32, mask_value


def _cross_view_nce(r1: Tensor, r2: Tensor) -> Tensor:
    """Mean over groups g and the 2N anchors of -log softmax of the positive, per group.

    ``r1, r2``: (G, N, D). In each group the 2N candidates are ``cat([r1[g], r2[g]])``; anchor
    ``a`` is contrasted with the 2N - 1 others, and its positive is the same item in the
    other view (``a + N`` mod 2N).
    """
    n = r1.shape[1]
    r = torch.cat([r1, r2], dim=1)  # (G, 2N, D)
    similarity = r @ r.transpose(1, 2)  # (G, 2N, 2N)
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=r.device)
    similarity = similarity.masked_fill(self_pairs, mask_value(similarity.dtype))
    log_probability = F.log_softmax(similarity, dim=-1)
    anchors = torch.arange(2 * n, device=r.device)
    positives = (anchors + n) % (2 * n)
    return -log_probability[:, anchors, positives].mean()


@in_float32
def instance_contrastive_loss(z1: Tensor, z2: Tensor) -> Tensor:
    r"""Instance-wise contrast: at each time step, the other series of the batch are negatives.

    For series i and time step t, with r = z1, r' = z2 (Eq. 2 of the paper)::

        l_inst(i, t) = -log  exp(r_it . r'_it) /
                       sum_j ( exp(r_it . r'_jt) + 1[i != j] exp(r_it . r_jt) )

    averaged over i, t and both directions (anchors in z1 and in z2). Returns 0 when B = 1
    (no negatives), as the official code does.
    """
    _check_pair(z1, z2)
    if z1.shape[0] == 1:
        return z1.new_zeros(())
    return _cross_view_nce(z1.transpose(0, 1), z2.transpose(0, 1))  # groups = time steps


@in_float32
def temporal_contrastive_loss(z1: Tensor, z2: Tensor) -> Tensor:
    r"""Temporal contrast: within one series, the other time steps are negatives.

    For series i and time step t (Eq. 1 of the paper)::

        l_temp(i, t) = -log  exp(r_it . r'_it) /
                       sum_t' ( exp(r_it . r'_it') + 1[t != t'] exp(r_it . r_it') )

    averaged over i, t and both directions. Returns 0 when T = 1 (no negatives).
    """
    _check_pair(z1, z2)
    if z1.shape[1] == 1:
        return z1.new_zeros(())
    return _cross_view_nce(z1, z2)  # groups = series


def temporal_pyramid(z: Tensor) -> list[Tensor]:
    """``[z, pool(z), pool(pool(z)), ...]`` down to length 1, pool = max over time, kernel 2.

    An odd length drops its last step (floor), so a series of length T has
    ``floor(log2 T) + 1`` scales.
    """
    scales = [z]
    while z.shape[1] > 1:
        z = F.max_pool1d(z.transpose(1, 2), kernel_size=2).transpose(1, 2)
        scales.append(z)
    return scales


def hierarchical_contrastive_loss(z1: Tensor, z2: Tensor, alpha: float = 0.5, temporal_unit: int = 0) -> Tensor:
    r"""TS2Vec's loss: instance + temporal contrast averaged over the temporal pyramid (Alg. 1).

    With ``z^(s)`` the s-th max-pooled scale (:func:`temporal_pyramid`, S = floor(log2 T) + 1)::

        L = 1/S sum_s [ alpha * l_inst(z1^(s), z2^(s))
                        + (1 - alpha) * 1[s >= temporal_unit and T_s > 1] * l_temp(z1^(s), z2^(s)) ]

    The temporal term is skipped at length 1 (one step has no temporal negatives) and at
    scales finer than ``temporal_unit`` (to save time and memory on very long series); those
    scales still count in S, as in the official code.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"ts2vec_hierarchical: alpha must be in [0, 1], got {alpha}.")
    if temporal_unit < 0:
        raise ConfigError(f"ts2vec_hierarchical: temporal_unit must be >= 0, got {temporal_unit}.")
    _check_pair(z1, z2)
    total = z1.new_zeros((), dtype=torch.float32 if z1.dtype != torch.float64 else torch.float64)
    scales = list(zip(temporal_pyramid(z1), temporal_pyramid(z2)))
    for s, (r1, r2) in enumerate(scales):
        if alpha != 0:
            total = total + alpha * instance_contrastive_loss(r1, r2)
        if alpha != 1 and s >= temporal_unit and r1.shape[1] > 1:
            total = total + (1 - alpha) * temporal_contrastive_loss(r1, r2)
    return total / len(scales)


def _check_pair(z1: Tensor, z2: Tensor) -> None:
    if z1.dim() != 3 or z1.shape != z2.shape or z1.shape[1] < 1:
        raise DataError(
            f"ts2vec_hierarchical: both views must be per-time-step representations of the same "
            f"shape (B, T, D) with T >= 1, got {tuple(z1.shape)} and {tuple(z2.shape)}. Pass the "
            f"encoder outputs of the two crops' overlap."
        )


@OBJECTIVES.register("ts2vec_hierarchical")
class HierarchicalContrastiveLoss(nn.Module):
    r"""TS2Vec's hierarchical contrastive loss as a module: ``loss = objective(z1, z2)``.

    ``z1, z2``: (B, T, D) representations of the overlapping part of two crops, aligned in
    time. See :func:`hierarchical_contrastive_loss` for the formula.

    Args:
        alpha: weight of the instance-wise term; 1 - alpha weighs the temporal term (paper: 0.5).
        temporal_unit: first pyramid scale that gets the temporal term (paper: 0).

    Note: not a ``loss_terms`` objective — the instance term contrasts the whole batch at each
    time step and does not split into per-sample sums, so it is not wrapped for data-parallel
    gathering.

    References:
        Yue et al., "TS2Vec: Towards Universal Representation of Time Series", AAAI 2022.
        https://arxiv.org/abs/2106.10466

    Example::

        objective = objectives.get("ts2vec_hierarchical")
        loss = objective(crops.overlap_of_first(encoder(x1)), crops.overlap_of_second(encoder(x2)))
    """

    def __init__(self, alpha: float = 0.5, temporal_unit: int = 0):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"ts2vec_hierarchical: alpha must be in [0, 1], got {alpha}.")
        self.alpha = alpha
        self.temporal_unit = temporal_unit

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return hierarchical_contrastive_loss(z1, z2, self.alpha, self.temporal_unit)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temporal_unit={self.temporal_unit}"
