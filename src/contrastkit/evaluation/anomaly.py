"""Anomaly-detection metrics and baselines: AUROC overall and per attack family, an isolation
forest and a reconstruction autoencoder; out-of-distribution scores on embeddings of any modality
(kNN distance, Mahalanobis) and their evaluation against a declared in-distribution set.

Scores follow one convention: larger = more anomalous. AUROC is reported as computed, never as
``max(AUROC, 1 - AUROC)``: a detector whose scores are inverted must show an AUROC below 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from torch import nn

from contrastkit.engine.auxiliary import fit_auxiliary
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import as_float32_matrix, as_label_vector, l2_normalize_rows, to_numpy
from contrastkit.evaluation.faiss_search import top_k_inner_product
from contrastkit.core.seeding import seeded


def auroc(scores: Any, is_anomaly: Any) -> float:
    """Area under the ROC curve of ``scores`` (N,) for the positives ``is_anomaly`` (N,) bool:
    ``P(score(anomaly) > score(normal)) + P(equal) / 2`` (sklearn ``roc_auc_score``, as is)."""
    scores = np.asarray(to_numpy(scores), dtype=np.float64).reshape(-1)
    positive = np.asarray(to_numpy(is_anomaly)).astype(bool).reshape(-1)
    if scores.shape != positive.shape:
        raise DataError(f"auroc: {scores.shape[0]} scores but {positive.shape[0]} labels.")
    if positive.all() or not positive.any():
        raise DataError("auroc needs both normal and anomalous rows; the labels hold only one class.")
    if not np.isfinite(scores).all():
        raise DataError("auroc: scores contain NaN or infinity.")
    return float(roc_auc_score(positive, scores))


def auroc_by_family(
    scores: Any, family: Any, normal: str = "normal", families: Sequence[str] | None = None
) -> dict[str, float]:
    """``{"overall": AUROC(all attacks vs normal), family: AUROC(that family vs normal), ...}``.

    Each family's AUROC uses the normal rows and that family's rows only. ``families`` fixes the
    order (default: sorted families present); a listed family absent from the data gives NaN.
    """
    scores = np.asarray(to_numpy(scores), dtype=np.float64).reshape(-1)
    family = np.asarray(to_numpy(family)).astype(str).reshape(-1)
    is_normal = family == normal
    result = {"overall": auroc(scores, ~is_normal)}
    names = families if families is not None else sorted({str(name) for name in family[~is_normal]})
    for name in names:
        rows = is_normal | (family == name)
        result[name] = auroc(scores[rows], family[rows] == name) if (family == name).any() else float("nan")
    return result


def isolation_forest_scores(train: Any, test: Any, seed: int = 0, n_estimators: int = 100) -> np.ndarray:
    """Isolation forest (Liu, Ting, Zhou, ICDM 2008) fit on ``train`` (N, D): anomaly score of
    ``test`` rows, ``-score_samples`` (larger = shorter average path = more anomalous)."""
    train = as_float32_matrix(train, "train", min_rows=2)
    test = as_float32_matrix(test, "test")
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(train)
    return -forest.score_samples(test)


class ReconstructionAutoencoder(nn.Module):
    """MLP autoencoder ``D -> hidden -> bottleneck -> hidden -> D`` (ReLU); anomaly score is the
    mean squared reconstruction error per row, ``||x - g(f(x))||^2 / D``."""

    def __init__(self, in_dim: int, hidden_dim: int = 64, bottleneck_dim: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(bottleneck_dim, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        return (self(x) - x).pow(2).mean(dim=1)


def autoencoder_scores(
    train: Any,
    test: Any,
    hidden_dim: int = 64,
    bottleneck_dim: int = 16,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> np.ndarray:
    """Train a :class:`ReconstructionAutoencoder` on ``train`` (N, D) with MSE and Adam; return
    the reconstruction error of each ``test`` row."""
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"autoencoder_scores: epochs and batch_size must be >= 1, got {epochs}, {batch_size}.")
    train_t = torch.from_numpy(as_float32_matrix(train, "train", min_rows=2))
    test_t = torch.from_numpy(as_float32_matrix(test, "test"))
    with seeded(seed):
        model = ReconstructionAutoencoder(train_t.shape[1], hidden_dim, bottleneck_dim)
        fit_auxiliary(model.parameters(), lambda rows: (model(train_t[rows]) - train_t[rows]).pow(2).mean(),
                      train_t.shape[0], epochs=epochs, lr=lr, batch_size=batch_size)
    model.eval()
    return model.reconstruction_error(test_t).numpy()


OOD_NEIGHBOURS = 10  # k of the kNN score when none is given


def knn_distance_scores(reference: Any, test: Any, k: int = OOD_NEIGHBOURS, normalize: bool = True,
                        batch_size: int = 4096) -> np.ndarray:
    """Deep nearest-neighbour OOD score (Sun, Ming, Zhu & Li, "Out-of-distribution detection with
    deep nearest neighbors", ICML 2022): the Euclidean distance from each ``test`` row z to its
    k-th nearest ``reference`` row,

        score(z) = || z / ||z|| - r_(k) / ||r_(k)|| ||_2 ,   r_(k) the k-th nearest reference row,

    on L2-normalised rows (``normalize=False``: the rows as given). Exact search (faiss). On unit
    vectors ||a - b||^2 = 2 - 2 a.b, so the k-th largest cosine gives the k-th smallest distance.
    """
    reference = as_float32_matrix(reference, "reference")
    test = as_float32_matrix(test, "test")
    if test.shape[1] != reference.shape[1]:
        raise DataError(f"test rows have dimension {test.shape[1]} but reference rows {reference.shape[1]}; "
                        f"embed both with the same encoder.")
    if not 1 <= k <= reference.shape[0]:
        raise ConfigError(f"k must be between 1 and the {reference.shape[0]} reference rows, got {k}.")
    if normalize:
        similarities, _ = top_k_inner_product(l2_normalize_rows(test), l2_normalize_rows(reference), k, batch_size)
        return np.sqrt(np.clip(2.0 - 2.0 * similarities[:, k - 1].astype(np.float64), 0.0, None))
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    squared, _ = index.search(test, k)  # faiss returns squared L2 distances
    return np.sqrt(np.clip(squared[:, k - 1].astype(np.float64), 0.0, None))


def shrunk_covariance(centred: np.ndarray, shrinkage: float | str = "ledoit-wolf") -> np.ndarray:
    """``(1 - a) S + a (tr(S) / d) I`` for the covariance S = X^T X / n of the ``centred`` rows X;
    ``a = shrinkage`` in [0, 1], or the Ledoit-Wolf estimate of the best a ("ledoit-wolf",
    :func:`sklearn.covariance.ledoit_wolf_shrinkage`, Ledoit & Wolf 2004)."""
    if isinstance(shrinkage, str):
        if shrinkage != "ledoit-wolf":
            raise ConfigError(f"shrinkage must be a number in [0, 1] or 'ledoit-wolf', got '{shrinkage}'.")
        shrinkage = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
    if not 0.0 <= shrinkage <= 1.0:
        raise ConfigError(f"shrinkage must be in [0, 1], got {shrinkage}.")
    covariance = centred.T @ centred / centred.shape[0]
    target = np.trace(covariance) / covariance.shape[0]
    return (1.0 - shrinkage) * covariance + shrinkage * target * np.eye(covariance.shape[0])


def mahalanobis_scores(reference: Any, test: Any, labels: Any = None, shrinkage: float | str = "ledoit-wolf",
                       normalize: bool = True) -> np.ndarray:
    """Mahalanobis OOD score of each ``test`` row z (Lee, Lee, Lee & Shin, "A simple unified framework
    for detecting out-of-distribution samples and adversarial attacks", NeurIPS 2018):

        score(z) = min_c (z - mu_c)^T Sigma^-1 (z - mu_c)

    with class means mu_c of the ``reference`` rows and one covariance Sigma shared by the classes
    (the within-class scatter, :func:`shrunk_covariance` of the class-centred rows). Without
    ``labels`` the reference is a single Gaussian (one mean). Rows are L2-normalised first unless
    ``normalize=False``. Computed in float64 with a Cholesky solve.
    """
    reference = as_float32_matrix(reference, "reference", min_rows=2).astype(np.float64)
    test = as_float32_matrix(test, "test").astype(np.float64)
    if test.shape[1] != reference.shape[1]:
        raise DataError(f"test rows have dimension {test.shape[1]} but reference rows {reference.shape[1]}; "
                        f"embed both with the same encoder.")
    if normalize:
        reference, test = l2_normalize_rows(reference), l2_normalize_rows(test)
        reference, test = reference.astype(np.float64), test.astype(np.float64)
    groups = (np.zeros(len(reference), dtype=np.int64) if labels is None
              else as_label_vector(labels, "labels", length=len(reference)))
    classes = np.unique(groups)
    means = np.stack([reference[groups == c].mean(axis=0) for c in classes])
    centred = reference - means[np.searchsorted(classes, groups)]
    factor = cho_factor(shrunk_covariance(centred, shrinkage))
    distances = np.empty((len(test), len(classes)))
    for column, mean in enumerate(means):
        offset = test - mean
        distances[:, column] = np.einsum("nd,nd->n", offset, cho_solve(factor, offset.T).T)
    return distances.min(axis=1)


def ood_evaluation(reference: Any, in_distribution: Any, out_of_distribution: Any, reference_labels: Any = None,
                   k: int = OOD_NEIGHBOURS, shrinkage: float | str = "ledoit-wolf",
                   normalize: bool = True) -> dict[str, Any]:
    """AUROC of telling ``out_of_distribution`` rows (positives) from held-out ``in_distribution``
    rows, with scores fitted on the in-distribution ``reference`` rows alone (which must not
    overlap ``in_distribution``): the kNN distance, the single-Gaussian Mahalanobis score and, with
    ``reference_labels``, the class-conditional one; on L2-normalised rows, or on the rows as given
    with ``normalize=False`` (normalising discards the norm, which can be what tells the sets apart)."""
    in_rows = as_float32_matrix(in_distribution, "in_distribution")
    out_rows = as_float32_matrix(out_of_distribution, "out_of_distribution")
    is_ood = np.concatenate([np.zeros(len(in_rows), dtype=bool), np.ones(len(out_rows), dtype=bool)])
    test = np.concatenate([in_rows, out_rows])
    results: dict[str, Any] = {
        "n_reference": int(len(to_numpy(reference))), "n_in": int(len(in_rows)), "n_out": int(len(out_rows)),
        "k": int(k), "shrinkage": shrinkage, "normalized": bool(normalize),
        "auroc_knn": auroc(knn_distance_scores(reference, test, k=k, normalize=normalize), is_ood),
        "auroc_mahalanobis": auroc(mahalanobis_scores(reference, test, shrinkage=shrinkage, normalize=normalize),
                                   is_ood),
    }
    if reference_labels is not None:
        scores = mahalanobis_scores(reference, test, labels=reference_labels, shrinkage=shrinkage, normalize=normalize)
        results["auroc_mahalanobis_class_conditional"] = auroc(scores, is_ood)
    return results


__all__ = [
    "OOD_NEIGHBOURS",
    "ReconstructionAutoencoder",
    "auroc",
    "auroc_by_family",
    "autoencoder_scores",
    "isolation_forest_scores",
    "knn_distance_scores",
    "mahalanobis_scores",
    "ood_evaluation",
    "shrunk_covariance",
]
