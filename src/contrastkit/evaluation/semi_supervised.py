"""Learning from few labels with the unlabelled rest: two semi-supervised classifiers on frozen
embeddings, beside the linear probe (``linear.py``) at the same labels.

**Label propagation on the kNN graph** (Zhou, Bousquet, Lal, Weston & Schölkopf, "Learning with
local and global consistency", NIPS 2004, on the graph of Iscen, Tolias, Avrithis & Chum, "Label
propagation for deep semi-supervised learning", CVPR 2019). With v_i = x_i / ||x_i||, labelled rows
L, c classes and |L_j| labelled rows of class j::

    A_ij = [v_i . v_j]_+ ^ gamma   if j is one of the k nearest rows of i (j != i), else 0
    W    = A + A^T,   D = diag(W 1),   S = D^(-1/2) W D^(-1/2)
    Y_ij = 1 / |L_j|   if i in L and y_i = j, else 0
    F    = (I - alpha S)^(-1) Y                      (conjugate gradient, column by column)

F minimises Zhou's cost sum_ij W_ij ||F_i / sqrt(D_ii) - F_j / sqrt(D_jj)||^2 + mu sum_i ||F_i - Y_i||^2
(alpha = 1 / (1 + mu); Zhou's F* carries a factor 1 - alpha that no argmax sees). I - alpha S is
symmetric positive definite for 0 <= alpha < 1 (S's eigenvalues lie in [-1, 1]), which is what
conjugate gradient needs. Then, as in Iscen et al.::

    z_i      = F_i / sum_j F_ij                       (the row as a class distribution)
    y_hat_i  = argmax_j F_ij,   omega_i = 1 - H(z_i) / log c     (certainty in [0, 1])

with the labelled rows keeping their own labels (z_i one-hot, omega_i = 1); a row that no labelled
row reaches (F_i = 0) gets omega_i = 0. Deviations: Y's 1 / |L_j| (Iscen's paper has 1) gives every
class the same total mass, so a class with more labels (selectors such as typicality give uneven
budgets) does not spread further; CG runs to a relative residual of ``tol`` rather than Iscen's 20
iterations. A row outside the graph (a held-out query q) is scored by one step from the graph, the
induction formula of Delalleau, Bengio & Le Roux ("Efficient non-parametric function induction in
semi-supervised learning", AISTATS 2005): score(q) = sum_{j in NN_k(q)} [v_q . v_j]_+^gamma z_j.

Iscen's recipe then trains a classifier on every row with its pseudo-label, weighted by
omega_i * zeta_{y_hat_i}, zeta_j = 1 / |{i : y_hat_i = j}| (class balance);
:func:`fit_on_pseudo_labels` does it with the linear probe's logistic regression in place of
their network (weights rescaled to mean 1, so C means what it means for the probe).

**Confidence-thresholded self-training** (:func:`self_train`): FixMatch's pseudo-labelling rule
(Sohn et al., "FixMatch: simplifying semi-supervised learning with consistency and confidence",
NeurIPS 2020: an unlabelled sample counts with its predicted class when the prediction's maximum
probability passes a threshold tau) applied to a linear head on frozen embeddings, i.e. classic
pseudo-labelling (Lee, "Pseudo-label", ICML 2013 workshop) with FixMatch's fixed threshold. This is
*not* FixMatch: FixMatch takes the pseudo-label from a weakly augmented view and trains on a
strongly augmented one, end to end through the encoder; that needs the images, their augmentations
and a training run per evaluation (GPU-hours on CIFAR-10), too costly for an evaluation on
embeddings. Without views the consistency part is gone; what remains is the decision boundary
moving away from dense unlabelled regions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import UNLABELLED, as_float32_matrix, as_label_vector, l2_normalize_rows
from contrastkit.evaluation.faiss_search import top_k_inner_product
from contrastkit.evaluation.linear import DEFAULT_C, LinearProbe, fit_linear_probe, make_probe_pipeline
from contrastkit.evaluation.splits import few_labels_per_class, stratified_split

NEIGHBOURS = 50  # k of the graph (Iscen et al.'s value on CIFAR-10)
ALPHA = 0.99  # Zhou et al.'s and Iscen et al.'s alpha
GAMMA = 3.0  # Iscen et al.'s exponent on the cosine similarity
CG_TOLERANCE = 1e-6
CG_MAX_ITER = 1000
THRESHOLD = 0.95  # FixMatch's tau
ROUNDS = 5


# ---------------------------------------------------------------- the graph and its solve


def nearest_neighbours(x: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities and indices (both (n, k)) of each row's k nearest *other* rows of the
    L2-normalised float32 matrix ``x`` (exact faiss search; k is clipped to n - 1)."""
    n = x.shape[0]
    k = min(k, n - 1)
    similarities, indices = top_k_inner_product(x, x, k + 1, batch_size)
    # Drop each row's own entry; with duplicate rows it need not come first, and if the search
    # returned k + 1 others instead, drop the farthest.
    keep = indices != np.arange(n)[:, None]
    keep[~(~keep).any(axis=1), -1] = False
    return similarities[keep].reshape(n, k), indices[keep].reshape(n, k)


