"""Inverse propensity weights over surface similarity: DebCSE's debiasing of positives and negatives.

In unsupervised contrastive training the label of a pair (positive / negative) is confounded with
its surface similarity: SimCSE's positives are a sentence and itself (surface similarity 1), its
negatives are random sentences (usually of other lengths and words), so a model can score pairs by
length and word overlap instead of meaning (Miao et al., "DebCSE", CIKM 2023: *length bias*).
Inverse propensity weighting removes the confounding: a pair is re-weighted by the inverse of how
often pairs of its surface similarity occur among pairs with the same label, so that after
weighting, surface similarity is (bin by bin) equally distributed among positives and among
negatives and no longer predicts the label.

Surface similarities in [0, 1] fall into ``bins`` equal bins, ``b(s) = min(floor(s * bins), bins - 1)``.
For the pairs selected by ``mask`` (all when None)::

    propensity(s) = max( #{pairs p in mask: b(s_p) = b(s)} / #mask ,  clip )

``clip`` bounds the weight ``1 / propensity`` of rare bins (the usual clipping of IPW estimators).

Positives (B anchors x M candidates, semantic similarity ``sem``, surface ``surf``)::

    p_ic = max(sem_ic, 0) / propensity(surf_ic)^power,   normalised over c

is the probability of drawing candidate c as anchor i's positive: a candidate that still means the
same (high ``sem``) and whose surface similarity is rare (low propensity) is preferred.

Negatives (anchor i, other rows j != i)::

    q_ij = max(1 - sem_ij, 0) * [sem_ij < threshold] / propensity(surf_ij)^power
    w_ij = (B - 1) * q_ij / sum_{k != i} q_ik

down-weights likely false negatives (high ``sem``; removed above ``threshold``) and up-weights
negatives whose surface similarity is rare among negatives (the look-alikes: hard negatives).
``w`` has mean 1 over each row, so with constant ``sem`` and ``surf`` it is all ones (SimCSE).
``power = 0`` turns the propensity off (semantic weighting only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError


def similarity_bins(similarity: Tensor, bins: int) -> Tensor:
    """Bin index ``min(floor(s * bins), bins - 1)`` of similarities in [0, 1] (clamped into range)."""
    if bins < 1:
        raise ConfigError(f"propensity_bins must be a positive integer, got {bins}.")
    return (similarity.clamp(0.0, 1.0) * bins).floor().long().clamp(max=bins - 1)


def bin_propensity(similarity: Tensor, bins: int, mask: Tensor | None = None, clip: float = 0.0) -> Tensor:
    """Share of the pairs in ``mask`` that fall in each pair's bin, at least ``clip``; same shape
    as ``similarity`` (entries outside ``mask`` get the value of their bin too)."""
    index = similarity_bins(similarity, bins)
    selected = torch.ones_like(index, dtype=torch.bool) if mask is None else mask
    counts = torch.bincount(index[selected], minlength=bins).to(similarity.dtype)
    shares = counts / selected.sum().clamp_min(1)
    return shares[index].clamp_min(clip)


def positive_selection_probabilities(semantic: Tensor, surface: Tensor, bins: int, power: float = 1.0,
                                     clip: float = 0.0) -> Tensor:
    """``p_ic`` (B, M): probability of drawing candidate c as anchor i's positive (rows sum to 1)."""
    propensity = bin_propensity(surface, bins, clip=clip)
    # A small floor keeps every row a distribution when no candidate has a positive cosine.
    scores = semantic.clamp_min(1e-6) / propensity.pow(power)
    return scores / scores.sum(dim=1, keepdim=True)


def negative_weights(semantic: Tensor, surface: Tensor, bins: int, power: float = 1.0, clip: float = 0.0,
                     threshold: float | None = None) -> Tensor:
    """``w_ij`` (B, B): weights of the in-batch negatives, mean 1 over each row's ``j != i``,
    0 on the diagonal. A row whose negatives all count as false negatives gets all zeros."""
    batch = semantic.shape[0]
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=semantic.device)
    propensity = bin_propensity(surface, bins, mask=off_diagonal, clip=clip)
    scores = (1.0 - semantic).clamp_min(0.0) / propensity.pow(power)
    if threshold is not None:
        scores = scores.masked_fill(semantic >= threshold, 0.0)
    scores = scores.masked_fill(~off_diagonal, 0.0)
    totals = scores.sum(dim=1, keepdim=True)
    return torch.where(totals > 0, (batch - 1) * scores / totals.clamp_min(1e-12), torch.zeros_like(scores))
