"""Dice and IoU of predicted masks, per image and foreground class: pure functions on class indices.

For image ``i`` and class ``k`` with predicted pixels ``P`` and true pixels ``T``::

    Dice(i, k) = 2 |P ∩ T| / (|P| + |T|)        IoU(i, k) = |P ∩ T| / |P ∪ T|

both 1 when ``P`` and ``T`` are empty (nothing to find, nothing found). Class 0 is the background
and is not scored. The figure reported is the mean over images and foreground classes (per-image
Dice, the usual figure for Kvasir-SEG; a pooled Dice over all pixels would weigh large polyps more).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import DataError


def _counts(predicted: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """(intersection, |P|, |T|), each (N, num_classes - 1): the foreground classes of every image."""
    if predicted.shape != target.shape or predicted.dim() != 3:
        raise DataError(f"Predicted and true masks must both be (N, H, W) class indices; got "
                        f"{tuple(predicted.shape)} and {tuple(target.shape)}.")
    classes = torch.arange(1, num_classes, device=predicted.device).view(1, -1, 1, 1)
    p = predicted.unsqueeze(1) == classes  # (N, K - 1, H, W)
    t = target.unsqueeze(1) == classes
    return (p & t).flatten(2).sum(2).double(), p.flatten(2).sum(2).double(), t.flatten(2).sum(2).double()


def dice_per_image(predicted: Tensor, target: Tensor, num_classes: int = 2) -> Tensor:
    """(N, num_classes - 1) Dice of every image and foreground class (1 where both are empty)."""
    both, p, t = _counts(predicted, target, num_classes)
    return torch.where(p + t > 0, 2 * both / (p + t).clamp(min=1), torch.ones_like(both))


def iou_per_image(predicted: Tensor, target: Tensor, num_classes: int = 2) -> Tensor:
    """(N, num_classes - 1) IoU (Jaccard) of every image and foreground class (1 where both are empty)."""
    both, p, t = _counts(predicted, target, num_classes)
    union = p + t - both
    return torch.where(union > 0, both / union.clamp(min=1), torch.ones_like(both))


def mean_dice(predicted: Tensor, target: Tensor, num_classes: int = 2) -> float:
    return float(dice_per_image(predicted, target, num_classes).mean())


def mean_iou(predicted: Tensor, target: Tensor, num_classes: int = 2) -> float:
    return float(iou_per_image(predicted, target, num_classes).mean())