def affinity_from_neighbours(similarities: np.ndarray, neighbours: np.ndarray, gamma: float = GAMMA
                             ) -> sp.csr_matrix:
    """W = A + A^T with A_ij = [s_ij]_+^gamma for the listed neighbours j of row i (n x n, sparse).

    Pass the first k columns of a wider neighbour list to build the graph of a smaller k."""
    n, k = neighbours.shape
    weights = np.maximum(similarities.astype(np.float64), 0.0) ** gamma
    a = sp.csr_matrix((weights.ravel(), (np.repeat(np.arange(n), k), neighbours.ravel())), shape=(n, n))
    w = (a + a.T).tocsr()
    w.eliminate_zeros()
    return w


def symmetric_normalize(w: sp.spmatrix) -> sp.csr_matrix:
    """S = D^(-1/2) W D^(-1/2), D = diag(W 1); a row without edges stays zero."""
    degree = np.asarray(w.sum(axis=1)).ravel()
    inverse_sqrt = np.zeros_like(degree)
    inverse_sqrt[degree > 0] = 1.0 / np.sqrt(degree[degree > 0])
    d = sp.diags(inverse_sqrt)
    return (d @ w @ d).tocsr()


def conjugate_gradient(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, tol: float = CG_TOLERANCE,
                       max_iter: int = CG_MAX_ITER) -> tuple[np.ndarray, bool]:
    """Solve A X = B for a symmetric positive definite A given as ``matvec(P) = A P`` (n x c blocks).

    Each column runs its own conjugate-gradient recursion (Hestenes & Stiefel 1952), all columns in
    one matrix product per iteration::

        x = 0, r = p = b;  repeat:  a = r.r / p.Ap;  x += a p;  r -= a Ap;  p = r + (r'.r' / r.r) p

    A column stops once ||r|| <= tol ||b|| (a zero column of B gives a zero column of X). Returns
    (X, converged): converged is False when some column was still above tolerance after
    ``max_iter`` iterations.
    """
    b = np.asarray(b, dtype=np.float64)
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = np.einsum("ij,ij->j", r, r)
    goal = (tol * np.linalg.norm(b, axis=0)) ** 2
    active = rr > goal
    for _ in range(max_iter):
        if not active.any():
            return x, True
        ap = matvec(p[:, active])
        step = rr[active] / np.einsum("ij,ij->j", p[:, active], ap)
        x[:, active] += step * p[:, active]
        r[:, active] -= step * ap
        rr_new = np.einsum("ij,ij->j", r[:, active], r[:, active])
        p[:, active] = r[:, active] + (rr_new / rr[active]) * p[:, active]
        rr[active] = rr_new
        active = rr > goal
    return x, not active.any()


