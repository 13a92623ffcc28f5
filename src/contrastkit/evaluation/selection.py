"""Which samples to label: choose a labelling budget from the embeddings of an unlabelled pool.

Three strategies, each a function ``(embeddings (N, d), budget, seed) -> indices (budget,)`` in the
order they were chosen:

- :func:`k_center_greedy` — core-set selection (Sener & Savarese, "Active learning for
  convolutional neural networks: a core-set approach", ICLR 2018): cover the pool with balls of
  the smallest radius; spreads the labels over the whole space, outliers included.
- :func:`typicality` — TypiClust (Hacohen, Dekel & Weinshall, "Active learning on a budget:
  opposite strategies suit high and low budgets", ICML 2022): one dense, typical point from each
  of ``budget`` k-means clusters; made for the low-budget regime (a few labels per class).
- :func:`random_selection` — uniform without replacement, the baseline both papers compare with.

Distances are Euclidean on the rows as given; :func:`select` L2-normalises them first by default,
as contrastive embeddings are compared by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.arrays import as_float32_matrix, l2_normalize_rows

TYPICALITY_NEIGHBOURS = 20  # K of TypiClust's typicality (the paper's value)
MIN_CLUSTER_SIZE = 5  # TypiClust does not pick from smaller clusters while larger ones are uncovered


def check_budget(budget: int, n: int) -> int:
    if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or not 1 <= budget <= n:
        raise ConfigError(f"The budget must be an integer between 1 and the number of samples ({n}), "
                          f"got {budget!r}.")
    return int(budget)


def random_selection(embeddings: Any, budget: int, seed: int = 0) -> np.ndarray:
    """``budget`` distinct rows drawn uniformly (``numpy.random.default_rng(seed)``)."""
    n = as_float32_matrix(embeddings, "embeddings").shape[0]
    return np.random.default_rng(seed).choice(n, size=check_budget(budget, n), replace=False).astype(np.int64)


def k_center_greedy(embeddings: Any, budget: int, seed: int = 0, labelled: Any = ()) -> np.ndarray:
    """Greedy k-center (core-set) selection of Sener & Savarese (2018), their Algorithm 1.

    With centres C (the already ``labelled`` rows, or one row drawn with ``seed`` when there are
    none), repeat ``budget`` times::

        u = argmax_{i not in C} min_{j in C} ||x_i - x_j||_2 ;   C = C + {u}

    (ties: the smallest index). The radius max_i min_{j in C} ||x_i - x_j|| of the result is at most
    twice that of the best possible set of the same size (Gonzalez 1985), the bound the paper's
    core-set loss rests on. The drawn first row is one of the ``budget`` rows returned; the
    ``labelled`` rows are not. Cost: O(N d) per pick, O(N) memory.
    """
    x = as_float32_matrix(embeddings, "embeddings").astype(np.float64)
    labelled = np.asarray(labelled, dtype=np.int64).reshape(-1)
    budget = check_budget(budget, x.shape[0] - len(np.unique(labelled)))
    chosen: list[int] = []
    if len(labelled):
        nearest = np.min([np.linalg.norm(x - x[j], axis=1) for j in labelled], axis=0)
        nearest[labelled] = -1.0  # never chosen again, even when duplicates leave every distance 0
    else:
        first = int(np.random.default_rng(seed).integers(x.shape[0]))
        chosen.append(first)
        nearest = np.linalg.norm(x - x[first], axis=1)
        nearest[first] = -1.0
    while len(chosen) < budget:
        u = int(np.argmax(nearest))
        chosen.append(u)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[u], axis=1))
        nearest[u] = -1.0
    return np.asarray(chosen, dtype=np.int64)


def typicality_scores(x: np.ndarray, k: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """TypiClust's typicality of each row of ``x`` (n, d) within ``x``::

        typicality(x_i) = ( (1 / k) sum_{x_j in kNN(x_i)} ||x_i - x_j||_2 )^(-1)

    the inverse mean distance to its k nearest other rows (k is clipped to n - 1). A row with k
    duplicates has infinite typicality.
    """
    k = min(k, x.shape[0] - 1)
    if k < 1:
        return np.ones(x.shape[0])
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    mean_distance = distances[:, 1:].mean(axis=1)  # column 0 is the row itself (distance 0)
    with np.errstate(divide="ignore"):
        return 1.0 / mean_distance


def typicality(embeddings: Any, budget: int, seed: int = 0, k: int = TYPICALITY_NEIGHBOURS,
               min_cluster_size: int = MIN_CLUSTER_SIZE) -> np.ndarray:
    """TypiClust (Hacohen et al., 2022): k-means into ``budget`` clusters, then the most typical
    point of each.

    1. Cluster the rows with k-means (``budget`` clusters; scikit-learn, k-means++ started once
       with ``random_state=seed``).
    2. Repeat ``budget`` times: take the cluster with the fewest points chosen so far, the largest
       first among equals, ignoring clusters under ``min_cluster_size`` points while larger ones
       remain; choose its not-yet-chosen point of highest :func:`typicality_scores` (``k`` = 20
       nearest neighbours, as in the paper, measured within the cluster as the authors' code does).

    With ``budget`` clusters every cluster of at least ``min_cluster_size`` points gets one label;
    the budget left by smaller clusters goes to second points of the largest ones.
    """
    x = as_float32_matrix(embeddings, "embeddings").astype(np.float64)
    budget = check_budget(budget, x.shape[0])
    clusters = KMeans(n_clusters=budget, n_init=1, random_state=seed).fit_predict(x)
    members = [np.flatnonzero(clusters == c) for c in range(budget)]
    # Each cluster's points, most typical first (stable: ties keep the smaller index).
    ranked = [rows[np.argsort(-typicality_scores(x[rows], k), kind="stable")] for rows in members]
    taken = np.zeros(budget, dtype=np.int64)
    chosen = []
    for _ in range(budget):
        open_clusters = [c for c in range(budget) if taken[c] < len(members[c])]
        large = [c for c in open_clusters if len(members[c]) >= min_cluster_size]
        candidates = large or open_clusters
        cluster = min(candidates, key=lambda c: (taken[c], -len(members[c]), c))
        chosen.append(int(ranked[cluster][taken[cluster]]))
        taken[cluster] += 1
    return np.asarray(chosen, dtype=np.int64)


SELECTION_STRATEGIES: dict[str, Callable[..., np.ndarray]] = {
    "typicality": typicality,
    "k-center": k_center_greedy,
    "random": random_selection,
}


def select(embeddings: Any, budget: int, strategy: str = "typicality", seed: int = 0,
           normalize: bool = True) -> np.ndarray:
    """Indices (int64, in the order chosen) of ``budget`` rows by ``strategy`` (a key of
    :data:`SELECTION_STRATEGIES`), on L2-normalised rows unless ``normalize=False``."""
    if strategy not in SELECTION_STRATEGIES:
        raise ConfigError(f"Unknown selection strategy '{strategy}'; choose one of "
                          f"{', '.join(SELECTION_STRATEGIES)}.")
    x = as_float32_matrix(embeddings, "embeddings")
    return SELECTION_STRATEGIES[strategy](l2_normalize_rows(x) if normalize else x, budget, seed=seed)


__all__ = ["SELECTION_STRATEGIES", "k_center_greedy", "random_selection", "select", "typicality",
           "typicality_scores"]
