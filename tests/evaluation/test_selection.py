"""Choosing samples to label (contrastkit.evaluation.selection), each checked against a second
derivation: a naive O(n^2) k-center loop, the brute-force optimal covering radius, hand-built
clusters whose densest point is known, and a naive typicality loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.selection import (
    k_center_greedy,
    random_selection,
    select,
    typicality,
    typicality_scores,
)


def naive_k_center(x: np.ndarray, first: int, budget: int) -> list[int]:
    """Sener & Savarese's loop written out: every step scans every (candidate, centre) pair."""
    chosen = [first]
    while len(chosen) < budget:
        best, best_distance = None, -1.0
        for i in range(len(x)):
            if i in chosen:
                continue
            distance = min(float(np.sqrt(((x[i] - x[j]) ** 2).sum())) for j in chosen)
            if distance > best_distance:
                best, best_distance = i, distance
        chosen.append(best)
    return chosen


def covering_radius(x: np.ndarray, centres) -> float:
    return float(max(min(np.linalg.norm(x[i] - x[j]) for j in centres) for i in range(len(x))))


def test_k_center_equals_the_naive_loop():
    x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    chosen = k_center_greedy(x, budget=12, seed=3)
    assert chosen.tolist() == naive_k_center(x.astype(np.float64), int(chosen[0]), 12)
    assert len(set(chosen.tolist())) == 12


@pytest.mark.parametrize("seed", range(5))
def test_k_center_is_within_twice_the_optimal_radius(seed):
    x = np.random.default_rng(seed).normal(size=(11, 2))
    budget = 3
    optimum = min(covering_radius(x, centres) for centres in itertools.combinations(range(len(x)), budget))
    greedy = covering_radius(x, k_center_greedy(x, budget, seed=seed))
    assert optimum <= greedy <= 2 * optimum + 1e-9


def test_k_center_starts_from_the_labelled_rows():
    x = np.random.default_rng(1).normal(size=(30, 3))
    labelled = [4, 17]
    chosen = k_center_greedy(x, budget=5, labelled=labelled)
    # The same loop started from the labelled rows, with them removed from the answer.
    centres, expected = list(labelled), []
    for _ in range(5):
        distances = [min(np.linalg.norm(x[i] - x[j]) for j in centres) if i not in centres else -1
                     for i in range(len(x))]
        centres.append(int(np.argmax(distances)))
        expected.append(centres[-1])
    assert chosen.tolist() == expected


def ring_cluster(centre, radius: float, points: int) -> np.ndarray:
    """A centre and ``points`` points on a circle around it: the centre is the densest point."""
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius
    return np.concatenate([np.asarray(centre)[None], np.asarray(centre) + ring])


def test_typicality_picks_each_clusters_densest_point_largest_cluster_first():
    small = ring_cluster([0.0, 0.0], 1.0, 8)  # rows 0..8, centre at row 0
    large = ring_cluster([50.0, 0.0], 1.5, 12)  # rows 9..21, centre at row 9
    x = np.concatenate([small, large])
    chosen = typicality(x, budget=2, seed=0)
    assert chosen.tolist() == [9, 0]  # the larger cluster's centre comes first


def test_typicality_scores_equal_a_naive_loop():
    x = np.random.default_rng(2).normal(size=(25, 3))
    k = 4
    naive = []
    for i in range(len(x)):
        distances = sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)
        naive.append(1.0 / np.mean(distances[:k]))
    np.testing.assert_allclose(typicality_scores(x, k), naive, rtol=1e-10)


def test_typicality_gives_the_budget_left_by_tiny_clusters_to_the_largest():
    big = ring_cluster([0.0, 0.0], 1.0, 10)  # 11 points
    lonely = np.array([[100.0, 100.0]])  # a cluster of one, under the minimum size of 5
    chosen = typicality(np.concatenate([big, lonely]), budget=2, seed=0)
    assert 11 not in chosen.tolist() and chosen[0] == 0 and len(set(chosen.tolist())) == 2


@pytest.mark.parametrize("strategy", ["typicality", "k-center", "random"])
def test_selection_is_determined_by_the_seed(strategy):
    x = np.random.default_rng(4).normal(size=(200, 8)).astype(np.float32)
    first = select(x, 20, strategy, seed=1)
    assert first.tolist() == select(x, 20, strategy, seed=1).tolist()
    assert first.tolist() != select(x, 20, strategy, seed=2).tolist()
    assert len(set(first.tolist())) == 20 and first.min() >= 0 and first.max() < 200


def test_random_selection_is_numpys_draw():
    x = np.zeros((50, 2))
    expected = np.random.default_rng(7).choice(50, size=10, replace=False)
    assert random_selection(x, 10, seed=7).tolist() == expected.tolist()


def test_bad_budget_and_strategy_are_refused():
    x = np.zeros((5, 2))
    with pytest.raises(ConfigError, match="between 1 and"):
        select(x, 6, "random")
    with pytest.raises(ConfigError, match="typicality"):
        select(x, 2, "core-set")
