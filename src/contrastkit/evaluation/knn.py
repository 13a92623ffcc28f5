"""Weighted k-nearest-neighbour classification of embeddings: the standard self-supervised
kNN monitor (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018; the protocol of lightly's and solo-learn's kNN evaluation).

For a query embedding q and a labelled bank {(b_i, y_i)}, all L2-normalised:

    s_i        = q . b_i                                 (cosine similarity)
    N_k(q)     = the k bank rows with the largest s_i     (exact search, faiss IndexFlatIP)
    w_i        = exp(s_i / temperature)                   for i in N_k(q)
    score_c(q) = sum_{i in N_k(q), y_i = c} w_i
    y_hat(q)   = argmax_c score_c(q)                      (ties: the smallest class index)

Implementation notes:
- The weights are computed as exp((s_i - s_max) / temperature), which divides every class score
  of a query by the same positive constant exp(s_max / temperature): the argmax is unchanged and
  float32 cannot overflow for small temperatures (exp(1 / 0.01) = 2.7e43 would).
- ``k`` larger than the bank is clipped to the bank size (then every bank row votes): a small
  validation bank should not make a monitoring call fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import (
    as_float32_matrix,
    as_label_vector,
    l2_normalize_rows,
)
from contrastkit.evaluation.faiss_search import iter_top_k_inner_product


def class_scores(
    similarities: np.ndarray, neighbour_labels: np.ndarray, temperature: float, num_classes: int
) -> np.ndarray:
    """score[q, c] = sum_j [neighbour_labels[q, j] == c] exp((s[q, j] - max_j s[q, j]) / T).

    ``similarities`` and ``neighbour_labels`` are (Q, k); returns float64 (Q, num_classes).
    """
    shifted = similarities.astype(np.float64) - similarities.max(axis=1, keepdims=True)
    weights = np.exp(shifted / temperature)
    scores = np.zeros((similarities.shape[0], num_classes), dtype=np.float64)
    rows = np.broadcast_to(np.arange(similarities.shape[0])[:, None], neighbour_labels.shape)
    np.add.at(scores, (rows, neighbour_labels), weights)
    return scores


def weighted_knn_predict(
    bank: Any,
    bank_labels: Any,
    queries: Any,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Predicted class (int64, shape (Q,)) of each query by temperature-weighted kNN voting.

    Args:
        bank: (N, d) embeddings with known labels (e.g. the training part).
        bank_labels: (N,) class indices in 0..C-1.
        queries: (Q, d) embeddings to classify.
        k: number of neighbours; clipped to N when larger.
        temperature: T in the vote weight exp(cos / T); smaller T trusts the nearest more.
        num_classes: C; defaults to max(bank_labels) + 1.
        batch_size: queries searched at once (bounds the memory used).
    """
    bank_matrix = l2_normalize_rows(as_float32_matrix(bank, "bank"))
    labels = as_label_vector(bank_labels, "bank_labels", length=bank_matrix.shape[0])
    query_matrix = l2_normalize_rows(as_float32_matrix(queries, "queries"))
    if query_matrix.shape[1] != bank_matrix.shape[1]:
        raise DataError(
            f"queries have dimension {query_matrix.shape[1]} but the bank has dimension "
            f"{bank_matrix.shape[1]}; embed both with the same encoder."
        )
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"kNN k must be a positive integer, got {k!r}.")
    if not temperature > 0:
        raise ConfigError(f"kNN temperature must be > 0, got {temperature!r}.")
    num_classes = _check_num_classes(num_classes, labels)
    k = min(int(k), bank_matrix.shape[0])

    predictions = np.empty(query_matrix.shape[0], dtype=np.int64)
    for start, similarities, neighbours in iter_top_k_inner_product(
        query_matrix, bank_matrix, k, batch_size
    ):
        scores = class_scores(similarities, labels[neighbours], temperature, num_classes)
        predictions[start : start + len(scores)] = scores.argmax(axis=1)
    return predictions


def weighted_knn_accuracy(
    bank: Any,
    bank_labels: Any,
    queries: Any,
    query_labels: Any,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    batch_size: int = 4096,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`weighted_knn_predict` against ``query_labels``."""
    predictions = weighted_knn_predict(
        bank, bank_labels, queries, k, temperature, num_classes, batch_size
    )
    truth = as_label_vector(query_labels, "query_labels", length=predictions.shape[0])
    return float(np.mean(predictions == truth))


def _check_num_classes(num_classes: int | None, labels: np.ndarray) -> int:
    needed = int(labels.max()) + 1
    if num_classes is None:
        return needed
    if num_classes < needed:
        raise ConfigError(
            f"num_classes={num_classes} but bank_labels contain class {needed - 1}; pass "
            f"num_classes >= {needed} or leave it unset."
        )
    return int(num_classes)
