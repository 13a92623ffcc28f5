"""OBoW's bag of visual words and its loss (issue 21), against references written from the paper
with scalar float64 loops that share no code with contrastkit.objectives.

The bag: for every cell of a feature map, the squared distance to every word, the soft assignment
exp(-d / delta) normalised over the words, the largest assignment of each word over the cells, the
L1 normalisation (Gidaris et al. 2021, Eqs. 1-2), all as Python loops; delta follows the moving
average of the mean distance to the nearest word, updated before the codes in training mode and left
in eval mode. The loss: the cross-entropy of every (crop, other crop's bag) pair by a loop, value and
gradient. The 2-process rows (loss, gradients, and the same mu on every rank) are in
tests/objective_cases.py, run by tests/nn/test_distributed.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives import OBJECTIVES
from contrastkit.objectives.obow import OBoWLoss, bag_of_words, bow_prediction_terms, squared_word_distances


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def naive_bag(feature_map: torch.Tensor, words: torch.Tensor, delta: float) -> list[float]:
    """One map (C, H, W) and K words (K, C) -> the bag, by loops over cells, words and channels."""
    channels, height, width = feature_map.shape
    num_words = words.shape[0]
    best = [0.0] * num_words
    for row in range(height):
        for col in range(width):
            distances = [sum((float(feature_map[c, row, col]) - float(words[k, c])) ** 2 for c in range(channels))
                         for k in range(num_words)]
            weights = [math.exp(-(d - min(distances)) / delta) for d in distances]  # shifted: same ratios
            total = sum(weights)
            best = [max(b, w / total) for b, w in zip(best, weights, strict=True)]
    return [b / sum(best) for b in best]


def naive_mean_min_distance(maps: torch.Tensor, words: torch.Tensor) -> float:
    """Mean over every map and cell of the squared distance to the nearest word."""
    values = []
    for feature_map in maps:
        channels, height, width = feature_map.shape
        for row in range(height):
            for col in range(width):
                values.append(min(sum((float(feature_map[c, row, col]) - float(w[c])) ** 2 for c in range(channels))
                                  for w in words))
    return sum(values) / len(values)


def test_distances_equal_a_loop():
    maps, words = _rand(2, 3, 2, 3, seed=0), _rand(5, 3, seed=1)
    distances = squared_word_distances(maps, words)  # (2, 6, 5)
    for n in range(2):
        for cell in range(6):
            for k in range(5):
                row, col = divmod(cell, 3)
                expected = sum((float(maps[n, c, row, col]) - float(words[k, c])) ** 2 for c in range(3))
                assert float(distances[n, cell, k]) == pytest.approx(expected, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("delta", [0.05, 0.3, 2.0])
def test_bag_of_words_equals_a_loop_over_cells_and_words(delta):
    maps, words = _rand(3, 4, 3, 3, seed=2), _rand(7, 4, seed=3)
    bags = bag_of_words(squared_word_distances(maps, words), delta)
    expected = torch.tensor([naive_bag(m, words, delta) for m in maps], dtype=torch.float64)
    torch.testing.assert_close(bags, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bags.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_infinite_delta_gives_the_uniform_bag():
    maps, words = _rand(2, 3, 2, 2, seed=4), _rand(6, 3, seed=5)
    torch.testing.assert_close(bag_of_words(squared_word_distances(maps, words), float("inf")),
                               torch.full((2, 6), 1 / 6, dtype=torch.float64))


def naive_loss(logits: torch.Tensor, bags: torch.Tensor, skip_same_crop: bool) -> torch.Tensor:
    """Mean over samples and (teacher crop i, student crop v) pairs of -sum_k y_k log softmax(s_v)_k."""
    batch, crops, words = logits.shape
    total, count = logits.new_zeros(()), 0
    for b in range(batch):
        for i in range(bags.shape[1]):
            for v in range(crops):
                if skip_same_crop and v == i:
                    continue
                normaliser = torch.logsumexp(logits[b, v], dim=0)
                for k in range(words):
                    total = total - bags[b, i, k] * (logits[b, v, k] - normaliser)
                count += 1
    return total / count


@pytest.mark.parametrize("skip_same_crop", [True, False])
def test_loss_and_gradient_equal_a_loop_over_crop_pairs(skip_same_crop):
    logits = (3 * _rand(4, 3, 5, seed=6) - 1.5).requires_grad_(True)
    maps, words = _rand(4, 2, 3, 3, 3, seed=7), _rand(5, 3, seed=8)
    loss = OBoWLoss(inverse_temperature=4.0, skip_same_crop=skip_same_crop).eval()
    value = loss(logits, maps, vocabulary=words)
    (grad,) = torch.autograd.grad(value, logits)
    mu = 0.5  # eval mode: the initial mean distance, not updated
    bags = torch.tensor([[naive_bag(maps[b, i], words, mu / 4.0) for i in range(2)] for b in range(4)],
                        dtype=torch.float64)
    reference_logits = logits.detach().clone().requires_grad_(True)
    expected = naive_loss(reference_logits, bags, skip_same_crop)
    (expected_grad,) = torch.autograd.grad(expected, reference_logits)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert float(loss.mean_min_distance) == 0.5


def test_training_mode_updates_mu_from_the_batch_before_the_codes():
    logits = _rand(3, 2, 4, seed=9)
    maps, words = _rand(3, 2, 2, 3, 3, seed=10), _rand(4, 2, seed=11)
    loss = OBoWLoss(inverse_temperature=2.0, distance_momentum=0.9, initial_mean_distance=0.5)
    value = loss(logits, maps, vocabulary=words)
    mu = 0.9 * 0.5 + 0.1 * naive_mean_min_distance(maps.flatten(0, 1), words)
    assert float(loss.mean_min_distance) == pytest.approx(mu, rel=1e-6)  # a float32 buffer
    bags = torch.tensor([[naive_bag(maps[b, i], words, mu / 2.0) for i in range(2)] for b in range(3)],
                        dtype=torch.float64)
    torch.testing.assert_close(value, naive_loss(logits, bags, True), rtol=1e-6, atol=1e-9)
    second = 0.9 * mu + 0.1 * naive_mean_min_distance(maps.flatten(0, 1), words)
    loss(logits, maps, vocabulary=words)
    assert float(loss.mean_min_distance) == pytest.approx(second, rel=1e-6)
    assert "mean_min_distance" in loss.state_dict()


def test_anchor_rows_split_the_terms_but_not_the_normaliser():
    logits = _rand(5, 3, 4, seed=12)
    maps, words = _rand(5, 2, 2, 2, 2, seed=13), _rand(4, 2, seed=14)
    bags = bag_of_words(squared_word_distances(maps.flatten(0, 1), words), 0.2).view(5, 2, 4)
    whole = bow_prediction_terms(logits, bags)
    parts = [bow_prediction_terms(logits, bags, anchor_rows=rows) for rows in (slice(0, 2), slice(2, 5))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total)
    assert all(p.count == whole.count == 5 * 2 * 2 for p in parts)


def test_registered_and_inputs_checked():
    assert isinstance(OBJECTIVES.build("obow"), OBoWLoss)
    with pytest.raises(ConfigError, match="inverse_temperature"):
        OBoWLoss(inverse_temperature=-1)
    with pytest.raises(DataError, match="vocabulary"):
        OBoWLoss()(_rand(2, 2, 4, seed=0), _rand(2, 2, 3, 2, 2, seed=1), vocabulary=_rand(5, 3, seed=2))
    with pytest.raises(DataError, match="one more"):  # one crop cannot predict its own bag
        OBoWLoss()(_rand(2, 1, 4, seed=0), _rand(2, 1, 3, 2, 2, seed=1), vocabulary=_rand(4, 3, seed=2))
