"""OBoW's target and loss: a momentum teacher's bag of visual words, predicted by the student.

Gidaris, Bursuc, Puy, Komodakis, Cord & Pérez, "OBoW: Online Bag-of-Visual-Words Generation for
Self-Supervised Learning", CVPR 2021 (https://arxiv.org/abs/2012.11552), Sec. 3.1-3.2 (Eqs. 1-4).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES

# The paper's ResNet-18 configuration (its code's config/ImageNet20/ResNet18_OBoW_full.yaml): the
# inverse of delta_base is 10 (its code's default, for ResNet-50, is 15); the moving average of the
# mean distance to the nearest word has rate 0.99 and starts at 0.5.
PAPER_INVERSE_TEMPERATURE = 10.0
PAPER_DISTANCE_MOMENTUM = 0.99
PAPER_INITIAL_MEAN_DISTANCE = 0.5


@in_float32
@torch.no_grad()
def squared_word_distances(feature_maps: Tensor, words: Tensor) -> Tensor:
    """``||u - v_k||^2`` for every cell ``u`` of the maps (N, C, H, W) and word ``v_k`` of the
    vocabulary (K, C): (N, H * W, K), cells in raster order. No gradient (the teacher's side)."""
    cells = feature_maps.flatten(2).transpose(1, 2)  # (N, P, C)
    distances = cells.pow(2).sum(-1, keepdim=True) - 2.0 * cells @ words.T + words.pow(2).sum(-1)
    return distances.clamp_min(0.0)  # the expansion may round a zero distance below zero


@in_float32
@torch.no_grad()
def bag_of_words(distances: Tensor, delta: float | Tensor) -> Tensor:
    """Bags (N, K) from the distances (N, P, K) of N maps' P cells to K words (Eqs. 1-2).

    Each cell is soft-assigned to the words, ``q_k(u) = softmax_k(-d_k(u) / delta)``; the bag keeps
    each word's largest assignment over the cells (max-pooling, the paper's choice) and is
    L1-normalised into a distribution over the words. ``1 / delta = 0`` gives the uniform bag."""
    codes = torch.softmax(-distances / delta, dim=-1)
    bags = codes.amax(dim=1)
    return bags / bags.sum(dim=-1, keepdim=True)


@in_float32
def bow_prediction_terms(logits: Tensor, bags: Tensor, skip_same_crop: bool = True,
                         anchor_rows: slice | None = None) -> LossTerms:
    """OBoW's cross-entropy terms of the samples ``anchor_rows`` (all when None); see
    :class:`OBoWLoss`. ``logits`` (B, V, K): the student's prediction of every crop; ``bags``
    (B, G, K): the teacher's bags of the first G crops (no gradient)."""
    num_samples, num_crops, _ = logits.shape
    num_targets = bags.shape[1]
    samples = anchor_range(anchor_rows, num_samples, logits.device)
    log_predictions = F.log_softmax(logits[samples], dim=-1)  # (b, V, K)
    targets = bags[samples].detach()
    total = log_predictions.new_zeros(())
    for crop in range(num_targets):
        students = [v for v in range(num_crops) if not (skip_same_crop and v == crop)]
        total = total - (targets[:, crop].unsqueeze(1) * log_predictions[:, students]).sum()
    pairs = num_crops - 1 if skip_same_crop else num_crops
    return LossTerms(total, num_samples * num_targets * pairs)


@OBJECTIVES.register("obow")
class OBoWLoss(ContrastiveObjective):
    r"""OBoW: the student predicts the teacher's bag of visual words of another crop.

    The teacher's feature map of crop i (cells ``u``, C channels) and a vocabulary of K words
    ``v_k`` (C each; :class:`~contrastkit.nn.queue.MemoryQueue` of the teacher's past local
    features, kept by the method) give the bag ``y_i`` (Eqs. 1-2)::

        d_k(u)  = ||u - v_k||^2
        delta   = mu / inverse_temperature,   mu <- m mu + (1 - m) mean_u min_k d_k(u)
        q_k(u)  = softmax_k(-d_k(u) / delta)
        y_i     = maxpool_u q(u) / ||maxpool_u q(u)||_1

    and the student's logits ``s_v`` (K) of crop v (the method's generated head: ``s_{v,k} =
    kappa <f(crop v), w_k>``, ``w_k = G(v_k)``, Eq. 3) are trained with the cross-entropy (Eq. 4)::

        loss = 1 / (B G V') sum_b sum_{i < G} sum_{v in pairs(i)} -sum_k y_{b,i,k} log softmax(s_{b,v})_k

    with ``pairs(i)`` every crop but i (``skip_same_crop``: the teacher sees the student's first G
    crops) or every crop (V' = V - 1 or V). ``mu``, the moving average of the batch's mean squared
    distance to the nearest word, makes delta follow the scale of the features; it is the buffer
    ``mean_min_distance`` (saved in checkpoints), updated in training mode from the whole batch
    before the codes are computed (the paper's code), left as it is in eval mode.

    The paper's code trains with the KL divergence, which differs from this cross-entropy by the
    targets' entropy: the same gradients. It averages per crop size and sums the sizes; here every
    crop weighs the same. ``inverse_temperature = 0`` gives the uniform bag, a target without
    information (the collapsing variant the tests use).

    Inputs: ``logits`` (B, V, K) as ``z_a``; the teacher's maps (B, G, C, H, W) as ``z_b`` (no
    gradient); ``vocabulary`` (K, C), the same on every process (not a per-sample input).

    Data parallelism: under :class:`~contrastkit.nn.distributed.GatheredObjective` the logits and
    maps are gathered; every rank updates ``mu`` from the whole gathered batch, so loss, gradients
    and state equal one process on the whole batch.

    Args:
        inverse_temperature: ``1 / delta_base`` (default 10, the paper's ResNet-18 configuration).
        distance_momentum: m of ``mu`` (default 0.99).
        initial_mean_distance: ``mu`` before the first batch (default 0.5).
        skip_same_crop: leave out the pairs of a crop with its own bag (default True).

    References:
        - Gidaris et al., "OBoW: Online Bag-of-Visual-Words Generation for Self-Supervised
          Learning", CVPR 2021, Sec. 3 and Eqs. 1-4. https://arxiv.org/abs/2012.11552

    Example::

        maps = teacher_stage(crops)                                         # (B, G, C, H, W)
        logits = kappa * features @ generator(vocabulary).T                 # (B, V, K)
        loss = objectives.get("obow")(logits, maps, vocabulary=vocabulary)
    """

    not_for_view_pairs: ClassVar[str] = (
        "it takes the student's logits over a vocabulary and the teacher's feature maps: use --method obow"
    )

    def __init__(self, inverse_temperature: float = PAPER_INVERSE_TEMPERATURE,
                 distance_momentum: float = PAPER_DISTANCE_MOMENTUM,
                 initial_mean_distance: float = PAPER_INITIAL_MEAN_DISTANCE, skip_same_crop: bool = True):
        super().__init__()
        if not inverse_temperature >= 0:
            raise ConfigError(f"obow: inverse_temperature must be >= 0 (the paper: 10 or 15; 0 gives uniform bags), "
                              f"got {inverse_temperature}.")
        if not 0.0 <= distance_momentum <= 1.0 or not initial_mean_distance > 0:
            raise ConfigError(f"obow: distance_momentum must be in [0, 1] and initial_mean_distance positive, got "
                              f"{distance_momentum} and {initial_mean_distance}.")
        self.inverse_temperature = float(inverse_temperature)
        self.distance_momentum = float(distance_momentum)
        self.skip_same_crop = bool(skip_same_crop)
        self.register_buffer("mean_min_distance", torch.tensor(float(initial_mean_distance)))

    def teacher_bags(self, maps: Tensor, vocabulary: Tensor) -> Tensor:
        """The bags (B, G, K) of the maps (B, G, C, H, W); updates ``mu`` in training mode."""
        distances = squared_word_distances(maps.detach().flatten(0, 1), vocabulary)  # (B G, P, K)
        if self.training:
            batch_mean = distances.min(dim=-1).values.mean()
            self.mean_min_distance.lerp_(batch_mean.to(self.mean_min_distance), 1.0 - self.distance_momentum)
        # delta = mu / inverse_temperature; an inverse temperature of 0 is an infinite delta (uniform codes).
        delta = (self.mean_min_distance.clamp_min(1e-12).to(distances) / self.inverse_temperature
                 if self.inverse_temperature else float("inf"))
        return bag_of_words(distances, delta).view(maps.shape[0], maps.shape[1], -1)

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, vocabulary: Tensor,
                   anchor_rows: slice | None = None) -> LossTerms:
        self._check(z_a, z_b, vocabulary)
        bags = self.teacher_bags(z_b, vocabulary)
        return bow_prediction_terms(z_a, bags, self.skip_same_crop, anchor_rows)

    def forward(self, z_a: Tensor, z_b: Tensor, *, vocabulary: Tensor) -> Tensor:  # type: ignore[override]
        return self.loss_terms(z_a, z_b, vocabulary=vocabulary).mean()

    def _check(self, logits: Tensor, maps: Tensor, vocabulary: Tensor) -> None:
        if (logits.dim() != 3 or maps is None or maps.dim() != 5 or vocabulary.dim() != 2
                or maps.shape[0] != logits.shape[0] or vocabulary.shape != (logits.shape[2], maps.shape[2])):
            raise DataError(
                f"obow: needs the student's logits (B, V, K), the teacher's maps (B, G, C, H, W) and a vocabulary "
                f"(K, C); got {tuple(logits.shape)}, {None if maps is None else tuple(maps.shape)} and "
                f"{tuple(vocabulary.shape)}.")
        if self.skip_same_crop and logits.shape[1] < max(2, maps.shape[1]):
            raise DataError(f"obow: with skip_same_crop the student's first {maps.shape[1]} crops are the teacher's "
                            f"and it needs one more at least; got {logits.shape[1]} crops.")

    def extra_repr(self) -> str:
        return (f"inverse_temperature={self.inverse_temperature}, distance_momentum={self.distance_momentum}, "
                f"skip_same_crop={self.skip_same_crop}")
