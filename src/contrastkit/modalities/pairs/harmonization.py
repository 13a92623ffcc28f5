"""Gradient harmonization between the losses of a two-tower model (Wu et al. 2022).

With several losses on the same samples (a cross-modal loss and in-modality losses), each loss
``k`` gives every sample ``i`` a gradient ``g_{k,i}`` on the features the losses share (the towers'
outputs ``h^a_i, h^b_i``, flattened and concatenated into one vector per sample). Wu et al. observe
that these per-sample gradients often point against each other (negative cosine) on noisy,
misaligned pairs, and propose two remedies, both implemented here on those per-sample vectors:

**Realignment** (PCGrad, Yu et al. 2020): for each loss ``k`` and each other loss ``j`` in a fixed
order, if the running ``g'_{k,i}`` conflicts with the original ``g_{j,i}``::

    g'_{k,i} <- g'_{k,i} - ( g'_{k,i} . g_{j,i} / ||g_{j,i}||^2 ) g_{j,i}     when g'_{k,i} . g_{j,i} < 0

which removes exactly the component along ``g_{j,i}`` (afterwards ``g'_{k,i} . g_{j,i} = 0``) and
leaves non-conflicting gradients unchanged. The sample's update is ``sum_k g'_{k,i}``.

**Curriculum**: the conflict of sample ``i`` is ``c_i = min_{k<j} cos(g_{k,i}, g_{j,i})``. At
training progress ``p`` in [0, 1], the ``s(p) * N`` samples with the lowest ``c_i < 0`` are
down-weighted to ``floor``, with ``s(p) = initial_share * (1 - p)``: training starts on the pairs
whose losses agree and lets the conflicting (likely misaligned) ones back in as it proceeds.

Harmonizing per sample on the shared features rather than on the parameters is what makes it
affordable: the losses' heads are tiny, so per-loss feature gradients cost one small backward pass
each, and the encoders are back-propagated once with the combined gradient. It is the
representation-level approximation of Sener & Koltun (2018, MGDA-UB); Wu et al. also realign per
sample. The curriculum schedule above is this library's reading of "prioritise the samples whose
gradients conflict least", not a formula from the paper.

References:
    - Wu et al., "Scaling Multimodal Pre-Training via Cross-Modality Gradient Harmonization",
      NeurIPS 2022. https://arxiv.org/abs/2211.02077
    - Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020 (PCGrad).
      https://arxiv.org/abs/2001.06782
    - Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError

EPS = 1e-12


def row_cosines(g: Tensor, h: Tensor) -> Tensor:
    """Cosine between row ``i`` of ``g`` and row ``i`` of ``h`` (N,); 0 where either row is zero."""
    dot = (g * h).sum(1)
    norms = g.norm(dim=1) * h.norm(dim=1)
    return torch.where(norms > EPS, dot / norms.clamp_min(EPS), torch.zeros_like(dot))


def project_conflicting(gradients: Sequence[Tensor]) -> list[Tensor]:
    """PCGrad per row: each (N, D) gradient loses its component along every other loss's
    gradient it conflicts with (see the module docstring). Rows are independent samples."""
    originals = [g.detach() for g in gradients]
    projected = []
    for k, g_k in enumerate(originals):
        current = g_k.clone()
        for j, g_j in enumerate(originals):
            if j == k:
                continue
            dot = (current * g_j).sum(1, keepdim=True)
            squared_norm = (g_j * g_j).sum(1, keepdim=True)
            conflict = (dot < 0) & (squared_norm > EPS)
            current = torch.where(conflict, current - dot / squared_norm.clamp_min(EPS) * g_j, current)
        projected.append(current)
    return projected


def sample_conflict(gradients: Sequence[Tensor]) -> Tensor:
    """``c_i = min`` over pairs of losses of the cosine of their gradients on sample ``i`` (N,);
    +1 when there is only one loss."""
    n = gradients[0].shape[0]
    conflict = torch.ones(n, dtype=gradients[0].dtype, device=gradients[0].device)
    for g, h in itertools.combinations(gradients, 2):
        conflict = torch.minimum(conflict, row_cosines(g, h))
    return conflict


def curriculum_weights(conflict: Tensor, share: float, floor: float = 0.0) -> Tensor:
    """Per-sample weights: the ``round(share * N)`` samples with the lowest conflict ``c_i``,
    among those with ``c_i < 0``, get ``floor``; the others 1."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"The curriculum share must be in [0, 1], got {share}.")
    weights = torch.ones_like(conflict)
    count = min(round(share * conflict.shape[0]), int((conflict < 0).sum()))
    if count > 0:
        weights[torch.argsort(conflict)[:count]] = floor
    return weights


def _per_sample_matrix(tensors: Sequence[Tensor]) -> Tensor:
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise DataError(f"Gradient harmonization needs one row per sample in every shared tensor, got "
                        f"{[tuple(t.shape) for t in tensors]}.")
    return torch.cat([t.reshape(n, -1) for t in tensors], dim=1)


def _split_like(matrix: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    sizes = [t[0].numel() for t in like]
    return [part.reshape(t.shape) for part, t in zip(matrix.split(sizes, dim=1), like)]


@dataclass
class GradientHarmonizer:
    """Combines per-loss gradients on shared per-sample tensors into one gradient per tensor.

    Args:
        realign: project conflicting components away (PCGrad per sample).
        curriculum_share: initial share of the batch down-weighted for conflict (0: no curriculum).
        curriculum_floor: the weight those samples get (0 drops them).
    """

    realign: bool = True
    curriculum_share: float = 0.0
    curriculum_floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.curriculum_share <= 1.0 or not 0.0 <= self.curriculum_floor <= 1.0:
            raise ConfigError(f"curriculum_share and curriculum_floor must be in [0, 1], got "
                              f"{self.curriculum_share} and {self.curriculum_floor}.")

    def share_at(self, progress: float) -> float:
        """``s(p) = curriculum_share * (1 - p)``."""
        return self.curriculum_share * (1.0 - min(max(progress, 0.0), 1.0))

    def combine(self, per_loss: Mapping[str, Sequence[Tensor]], progress: float = 0.0
                ) -> tuple[list[Tensor], dict[str, float]]:
        """``per_loss[name]`` holds that loss's gradients on the shared tensors (the same list of
        shapes for every loss, row = sample). Returns the combined gradient of each shared tensor
        and statistics: share of samples with a conflict, mean conflict, share down-weighted."""
        names = list(per_loss)
        if not names:
            raise ConfigError("Gradient harmonization needs at least one loss.")
        like = list(per_loss[names[0]])
        matrices = [_per_sample_matrix(list(per_loss[name])) for name in names]
        conflict = sample_conflict(matrices)
        parts = project_conflicting(matrices) if self.realign else matrices
        combined = torch.stack(parts).sum(0)
        weights = curriculum_weights(conflict, self.share_at(progress), self.curriculum_floor)
        combined = combined * weights[:, None]
        stats = {
            "conflicting_share": float((conflict < 0).float().mean()),
            "mean_min_cosine": float(conflict.mean()),
            "downweighted_share": float((weights < 1).float().mean()),
        }
        return _split_like(combined, like), stats
