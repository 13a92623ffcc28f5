"""Dice and IoU (segmentation/metrics.py) against a naive loop over pixels and scikit-learn's Jaccard score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.segmentation.metrics import dice_per_image, iou_per_image, mean_dice, mean_iou


def naive_scores(predicted, target, num_classes):
    dice, iou = [], []
    for p_image, t_image in zip(predicted.tolist(), target.tolist()):
        dice_row, iou_row = [], []
        for k in range(1, num_classes):
            both = either = p_count = t_count = 0
            for p_line, t_line in zip(p_image, t_image):
                for p, t in zip(p_line, t_line):
                    both += p == k and t == k
                    either += p == k or t == k
                    p_count += p == k
                    t_count += t == k
            dice_row.append(1.0 if p_count + t_count == 0 else 2 * both / (p_count + t_count))
            iou_row.append(1.0 if either == 0 else both / either)
        dice.append(dice_row)
        iou.append(iou_row)
    return torch.tensor(dice, dtype=torch.float64), torch.tensor(iou, dtype=torch.float64)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_dice_and_iou_equal_a_naive_loop(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    predicted = torch.randint(0, num_classes, (5, 9, 7), generator=generator)
    target = torch.randint(0, num_classes, (5, 9, 7), generator=generator)
    target[0] = 0  # an image without foreground ...
    predicted[0] = 0  # ... predicted empty: both scores 1
    predicted[1] = 0  # an image whose foreground is missed entirely: 0
    dice, iou = naive_scores(predicted, target, num_classes)
    torch.testing.assert_close(dice_per_image(predicted, target, num_classes), dice)
    torch.testing.assert_close(iou_per_image(predicted, target, num_classes), iou)
    assert mean_dice(predicted, target, num_classes) == pytest.approx(float(dice.mean()))
    assert float(dice[0].min()) == 1.0 and float(dice[1].max()) == 0.0


def test_binary_iou_equals_sklearn_jaccard_and_dice_is_its_transform():
    rng = np.random.default_rng(0)
    predicted = torch.from_numpy(rng.integers(0, 2, (6, 16, 16)))
    target = torch.from_numpy((rng.random((6, 16, 16)) < 0.3).astype(np.int64))
    iou = iou_per_image(predicted, target)[:, 0]
    expected = [jaccard_score(t.flatten().numpy(), p.flatten().numpy()) for p, t in zip(predicted, target)]
    np.testing.assert_allclose(iou.numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(dice_per_image(predicted, target)[:, 0], 2 * iou / (1 + iou))  # Dice = 2J / (1 + J)
    assert mean_iou(predicted, target) == pytest.approx(float(np.mean(expected)))


def test_metrics_refuse_mismatched_masks():
    with pytest.raises(DataError, match=r"\(N, H, W\)"):
        mean_dice(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