def seed_matrix(labelled_index: np.ndarray, labelled_labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Y (n, c): Y_ij = 1 / |L_j| for a labelled row i of class j, else 0."""
    y = np.zeros((n, num_classes))
    counts = np.bincount(labelled_labels, minlength=num_classes)
    y[labelled_index, labelled_labels] = 1.0 / counts[labelled_labels]
    return y


def propagate(s: sp.spmatrix, y: np.ndarray, alpha: float = ALPHA, tol: float = CG_TOLERANCE,
              max_iter: int = CG_MAX_ITER) -> np.ndarray:
    """F = (I - alpha S)^(-1) Y by :func:`conjugate_gradient`; warns if it did not converge."""
    if not 0.0 <= alpha < 1.0:
        raise ConfigError(f"alpha must be in [0, 1) (I - alpha S must stay positive definite), got {alpha!r}.")
    f, converged = conjugate_gradient(lambda p: p - alpha * (s @ p), y, tol, max_iter)
    if not converged:
        warnings.warn(f"label propagation: conjugate gradient did not reach a relative residual of {tol:g} in "
                      f"{max_iter} iterations; the scores are approximate (lower alpha or raise max_iter).",
                      RuntimeWarning, stacklevel=2)
    return f


def certainty(distribution: np.ndarray) -> np.ndarray:
    """omega_i = 1 - H(z_i) / log c for rows z_i that sum to 1; an all-zero row gives 0."""
    c = distribution.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(distribution > 0, distribution * np.log(distribution), 0.0).sum(axis=1)
    omega = 1.0 - entropy / math.log(c) if c > 1 else np.ones(len(distribution))
    omega[distribution.sum(axis=1) == 0] = 0.0
    return np.clip(omega, 0.0, 1.0)


# ---------------------------------------------------------------- label propagation


@dataclass(frozen=True)
class PropagatedLabels:
    """The result of :func:`label_propagation` over the graph's rows, and its induction to new rows.

    ``scores`` is F (n, c); ``distribution`` z (rows sum to 1; one-hot for labelled rows; zero
    where no label reached); ``pseudo_labels`` y_hat; ``certainty`` omega."""

    scores: np.ndarray
    distribution: np.ndarray
    pseudo_labels: np.ndarray
    certainty: np.ndarray
    graph_embeddings: np.ndarray  # the graph's rows, L2-normalised
    k: int
    gamma: float

    def predict_scores(self, queries: Any, batch_size: int = 4096) -> np.ndarray:
        """score(q) = sum over q's k nearest graph rows j of [v_q . v_j]_+^gamma z_j, (Q, c)."""
        q = l2_normalize_rows(as_float32_matrix(queries, "queries"))
        if q.shape[1] != self.graph_embeddings.shape[1]:
            raise DataError(f"queries have dimension {q.shape[1]} but the graph's rows have dimension "
                            f"{self.graph_embeddings.shape[1]}; embed both with the same encoder.")
        k = min(self.k, self.graph_embeddings.shape[0])
        similarities, neighbours = top_k_inner_product(q, self.graph_embeddings, k, batch_size)
        weights = np.maximum(similarities.astype(np.float64), 0.0) ** self.gamma
        return np.einsum("qk,qkc->qc", weights, self.distribution[neighbours])

    def predict(self, queries: Any, batch_size: int = 4096) -> np.ndarray:
        return self.predict_scores(queries, batch_size).argmax(axis=1)


def label_propagation(embeddings: Any, labelled_index: Any, labelled_labels: Any, num_classes: int | None = None,
                      k: int = NEIGHBOURS, alpha: float = ALPHA, gamma: float = GAMMA, tol: float = CG_TOLERANCE,
                      max_iter: int = CG_MAX_ITER, neighbours: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> PropagatedLabels:
    """Propagate the labels of rows ``labelled_index`` over the kNN graph of all rows of
    ``embeddings`` (the module's formulas). Every row not labelled is unlabelled; put held-out rows
    in ``embeddings`` only for a transductive evaluation.

    ``neighbours``: (similarities, indices) of :func:`nearest_neighbours` with at least k columns,
    to reuse one search for several k.
    """
    x = l2_normalize_rows(as_float32_matrix(embeddings, "embeddings", min_rows=2))
    index, labels, num_classes = _check_labelled(labelled_index, labelled_labels, x.shape[0], num_classes)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"the graph's k must be a positive integer, got {k!r}.")
    if not gamma > 0:
        raise ConfigError(f"gamma must be > 0, got {gamma!r}.")
    k = min(int(k), x.shape[0] - 1)
    similarities, indices = neighbours if neighbours is not None else nearest_neighbours(x, k)
    if indices.shape != (x.shape[0], indices.shape[1]) or indices.shape[1] < k:
        raise DataError(f"neighbours hold {indices.shape} indices; need (n_rows={x.shape[0]}, >= k={k}).")
    s = symmetric_normalize(affinity_from_neighbours(similarities[:, :k], indices[:, :k], gamma))
    f = np.maximum(propagate(s, seed_matrix(index, labels, x.shape[0], num_classes), alpha, tol, max_iter), 0.0)
    total = f.sum(axis=1, keepdims=True)
    distribution = np.divide(f, total, out=np.zeros_like(f), where=total > 0)
    distribution[index] = np.eye(num_classes)[labels]
    pseudo_labels = f.argmax(axis=1)
    pseudo_labels[index] = labels
    return PropagatedLabels(scores=f, distribution=distribution, pseudo_labels=pseudo_labels,
                            certainty=certainty(distribution), graph_embeddings=x, k=k, gamma=float(gamma))


def pseudo_label_weights(propagated: PropagatedLabels) -> np.ndarray:
    """Iscen et al.'s sample weights omega_i * zeta_{y_hat_i}, zeta_j = 1 / |{i : y_hat_i = j}|,
    rescaled to mean 1 over the rows of non-zero weight (zero-weight rows stay 0)."""
    counts = np.bincount(propagated.pseudo_labels, minlength=propagated.scores.shape[1]).astype(np.float64)
    weights = propagated.certainty / counts[propagated.pseudo_labels]
    used = weights > 0
    if used.any():
        weights[used] *= used.sum() / weights[used].sum()
    return weights


def fit_on_pseudo_labels(embeddings: Any, propagated: PropagatedLabels, C: float = DEFAULT_C) -> LinearProbe:
    """Iscen et al.'s second step with a linear head: the probe's pipeline (standardise + logistic
    regression with inverse regularisation C) fitted on every graph row of non-zero weight with its
    pseudo-label and :func:`pseudo_label_weights`."""
    x = as_float32_matrix(embeddings, "embeddings")
    if x.shape[0] != len(propagated.pseudo_labels):
        raise DataError(f"embeddings have {x.shape[0]} rows but the propagation covered "
                        f"{len(propagated.pseudo_labels)}; pass the graph's own rows.")
    weights = pseudo_label_weights(propagated)
    used = weights > 0
    if len(np.unique(propagated.pseudo_labels[used])) < 2:
        raise DataError("the propagated pseudo-labels hold fewer than two classes; label rows of several classes.")
    pipeline = make_probe_pipeline(C).fit(x[used], propagated.pseudo_labels[used],
                                          logistic__sample_weight=weights[used])
    return LinearProbe(pipeline=pipeline, C=float(C), selected_by_cross_validation=False)


# ---------------------------------------------------------------- self-training


@dataclass(frozen=True)
class SelfTrainedProbe:
    """The head after the last round; ``pseudo_labelled`` counts the joined rows of each round."""

    probe: LinearProbe
    pseudo_labelled: tuple[int, ...]

    def predict(self, x: Any) -> np.ndarray:
        return self.probe.predict(x)


def self_train(labelled_x: Any, labelled_y: Any, unlabelled_x: Any, threshold: float = THRESHOLD,
               rounds: int = ROUNDS, unlabelled_weight: float = 1.0, seed: int = 0) -> SelfTrainedProbe:
    """Confidence-thresholded self-training of the linear probe (the module's second method).

    Round 0 is :func:`~contrastkit.evaluation.linear.fit_linear_probe` on the labelled rows (C by
    cross-validation where there are enough labels). Each of ``rounds`` further rounds takes the
    current head's probabilities p_u on every unlabelled row, keeps J = {u : max_c p_uc > tau}
    with y_u = argmax_c p_uc (recomputed each round; a row may leave J), and refits the same
    pipeline, same C, on the labelled rows (weight 1) and J (weight ``unlabelled_weight``). It stops
    early when J repeats. The test is strict (> tau) so that tau = 1 admits nothing, even where
    float64 rounds a confident softmax to exactly 1: then the result is the plain probe.
    """
    x_l = as_float32_matrix(labelled_x, "labelled_x")
    y_l = as_label_vector(labelled_y, "labelled_y", length=x_l.shape[0])
    x_u = as_float32_matrix(unlabelled_x, "unlabelled_x")
    if x_u.shape[1] != x_l.shape[1]:
        raise DataError(f"unlabelled_x has dimension {x_u.shape[1]} but labelled_x has {x_l.shape[1]}; "
                        f"embed both with the same encoder.")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"the confidence threshold must be in [0, 1], got {threshold!r}.")
    if not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise ConfigError(f"rounds must be a non-negative integer, got {rounds!r}.")
    if not unlabelled_weight > 0:
        raise ConfigError(f"unlabelled_weight must be > 0, got {unlabelled_weight!r}.")
    probe = fit_linear_probe(x_l, y_l, seed)
    joined, counts = None, []
    for _ in range(rounds):
        probabilities = probe.pipeline.predict_proba(x_u)
        confident = np.flatnonzero(probabilities.max(axis=1) > threshold)
        if joined is not None and np.array_equal(confident, joined):
            break
        joined = confident
        counts.append(len(confident))
        if not len(confident):
            break
        pseudo = probe.pipeline.classes_[probabilities[confident].argmax(axis=1)]
        x = np.concatenate([x_l, x_u[confident]])
        y = np.concatenate([y_l, pseudo])
        weight = np.concatenate([np.ones(len(y_l)), np.full(len(confident), float(unlabelled_weight))])
        pipeline = make_probe_pipeline(probe.C).fit(x, y, logistic__sample_weight=weight)
        probe = LinearProbe(pipeline=pipeline, C=probe.C,
                            selected_by_cross_validation=probe.selected_by_cross_validation)
    return SelfTrainedProbe(probe=probe, pseudo_labelled=tuple(counts))


