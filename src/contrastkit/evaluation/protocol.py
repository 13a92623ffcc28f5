"""The evaluation protocol for a set of labelled embeddings: one held-out split, then a weighted
kNN classifier, a linear probe on all training labels, and a linear probe on a few labels per class.

    split       stratified held-out split (``splits.stratified_split``), or the data's official
                split given as ``train_index`` / ``test_index``
    knn_top1    weighted kNN (``knn.weighted_knn_accuracy``): bank = train rows, queries = test rows
    linear_top1 linear probe (``linear.linear_probe_accuracy``) fitted on all train rows
    linear_top1_{n}_per_class
                the same probe fitted on n rows per class drawn (seeded) from the train rows only,
                scored on the same test rows

Accuracies are fractions in [0, 1]. ``n_train`` / ``n_test`` count the rows on each side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation import splits
from contrastkit.evaluation.arrays import as_float32_matrix, as_label_vector
from contrastkit.evaluation.knn import weighted_knn_accuracy
from contrastkit.evaluation.linear import linear_probe_accuracy


def few_label_key(n_per_class: int) -> str:
    """The result key of the few-label probe: ``linear_top1_{n}_per_class``."""
    return f"linear_top1_{n_per_class}_per_class"


def evaluate_embeddings(
    embeddings: Any,
    labels: Any,
    test_fraction: float = 0.2,
    seed: int = 0,
    k: int = 200,
    temperature: float = 0.1,
    few_labels_per_class: int | None = 10,
    train_index: Any = None,
    test_index: Any = None,
) -> dict[str, float | int]:
    """kNN and linear-probe accuracies of ``embeddings`` (N, d) with ``labels`` (N,).

    ``few_labels_per_class=None`` skips the few-label probe. ``train_index`` and ``test_index``
    (both or neither) replace the stratified split; they must not overlap.
    """
    x = as_float32_matrix(embeddings, "embeddings")
    y = as_label_vector(labels, "labels", length=x.shape[0])
    train, test = _resolve_split(y, x.shape[0], test_fraction, seed, train_index, test_index)

    results: dict[str, float | int] = {
        "knn_top1": weighted_knn_accuracy(x[train], y[train], x[test], y[test], k, temperature),
        "linear_top1": linear_probe_accuracy(x[train], y[train], x[test], y[test], seed),
    }
    if few_labels_per_class is not None:
        few = splits.few_labels_per_class(y, train, few_labels_per_class, seed)
        results[few_label_key(few_labels_per_class)] = linear_probe_accuracy(
            x[few], y[few], x[test], y[test], seed
        )
    results["n_train"] = int(len(train))
    results["n_test"] = int(len(test))
    return results


def evaluate_with_label_fractions(
    embeddings: Any,
    labels: Any,
    fractions: tuple[float, ...] | list[float] = (0.01, 0.1, 1.0),
    test_fraction: float = 0.2,
    seed: int = 0,
    k: int = 200,
    temperature: float = 0.1,
) -> dict[str, Any]:
    """kNN accuracy, and linear-probe accuracy when only a share of the training labels is known.

    For each fraction f, ``max(1, round(f * n_c))`` training rows of each class c (seeded draw from the
    training part only) fit the probe; every probe is scored on the same held-out rows.
    Returns ``knn_top1``, ``linear_top1_by_label_fraction`` ({str(f): accuracy}) and the counts.
    """
    x = as_float32_matrix(embeddings, "embeddings")
    y = as_label_vector(labels, "labels", length=x.shape[0])
    train, test = _resolve_split(y, x.shape[0], test_fraction, seed, None, None)
    by_fraction: dict[str, float] = {}
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ConfigError(f"label fractions must be in (0, 1], got {fraction!r}.")
        rows = _label_fraction_rows(y, train, fraction, seed)
        by_fraction[str(fraction)] = linear_probe_accuracy(x[rows], y[rows], x[test], y[test], seed)
    return {
        "knn_top1": weighted_knn_accuracy(x[train], y[train], x[test], y[test], k, temperature),
        "linear_top1_by_label_fraction": by_fraction,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
    }


def _label_fraction_rows(y: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    if fraction == 1:
        return train
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(y[train]):
        rows = train[y[train] == cls]
        chosen.append(rng.choice(rows, size=max(1, round(fraction * len(rows))), replace=False))
    return np.sort(np.concatenate(chosen))


def _resolve_split(
    y: np.ndarray,
    n_rows: int,
    test_fraction: float,
    seed: int,
    train_index: Any,
    test_index: Any,
) -> tuple[np.ndarray, np.ndarray]:
    if (train_index is None) != (test_index is None):
        raise ConfigError("give both train_index and test_index, or neither (stratified split).")
    if train_index is None:
        train, test = splits.stratified_split(y, test_fraction, seed)
    else:
        train = _check_index(train_index, "train_index", n_rows)
        test = _check_index(test_index, "test_index", n_rows)
        overlap = np.intersect1d(train, test)
        if overlap.size:
            raise DataError(
                f"train_index and test_index share {overlap.size} rows (e.g. row {overlap[0]}); "
                f"a held-out evaluation needs disjoint parts."
            )
    if len(train) == 0 or len(test) == 0:
        raise DataError(
            f"the split leaves {len(train)} training and {len(test)} test rows out of {n_rows}; "
            f"both parts need rows (use more data or another test_fraction)."
        )
    return train, test


def _check_index(index: Any, name: str, n_rows: int) -> np.ndarray:
    array = np.asarray(index.cpu() if hasattr(index, "cpu") else index)
    if array.dtype == bool:
        array = np.flatnonzero(array)
    array = array.astype(np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= n_rows):
        raise DataError(
            f"{name} holds row numbers outside 0..{n_rows - 1} (range {array.min()}.."
            f"{array.max()}); it must index the rows of the embeddings."
        )
    return array
