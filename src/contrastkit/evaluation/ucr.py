"""The UCR/UEA classification protocol of TS2Vec: an RBF SVM on frozen instance representations.

Yue et al., AAAI 2022, Sec. 4.1 (and the official ``tasks/_eval_protocols.fit_svm``): fit an
RBF-kernel SVC (gamma = "scale", i.e. 1 / (d * Var(X))) on the training representations, its
penalty C chosen by 5-fold cross-validated grid search over

    C in {10^-4, 10^-3, ..., 10^4, inf}

on the TRAINING set only; report accuracy on the test set. When some class would be too small
for 5 folds (fewer than 5 training samples per class on average) or the training set has fewer
than 50 samples, no search is done and C = inf (a hard margin), as in the official code.
Training sets above 10,000 samples are subsampled (stratified, seed 0) for the search.

Also the classic floor of the UCR archive: 1-nearest-neighbour with Euclidean distance on the
raw series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.svm import SVC

from contrastkit.core.errors import DataError
from contrastkit.evaluation.arrays import as_float32_matrix, as_label_vector, to_numpy

SVM_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, np.inf)
CV_FOLDS = 5
MAX_SEARCH_SAMPLES = 10_000


@dataclass(frozen=True)
class SVMProtocolResult:
    """Test accuracy, the C the training-set search chose, and whether a search was run."""

    accuracy: float
    C: float
    searched: bool
    predictions: np.ndarray


def select_svm(train_repr: Any, train_y: Any, n_jobs: int | None = None) -> tuple[SVC, bool]:
    """Fit the protocol's SVC on the training representations alone; returns (svc, searched).

    The grid search's folds are sklearn's StratifiedKFold(5) without shuffling, so the choice
    is deterministic. ``n_jobs`` parallelises the search (the official code uses 5).
    """
    x = as_float32_matrix(train_repr, "train_repr").astype(np.float64)
    y = as_label_vector(train_y, "train_y", length=x.shape[0])
    n_classes = np.unique(y).size
    if n_classes < 2:
        raise DataError(
            f"train_y holds a single class ({n_classes}); an SVM needs at least two classes."
        )
    if x.shape[0] // n_classes < CV_FOLDS or x.shape[0] < 50:
        return SVC(C=np.inf, gamma="scale").fit(x, y), False
    if x.shape[0] > MAX_SEARCH_SAMPLES:
        x, _, y, _ = train_test_split(x, y, train_size=MAX_SEARCH_SAMPLES, random_state=0, stratify=y)
    search = GridSearchCV(
        SVC(kernel="rbf", gamma="scale", max_iter=10_000_000),
        {"C": list(SVM_C_GRID)},
        cv=CV_FOLDS,
        n_jobs=n_jobs,
    )
    # The official code leaves the search's refit on the (possibly subsampled) training set.
    search.fit(x, y)
    return search.best_estimator_, True


def svm_protocol_result(
    train_repr: Any, train_y: Any, test_repr: Any, test_y: Any, n_jobs: int | None = None
) -> SVMProtocolResult:
    """:func:`svm_protocol` with the chosen C and the test predictions."""
    svc, searched = select_svm(train_repr, train_y, n_jobs)
    x_test = as_float32_matrix(test_repr, "test_repr").astype(np.float64)
    if x_test.shape[1] != svc.n_features_in_:
        raise DataError(
            f"test_repr has {x_test.shape[1]} columns but train_repr has {svc.n_features_in_}; "
            f"encode both splits with the same model."
        )
    y_test = as_label_vector(test_y, "test_y", length=x_test.shape[0])
    predictions = svc.predict(x_test)
    return SVMProtocolResult(
        accuracy=float(np.mean(predictions == y_test)),
        C=float(svc.C),
        searched=searched,
        predictions=predictions,
    )


def svm_protocol(train_repr: Any, train_y: Any, test_repr: Any, test_y: Any, n_jobs: int | None = None) -> float:
    """Test accuracy of TS2Vec's SVM protocol (C chosen on the training set only).

    Args:
        train_repr, test_repr: (n, d) instance representations (numpy or torch).
        train_y, test_y: (n,) integer class indices.
        n_jobs: processes for the grid search (None = 1).
    """
    return svm_protocol_result(train_repr, train_y, test_repr, test_y, n_jobs).accuracy


def one_nn_euclidean(train_x: Any, train_y: Any, test_x: Any, test_y: Any, chunk_size: int = 1024) -> float:
    """Accuracy of 1-nearest-neighbour with Euclidean distance on raw series (the UCR floor).

    Series of any shape (n, ...) are flattened. ``||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2`` is
    computed in float64 and in chunks of ``chunk_size`` test series; ties go to the earliest
    training series. NaN (missing or padding) is not allowed: fill or crop the series first.
    """
    train = to_numpy(train_x).reshape(len(to_numpy(train_x)), -1).astype(np.float64)
    test = to_numpy(test_x).reshape(len(to_numpy(test_x)), -1).astype(np.float64)
    if train.shape[1] != test.shape[1]:
        raise DataError(
            f"1-NN needs series of one length: train has {train.shape[1]} values per series, "
            f"test {test.shape[1]}."
        )
    if not (np.isfinite(train).all() and np.isfinite(test).all()):
        raise DataError(
            "1-NN Euclidean got NaN or infinite values (missing values or padding of "
            "variable-length series); fill or crop them first."
        )
    y_train = as_label_vector(train_y, "train_y", length=train.shape[0])
    y_test = as_label_vector(test_y, "test_y", length=test.shape[0])
    train_sq = (train**2).sum(axis=1)
    correct = 0
    for start in range(0, test.shape[0], chunk_size):
        block = test[start : start + chunk_size]
        distances = train_sq[None, :] - 2.0 * block @ train.T  # + ||block||^2, same per row
        nearest = np.argmin(distances, axis=1)
        correct += int(np.sum(y_train[nearest] == y_test[start : start + chunk_size]))
    return correct / test.shape[0]