# ---------------------------------------------------------------- the evaluation


def semi_supervised_evaluation(embeddings: Any, labels: Any, labelled: Any, unlabelled: Any, test: Any,
                               k: int = NEIGHBOURS, alpha: float = ALPHA, gamma: float = GAMMA,
                               threshold: float = THRESHOLD, rounds: int = ROUNDS, C: float = DEFAULT_C,
                               seed: int = 0) -> dict[str, Any]:
    """Top-1 on the ``test`` rows of four classifiers that know the labels of the ``labelled`` rows
    only and may use the embeddings of the ``unlabelled`` rows (index arrays, disjoint):

    ``linear_top1`` the linear probe on the labelled rows; ``label_propagation_top1`` propagation
    over the graph of labelled + unlabelled rows, test rows scored by the induction formula;
    ``label_propagation_linear_top1`` a probe (inverse regularisation ``C``) fitted on the
    propagated pseudo-labels with Iscen et al.'s weights; ``self_training_top1`` :func:`self_train`.
    The labels of the unlabelled rows are read only to report how right the pseudo-labels are
    (``pseudo_label_accuracy``, over those whose label is known); the test rows' labels only for the
    scores. An unlabelled row may have the label -1 (no label at all: it still shapes the graph and
    self-training); a labelled or test row may not.
    """
    x = as_float32_matrix(embeddings, "embeddings")
    y = as_label_vector(labels, "labels", length=x.shape[0], allow_unlabelled=True)
    labelled, unlabelled, test = (_check_rows(rows, name, x.shape[0]) for rows, name in
                                  ((labelled, "labelled"), (unlabelled, "unlabelled"), (test, "test")))
    _refuse_rows_without_label(y, labelled, "labelled")
    _refuse_rows_without_label(y, test, "test")
    for (a, name_a), (b, name_b) in (((labelled, "labelled"), (unlabelled, "unlabelled")),
                                     ((labelled, "labelled"), (test, "test")),
                                     ((unlabelled, "unlabelled"), (test, "test"))):
        if np.intersect1d(a, b).size:
            raise DataError(f"the {name_a} and {name_b} rows overlap; give disjoint index sets.")
    if not len(test):
        raise DataError("there are no test rows to score.")
    graph = np.concatenate([labelled, unlabelled])
    num_classes = int(y.max()) + 1
    propagated = label_propagation(x[graph], np.arange(len(labelled)), y[labelled], num_classes, k, alpha, gamma)
    head = fit_on_pseudo_labels(x[graph], propagated, C)
    trained = self_train(x[labelled], y[labelled], x[unlabelled], threshold, rounds, seed=seed)
    probe = fit_linear_probe(x[labelled], y[labelled], seed)
    truth = y[test]
    known = y[unlabelled] != UNLABELLED  # pseudo-labels can be checked only where the label is known
    propagated_unlabelled, known_truth = propagated.pseudo_labels[len(labelled):], y[unlabelled][known]
    return {
        "linear_top1": float(np.mean(probe.predict(x[test]) == truth)),
        "label_propagation_top1": float(np.mean(propagated.predict(x[test]) == truth)),
        "label_propagation_linear_top1": float(np.mean(head.predict(x[test]) == truth)),
        "self_training_top1": float(np.mean(trained.predict(x[test]) == truth)),
        "pseudo_label_accuracy": {
            "label_propagation": float(np.mean(propagated_unlabelled[known] == known_truth))
            if known.any() else None,
            "self_training": float(np.mean(trained.predict(x[unlabelled[known]]) == known_truth))
            if known.any() else None,
        },
        "self_training_pseudo_labelled_per_round": list(trained.pseudo_labelled),
        "linear_C": probe.C,
        "settings": {"k": propagated.k, "alpha": alpha, "gamma": gamma, "C": C, "threshold": threshold,
                     "rounds": rounds, "seed": seed},
        "n_labelled": int(len(labelled)),
        "n_unlabelled": int(len(unlabelled)),
        "n_unlabelled_without_label": int((~known).sum()),
        "n_test": int(len(test)),
    }


