"""Anomaly-detection metrics and baselines: AUROC overall and per attack family, an isolation
forest and a reconstruction autoencoder.

Scores follow one convention: larger = more anomalous. AUROC is reported as computed, never as
``max(AUROC, 1 - AUROC)``: a detector whose scores are inverted must show an AUROC below 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from torch import nn

from contrastkit.engine.auxiliary import fit_auxiliary
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import as_float32_matrix, to_numpy
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


__all__ = [
    "ReconstructionAutoencoder",
    "auroc",
    "auroc_by_family",
    "autoencoder_scores",
    "isolation_forest_scores",
]
