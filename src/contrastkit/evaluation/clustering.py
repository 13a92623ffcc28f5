"""Clustering quality of embeddings against class labels (the unsupervised-clustering protocol of
e.g. deep clustering and graph SSL papers: k-means on the embeddings, then ACC, NMI and ARI).

Clustering accuracy (Yang et al. 2010; the usual "ACC"):

    ACC = max_{m : clusters -> classes} (1 / n) sum_i [y_i == m(c_i)]

over one-to-one maps m, found with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the cluster x class contingency table. With more
clusters than classes the extra clusters stay unmatched and count as errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.arrays import as_float32_matrix, as_label_vector


def contingency_table(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """counts[c, k] = number of samples in predicted cluster c with true class k."""
    counts = np.zeros((y_pred.max() + 1, y_true.max() + 1), dtype=np.int64)
    np.add.at(counts, (y_pred, y_true), 1)
    return counts


def cluster_accuracy(y_true: Any, y_pred: Any) -> float:
    """Best one-to-one matching accuracy of cluster ids ``y_pred`` to classes ``y_true`` (0..1)."""
    truth = as_label_vector(y_true, "y_true")
    clusters = as_label_vector(y_pred, "y_pred", length=truth.shape[0])
    if truth.size == 0:
        return 0.0
    counts = contingency_table(truth, clusters)
    cluster_ids, class_ids = linear_sum_assignment(counts, maximize=True)
    return float(counts[cluster_ids, class_ids].sum() / truth.size)


def kmeans_scores(
    embeddings: Any, labels: Any, n_clusters: int | None = None, seed: int = 0, n_init: int = 10
) -> dict[str, float]:
    """k-means (scikit-learn, k-means++ with ``n_init`` restarts) on the embeddings as given, then
    ``acc`` (:func:`cluster_accuracy`), ``nmi`` (arithmetic normalisation) and ``ari``.

    ``n_clusters`` defaults to the number of distinct labels.
    """
    x = as_float32_matrix(embeddings, "embeddings")
    y = as_label_vector(labels, "labels", length=x.shape[0])
    k = len(np.unique(y)) if n_clusters is None else n_clusters
    if not 1 <= k <= x.shape[0]:
        raise ConfigError(
            f"n_clusters={k} must be between 1 and the number of embeddings ({x.shape[0]})."
        )
    clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return {
        "acc": cluster_accuracy(y, clusters),
        "nmi": float(normalized_mutual_info_score(y, clusters)),
        "ari": float(adjusted_rand_score(y, clusters)),
    }