def few_label_split(labels: Any, labelled: Any = None, pool: Any = None, test: Any = None,
                    labels_per_class: int = 10, test_fraction: float = 0.2, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labelled, unlabelled, test) row numbers for :func:`semi_supervised_evaluation`.

    ``pool`` and ``test`` (both or neither) are the rows that may be labelled or used unlabelled and
    the rows scored, e.g. a run's training and held-out parts. Without them the test rows are a
    stratified ``test_fraction`` (``splits.stratified_split``, ``seed``) of the rows not in
    ``labelled``, and the pool is the rest. ``labelled`` rows must lie in the pool; without them,
    ``labels_per_class`` rows of each class are drawn from the pool (``splits.few_labels_per_class``).

    Rows labelled -1 have no label: they are never labelled or scored (a given test row without a
    label is left out), and those of the pool join the unlabelled rows.
    """
    y = as_label_vector(labels, "labels", allow_unlabelled=True)
    n = len(y)
    if labelled is not None:
        labelled = _check_rows(labelled, "labelled", n)
        if not len(labelled) or len(np.unique(labelled)) != len(labelled):
            raise DataError("the labelled rows must be a non-empty list of distinct row numbers.")
        _refuse_rows_without_label(y, labelled, "labelled")
    if (pool is None) != (test is None):
        raise ConfigError("give both pool and test rows, or neither (a stratified split).")
    if pool is None:
        rest = np.flatnonzero(y != UNLABELLED)  # the test rows are drawn among the rows with a label
        rest = np.setdiff1d(rest, labelled) if labelled is not None else rest
        _, held_out = stratified_split(y[rest], test_fraction, seed)
        test = rest[held_out]
        pool = np.setdiff1d(np.arange(n), test)
    pool, test = _check_rows(pool, "pool", n), _check_rows(test, "test", n)
    test = test[y[test] != UNLABELLED]
    if labelled is None:
        labelled = few_labels_per_class(y, pool, labels_per_class, seed)
    elif not np.isin(labelled, pool).all():
        raise DataError(f"labelled row {labelled[~np.isin(labelled, pool)][0]} is not in the part that may be "
                        f"labelled (for a run: its training part); the held-out rows stay unlabelled.")
    return labelled, np.setdiff1d(pool, labelled), np.sort(test)


def _check_labelled(index: Any, labels: Any, n: int, num_classes: int | None
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    index = _check_rows(index, "labelled_index", n)
    labels = as_label_vector(labels, "labelled_labels", length=len(index))
    if not len(index):
        raise DataError("label propagation needs at least one labelled row.")
    if len(np.unique(index)) != len(index):
        raise DataError("labelled_index lists a row twice; give each labelled row once.")
    needed = int(labels.max()) + 1
    if num_classes is None:
        num_classes = needed
    elif num_classes < needed:
        raise ConfigError(f"num_classes={num_classes} but the labels contain class {needed - 1}.")
    return index, labels, int(num_classes)


def _refuse_rows_without_label(y: np.ndarray, rows: np.ndarray, name: str) -> None:
    """A DataError naming the first of ``rows`` whose label is -1 (labelled and scored rows need one)."""
    if len(rows) and y[rows].min() == UNLABELLED:
        raise DataError(f"{name} row {rows[y[rows] == UNLABELLED][0]} has no label (-1); only unlabelled rows "
                        f"may lack one.")


def _check_rows(rows: Any, name: str, n: int) -> np.ndarray:
    array = np.asarray(rows, dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= n):
        raise DataError(f"{name} holds row numbers outside 0..{n - 1}; it must index the embeddings' rows.")
    return array


__all__ = ["PropagatedLabels", "SelfTrainedProbe", "affinity_from_neighbours", "certainty", "conjugate_gradient",
           "few_label_split", "fit_on_pseudo_labels", "label_propagation", "nearest_neighbours", "propagate", "pseudo_label_weights",
           "seed_matrix", "self_train", "semi_supervised_evaluation", "symmetric_normalize"]
