"""Quality-driven contrastive loss: InfoNCE with one weight per positive pair.

Li et al. "GenView: Enhancing View Quality with Pretrained Generative Model for Self-Supervised
Learning". ECCV 2024 (weighting checked against the authors' code,
github.com/xiaojieli0903/genview, ``MoCoV3.calculate_weight``).

The caller supplies a quality score ``s_i`` per positive pair (GenView: the similarity of the two
views' foregrounds minus that of their backgrounds). The weights are a softmax over the batch,
rescaled to mean 1, and carry no gradient::

    w_i = B * exp(gamma * s_i) / sum_j exp(gamma * s_j)

and scale each pair's InfoNCE term (L2-normalised ``a_i``, ``b_i``, cross-view negatives only, as
in MoCo v3 on which GenView builds), averaged over both directions::

    l_i^{ab} = -log( exp(a_i . b_i / t) / sum_j exp(a_i . b_j / t) )
    loss     = (1 / B) * sum_i w_i * (l_i^{ab} + l_i^{ba}) / 2

With all scores equal every ``w_i = 1`` and the loss is the symmetric InfoNCE. Under
:class:`contrastkit.nn.distributed.GatheredObjective` the scores are gathered, so the softmax runs
over the global batch (the authors normalise per GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    check_pair,
    check_temperature,
    in_float32,
    normalize,
)


def quality_weights(quality: Tensor, sharpness: float = 1.0) -> Tensor:
    """``w_i = B * softmax(sharpness * s)_i`` (B,), detached."""
    quality = quality.detach().view(-1)
    return quality.shape[0] * torch.softmax(sharpness * quality, dim=0)


@in_float32
def symmetric_infonce_per_pair(z_a: Tensor, z_b: Tensor, temperature: float, rows: slice | None = None) -> Tensor:
    """``(l_i^{ab} + l_i^{ba}) / 2`` (b,) for the pairs ``rows`` (all by default), negatives from
    the whole batch of the other view."""
    z_a, z_b = normalize(z_a), normalize(z_b)
    rows = slice(None) if rows is None else rows
    index = torch.arange(z_a.shape[0], device=z_a.device)[rows]
    logits_ab = z_a[rows] @ z_b.T / temperature
    logits_ba = z_b[rows] @ z_a.T / temperature
    loss_ab = F.cross_entropy(logits_ab, index, reduction="none")
    loss_ba = F.cross_entropy(logits_ba, index, reduction="none")
    return (loss_ab + loss_ba) / 2


@OBJECTIVES.register("quality_weighted")
class QualityWeightedInfoNCE(ContrastiveObjective):
    """GenView's quality-weighted InfoNCE (module docstring).

    Args:
        temperature: InfoNCE temperature ``t`` (MoCo v3 / GenView: 0.2).
        sharpness: ``gamma`` of the weights (0: uniform weights, plain symmetric InfoNCE).

    Inputs:
        z_a, z_b: (B, d) embeddings of two views; row i of each comes from sample i.
        quality: (B,) quality score of each positive pair (no gradient); without it every pair
            weighs 1.

    Example::

        objective = objectives.get("quality_weighted", temperature=0.2)
        loss = objective(z_a, z_b, quality=foreground_similarity - background_similarity)
    """

    per_sample_inputs: tuple[str, ...] = ("quality",)

    def __init__(self, temperature: float = 0.2, sharpness: float = 1.0):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.sharpness = sharpness

    def loss_terms(
        self, z_a: Tensor, z_b: Tensor, *, quality: Tensor | None = None, anchor_rows: slice | None = None
    ) -> LossTerms:
        """Sum of ``w_i (l_i^{ab} + l_i^{ba}) / 2`` over ``anchor_rows`` and ``B``; the weights are
        normalised over the whole batch."""
        check_pair(z_a, z_b, "quality_weighted")
        batch = z_a.shape[0]
        if quality is None:
            weights = z_a.new_ones(batch)
        elif quality.numel() != batch:
            raise DataError(
                f"quality_weighted: quality must hold one score per pair ({batch}); got shape {tuple(quality.shape)}."
            )
        else:
            weights = quality_weights(quality.to(z_a.dtype), self.sharpness)
        rows = slice(None) if anchor_rows is None else anchor_rows
        losses = symmetric_infonce_per_pair(z_a, z_b, self.temperature, rows)
        return LossTerms((weights[rows] * losses).sum(), batch)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sharpness={self.sharpness}"
