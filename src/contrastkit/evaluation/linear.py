"""Linear probe: how linearly separable the classes are in an embedding space.

Protocol (the usual frozen-feature evaluation, e.g. SimCLR's appendix B.5 with logistic regression
in place of SGD):

1. Standardise every feature with the mean and standard deviation of the *training* rows
   (``StandardScaler``); the test rows are transformed with those statistics.
2. Fit a multinomial L2-regularised logistic regression (scikit-learn, lbfgs solver,
   ``max_iter = 1000``, enough to converge on standardised 512-d features),
   minimising  sum_i -log softmax(W x_i + b)[y_i] + ||W||^2 / (2 C).
3. Choose C from ``C_GRID`` by stratified ``CV_FOLDS``-fold cross-validation on the training rows
   only (scaler refitted inside each fold); the largest mean validation accuracy wins, ties going
   to the smaller C (stronger regularisation). Cross-validation is used only when every class has
   at least 2 rows per validation fold (2 * CV_FOLDS rows); otherwise C = 1.0. The test labels are
   never seen before the final score. On large training sets the folds are drawn from a seeded,
   stratified subsample of at most ``CV_MAX_ROWS`` training rows: choosing among four values of C
   needs far fewer rows than the final fit, and this caps the 12 cross-validation fits' cost
   (on 8,000 CIFAR images with 3,072 raw-pixel features, from minutes to seconds).
4. Refit on all training rows with the chosen C; report top-1 accuracy on the test rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import as_float32_matrix, as_label_vector

C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
CV_FOLDS = 3
CV_MAX_ROWS = 2500
DEFAULT_C = 1.0
MAX_ITER = 1000


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: the scaler + logistic-regression pipeline and how its C was chosen."""

    pipeline: Pipeline
    C: float
    selected_by_cross_validation: bool

    def predict(self, x: Any) -> np.ndarray:
        return self.pipeline.predict(as_float32_matrix(x, "x"))


def make_probe_pipeline(C: float) -> Pipeline:
    """StandardScaler followed by lbfgs logistic regression with inverse regularisation C."""
    return Pipeline(
        [
            ("standardise", StandardScaler()),
            ("logistic", LogisticRegression(C=C, solver="lbfgs", max_iter=MAX_ITER)),
        ]
    )


def can_cross_validate(labels: np.ndarray, folds: int = CV_FOLDS) -> bool:
    """True when every class has at least 2 rows in each of ``folds`` validation folds."""
    return int(np.bincount(labels)[np.unique(labels)].min()) >= 2 * folds


def cross_validate_c(
    x: np.ndarray, y: np.ndarray, seed: int = 0, c_grid: tuple[float, ...] = C_GRID
) -> float:
    """The C of ``c_grid`` with the best mean stratified-CV accuracy on (x, y); ties: smaller C."""
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    rows = cross_validation_rows(y, seed, CV_MAX_ROWS)
    x, y = x[rows], y[rows]
    best_c, best_score = None, -np.inf
    for c in sorted(c_grid):
        score = cross_val_score(make_probe_pipeline(c), x, y, cv=folds, scoring="accuracy").mean()
        if score > best_score:
            best_c, best_score = c, score
    return float(best_c)


def cross_validation_rows(y: np.ndarray, seed: int, max_rows: int) -> np.ndarray:
    """All rows when there are at most ``max_rows``; else a seeded subsample of ``max_rows`` rows
    with each class's share kept (at least ``2 * CV_FOLDS`` rows per class where it has them)."""
    if len(y) <= max_rows:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        take = min(len(rows), max(2 * CV_FOLDS, round(max_rows * len(rows) / len(y))))
        chosen.append(rng.choice(rows, size=take, replace=False))
    return np.sort(np.concatenate(chosen))


def fit_linear_probe(
    train_x: Any, train_y: Any, seed: int = 0, c_grid: tuple[float, ...] = C_GRID
) -> LinearProbe:
    """Fit the probe of the module protocol on the training rows only."""
    x = as_float32_matrix(train_x, "train_x")
    y = as_label_vector(train_y, "train_y", length=x.shape[0])
    if len(np.unique(y)) < 2:
        raise DataError(
            f"the linear probe needs at least two classes in train_y, but all {len(y)} training "
            f"rows have label {y[0] if len(y) else None}. Use a labelled set with several classes."
        )
    if not c_grid:
        raise ConfigError("c_grid must hold at least one value of C (e.g. (1.0,)).")
    use_cv = len(c_grid) > 1 and can_cross_validate(y)
    if use_cv:
        c = cross_validate_c(x, y, seed, c_grid)
    else:  # a single candidate, or too few rows per class for the folds
        c = c_grid[0] if len(c_grid) == 1 else DEFAULT_C
    pipeline = make_probe_pipeline(c).fit(x, y)
    return LinearProbe(pipeline=pipeline, C=float(c), selected_by_cross_validation=use_cv)


def linear_probe_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    seed: int = 0,
    c_grid: tuple[float, ...] = C_GRID,
) -> float:
    """Top-1 accuracy in [0, 1] on (test_x, test_y) of a probe fitted on (train_x, train_y)."""
    probe = fit_linear_probe(train_x, train_y, seed, c_grid)
    x_test = as_float32_matrix(test_x, "test_x")
    y_test = as_label_vector(test_y, "test_y", length=x_test.shape[0])
    if x_test.shape[1] != probe.pipeline.n_features_in_:
        raise DataError(
            f"test_x has dimension {x_test.shape[1]} but train_x has dimension "
            f"{probe.pipeline.n_features_in_}; embed both with the same encoder."
        )
    return float(np.mean(probe.pipeline.predict(x_test) == y_test))
