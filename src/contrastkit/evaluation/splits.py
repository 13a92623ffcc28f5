"""Deterministic stratified index splits for evaluating embeddings.

Both functions depend only on the labels and the seed (numpy's PCG64 generator), so the same
embeddings file is always split the same way, whatever produced it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.arrays import UNLABELLED, as_label_vector


def stratified_split(
    labels: Any, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train_index, test_index), class by class.

    For a class with n_c rows, n_test_c = round(test_fraction * n_c), clipped to [1, n_c - 1] so
    that every class with at least two rows appears on both sides; a class with a single row goes
    to the training part. The rows of each class are shuffled with
    ``numpy.random.default_rng(seed)`` before taking the first n_test_c as test rows.
    Both index arrays are sorted (int64).
    """
    y = as_label_vector(labels, "labels")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for cls in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == cls))
        n_test = (
            0 if len(rows) < 2 else min(max(round(test_fraction * len(rows)), 1), len(rows) - 1)
        )
        test_parts.append(rows[:n_test])
        train_parts.append(rows[n_test:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(test_parts))


def few_labels_per_class(
    labels: Any, candidates: Any, n_per_class: int, seed: int = 0
) -> np.ndarray:
    """A seeded draw of ``n_per_class`` rows of each class among ``candidates`` (sorted int64).

    ``labels`` covers all rows; only the rows listed in ``candidates`` (e.g. the training part) can
    be drawn, so a held-out part is never touched. A class with fewer than ``n_per_class``
    candidate rows contributes all of them. Rows labelled -1 (no label) are never drawn.
    """
    y = as_label_vector(labels, "labels", allow_unlabelled=True)
    pool = np.asarray(candidates, dtype=np.int64)
    pool = pool[y[pool] != UNLABELLED]
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ConfigError(f"the number of labels per class must be >= 1, got {n_per_class!r}.")
    rng = np.random.default_rng(seed)
    chosen = []
    pool_labels = y[pool]
    for cls in np.unique(pool_labels):
        rows = pool[pool_labels == cls]
        chosen.append(rng.choice(rows, size=min(n_per_class, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
