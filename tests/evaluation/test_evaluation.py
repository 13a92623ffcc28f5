"""Evaluation of embeddings: each result is checked against a second derivation (scikit-learn,
brute force over permutations, numpy argsort, or numbers worked out by hand in the test)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation import clustering, linear, protocol, retrieval, splits
from contrastkit.evaluation.knn import weighted_knn_accuracy, weighted_knn_predict


def clustered(n: int, dim: int, num_classes: int, spread: float, seed: int):
    """Gaussian clusters around random centres; classes overlap for spread ~1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, size=n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


# --------------------------------------------------------------------------- weighted kNN


@pytest.mark.parametrize("k", [1, 5, 20, 60])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5])
def test_weighted_knn_matches_sklearn(k, temperature):
    bank, bank_labels = clustered(300, 16, 5, spread=1.0, seed=1)
    queries, _ = clustered(120, 16, 5, spread=1.0, seed=2)
    reference = KNeighborsClassifier(
        n_neighbors=k,
        metric="cosine",
        algorithm="brute",
        weights=lambda d: np.exp((1.0 - d) / temperature),
    ).fit(bank, bank_labels)
    ours = weighted_knn_predict(bank, bank_labels, queries, k=k, temperature=temperature)
    np.testing.assert_array_equal(ours, reference.predict(queries))


def test_knn_tiny_temperature_does_not_overflow():
    # exp(1 / 0.005) overflows float64; the shifted weights must still give sklearn's answer,
    # which for such a temperature is the label of the nearest neighbour.
    bank, bank_labels = clustered(200, 8, 4, spread=1.0, seed=3)
    queries, _ = clustered(50, 8, 4, spread=1.0, seed=4)
    nearest = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
    expected = nearest.fit(bank, bank_labels).predict(queries)
    np.testing.assert_array_equal(
        weighted_knn_predict(bank, bank_labels, queries, k=10, temperature=0.005), expected
    )


def test_knn_batch_size_does_not_change_predictions():
    bank, bank_labels = clustered(400, 12, 6, spread=1.0, seed=5)
    queries, _ = clustered(257, 12, 6, spread=1.0, seed=6)
    whole = weighted_knn_predict(bank, bank_labels, queries, k=30, batch_size=4096)
    for batch_size in (1, 7, 64):
        np.testing.assert_array_equal(
            weighted_knn_predict(bank, bank_labels, queries, k=30, batch_size=batch_size), whole
        )


def test_knn_k_larger_than_bank_is_clipped():
    bank, bank_labels = clustered(40, 8, 3, spread=1.0, seed=7)
    queries, _ = clustered(30, 8, 3, spread=1.0, seed=8)
    reference = KNeighborsClassifier(
        n_neighbors=40, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.1)
    ).fit(bank, bank_labels)
    np.testing.assert_array_equal(
        weighted_knn_predict(bank, bank_labels, queries, k=500), reference.predict(queries)
    )


def test_knn_accepts_torch_and_counts_accuracy():
    bank, bank_labels = clustered(200, 8, 4, spread=0.8, seed=9)
    queries, query_labels = clustered(80, 8, 4, spread=0.8, seed=9)  # same centres
    predictions = weighted_knn_predict(bank, bank_labels, queries, k=10)
    accuracy = weighted_knn_accuracy(
        torch.from_numpy(bank),
        torch.from_numpy(bank_labels),
        torch.from_numpy(queries),
        torch.from_numpy(query_labels),
        k=10,
    )
    assert accuracy == pytest.approx(np.count_nonzero(predictions == query_labels) / 80)


def test_knn_user_errors():
    bank, labels = clustered(20, 4, 2, spread=1.0, seed=0)
    with pytest.raises(DataError, match="dimension"):
        weighted_knn_predict(bank, labels, np.zeros((3, 5)))
    with pytest.raises(DataError, match="negative"):
        weighted_knn_predict(bank, np.full(20, -1), bank)
    with pytest.raises(DataError, match="20 rows"):
        weighted_knn_predict(bank, labels[:10], bank)
    with pytest.raises(DataError, match="class names"):  # not a TypeError from numpy
        weighted_knn_predict(bank, np.where(labels == 0, "cat", "dog"), bank)
    with pytest.raises(ConfigError, match="k"):
        weighted_knn_predict(bank, labels, bank, k=0)
    with pytest.raises(ConfigError, match="temperature"):
        weighted_knn_predict(bank, labels, bank, temperature=0.0)
    with pytest.raises(ConfigError, match="num_classes"):
        weighted_knn_predict(bank, labels, bank, num_classes=1)


# --------------------------------------------------------------------------- splits


def test_stratified_split_counts_per_class():
    labels = np.repeat([0, 1, 2, 3], [10, 25, 1, 2])
    train, test = splits.stratified_split(labels, test_fraction=0.2, seed=3)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    # round(0.2 * n) clipped to [1, n - 1]; a single-row class stays in train.
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 5, 0, 1]
    again = splits.stratified_split(labels, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(splits.stratified_split(labels, 0.2, seed=4)[1], test)


def test_few_labels_per_class_draws_only_from_candidates():
    labels = np.repeat(np.arange(5), 30)
    candidates = np.arange(0, 150, 2)  # the even rows: 15 per class
    chosen = splits.few_labels_per_class(labels, candidates, n_per_class=4, seed=1)
    assert set(chosen.tolist()) <= set(candidates.tolist())
    assert np.bincount(labels[chosen]).tolist() == [4] * 5
    everything = splits.few_labels_per_class(labels, candidates, n_per_class=100, seed=1)
    np.testing.assert_array_equal(everything, candidates)


# --------------------------------------------------------------------------- linear probe


@pytest.fixture(scope="module")
def digits_split():
    x, y = load_digits(return_X_y=True)
    train, test = splits.stratified_split(y, test_fraction=0.25, seed=0)
    return x, y, train, test


def test_linear_probe_equals_direct_sklearn_pipeline(digits_split):
    x, y, train, test = digits_split
    probe = linear.fit_linear_probe(x[train], y[train], seed=0)
    assert probe.selected_by_cross_validation
    # The C chosen by our cross-validation is the one GridSearchCV picks on the training part.
    grid = GridSearchCV(
        Pipeline(
            [("standardise", StandardScaler()), ("logistic", LogisticRegression(max_iter=1000))]
        ),
        {"logistic__C": sorted(linear.C_GRID)},
        cv=StratifiedKFold(n_splits=linear.CV_FOLDS, shuffle=True, random_state=0),
    ).fit(x[train].astype(np.float32), y[train])
    assert grid.best_params_["logistic__C"] == probe.C
    direct = Pipeline(
        [("s", StandardScaler()), ("lr", LogisticRegression(C=probe.C, max_iter=1000))]
    )
    direct.fit(x[train].astype(np.float32), y[train])
    expected = np.mean(direct.predict(x[test].astype(np.float32)) == y[test])
    assert linear.linear_probe_accuracy(x[train], y[train], x[test], y[test], seed=0) == expected
    assert expected > 0.9


def test_cross_validation_on_a_large_training_set_uses_a_stratified_subsample(digits_split, monkeypatch):
    x, y, train, _ = digits_split
    monkeypatch.setattr(linear, "CV_MAX_ROWS", 600)
    rows = linear.cross_validation_rows(y[train], seed=0, max_rows=600)
    counts, all_counts = np.bincount(y[train][rows]), np.bincount(y[train])
    assert abs(len(rows) - 600) <= 10 and len(np.unique(rows)) == len(rows)
    np.testing.assert_allclose(counts / counts.sum(), all_counts / all_counts.sum(), atol=0.01)
    # The chosen C is GridSearchCV's on exactly that subsample of the training part.
    grid = GridSearchCV(
        Pipeline([("standardise", StandardScaler()), ("logistic", LogisticRegression(max_iter=1000))]),
        {"logistic__C": sorted(linear.C_GRID)},
        cv=StratifiedKFold(n_splits=linear.CV_FOLDS, shuffle=True, random_state=0),
    ).fit(x[train][rows].astype(np.float32), y[train][rows])
    seen_rows = []
    original = linear.cross_val_score

    def spy(estimator, x_cv, y_cv, **kwargs):
        seen_rows.append(len(y_cv))
        return original(estimator, x_cv, y_cv, **kwargs)

    monkeypatch.setattr(linear, "cross_val_score", spy)
    probe = linear.fit_linear_probe(x[train], y[train], seed=0)
    assert seen_rows == [len(rows)] * len(linear.C_GRID)
    assert grid.best_params_["logistic__C"] == probe.C
    assert probe.pipeline.named_steps["standardise"].n_samples_seen_ == len(train)  # final fit: all rows


def test_linear_probe_without_enough_rows_for_cv_uses_default_c(digits_split):
    x, y, train, test = digits_split
    few = splits.few_labels_per_class(y, train, n_per_class=3, seed=0)  # 3 < 2 * 3 folds
    probe = linear.fit_linear_probe(x[few], y[few])
    assert not probe.selected_by_cross_validation and probe.C == linear.DEFAULT_C
    direct = Pipeline([("s", StandardScaler()), ("lr", LogisticRegression(C=1.0, max_iter=1000))])
    direct.fit(x[few].astype(np.float32), y[few])
    np.testing.assert_array_equal(
        probe.predict(x[test]), direct.predict(x[test].astype(np.float32))
    )


def test_linear_probe_needs_two_classes():
    with pytest.raises(DataError, match="two classes"):
        linear.linear_probe_accuracy(np.ones((10, 3)), np.zeros(10, int), np.ones((2, 3)), [0, 0])


# --------------------------------------------------------------------------- protocol


def test_protocol_few_label_probe_never_sees_test_rows(monkeypatch, digits_split):
    x, y, train, test = digits_split
    # Column 0 carries the row number, so the rows each probe receives can be identified.
    tagged = np.hstack([np.arange(len(x))[:, None], x]).astype(np.float32)
    calls = []

    def spy(train_x, train_y, test_x, test_y, seed=0):
        calls.append((train_x[:, 0].astype(int), test_x[:, 0].astype(int), np.asarray(train_y)))
        return 0.5

    monkeypatch.setattr(protocol, "linear_probe_accuracy", spy)
    result = protocol.evaluate_embeddings(
        tagged, y, few_labels_per_class=7, train_index=train, test_index=test
    )

    assert set(result) == {
        "knn_top1",
        "linear_top1",
        "linear_top1_7_per_class",
        "n_train",
        "n_test",
    }
    assert (result["n_train"], result["n_test"]) == (len(train), len(test))
    (full_train, full_test, _), (few_train, few_test, few_labels) = calls
    np.testing.assert_array_equal(full_train, train)
    np.testing.assert_array_equal(full_test, test)
    np.testing.assert_array_equal(few_test, test)
    assert set(few_train.tolist()) <= set(train.tolist())
    assert not set(few_train.tolist()) & set(test.tolist())
    assert np.bincount(few_labels).tolist() == [7] * 10
    np.testing.assert_array_equal(few_labels, y[few_train])


def test_protocol_numbers_on_digits(digits_split):
    x, y, _, _ = digits_split
    result = protocol.evaluate_embeddings(x, y, test_fraction=0.2, seed=0, k=20)
    train, test = splits.stratified_split(y, 0.2, seed=0)
    assert result["knn_top1"] == weighted_knn_accuracy(x[train], y[train], x[test], y[test], k=20)
    few = splits.few_labels_per_class(y, train, 10, seed=0)
    assert result["linear_top1_10_per_class"] == linear.linear_probe_accuracy(
        x[few], y[few], x[test], y[test]
    )
    assert 0.9 < result["knn_top1"] <= 1 and 0.9 < result["linear_top1"] <= 1
    assert 0.6 < result["linear_top1_10_per_class"] < result["linear_top1"]


def test_protocol_rejects_overlapping_or_half_given_split():
    x, y = clustered(40, 4, 2, spread=1.0, seed=0)
    with pytest.raises(DataError, match="share"):
        protocol.evaluate_embeddings(x, y, train_index=np.arange(30), test_index=np.arange(25, 40))
    with pytest.raises(ConfigError, match="both"):
        protocol.evaluate_embeddings(x, y, train_index=np.arange(30))


# --------------------------------------------------------------------------- clustering


def test_cluster_accuracy_of_a_relabelling_is_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, size=200)
    permutation = rng.permutation(6)
    assert clustering.cluster_accuracy(y, permutation[y]) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_cluster_accuracy_equals_brute_force_over_permutations(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, size=60)
    y_pred = np.where(rng.random(60) < 0.5, y_true, rng.integers(0, 4, size=60))
    y_pred = rng.permutation(4)[y_pred]
    brute = max(np.mean(np.asarray(p)[y_pred] == y_true) for p in itertools.permutations(range(4)))
    assert clustering.cluster_accuracy(y_true, y_pred) == pytest.approx(brute)


def test_kmeans_scores_on_separated_blobs():
    x, y = clustered(300, 8, 4, spread=0.05, seed=11)
    scores = clustering.kmeans_scores(x, y, seed=0)
    assert scores == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})
    merged = clustering.kmeans_scores(x, y, n_clusters=2, seed=0)
    assert merged["acc"] < 0.8


# --------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_search_matches_numpy_argsort(metric):
    rng = np.random.default_rng(0)
    queries, corpus = rng.normal(size=(37, 10)), rng.normal(size=(200, 10))
    if metric == "cosine":
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
            corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
        ).T
    else:
        scores = queries @ corpus.T
    expected = np.argsort(-scores, axis=1)[:, :15]
    found_scores, found = retrieval.search(queries, corpus, k=15, metric=metric, batch_size=8)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(
        found_scores, np.take_along_axis(scores, expected, 1), rtol=1e-5, atol=1e-5
    )
    assert retrieval.search(queries, corpus[:5], k=15, metric=metric)[1].shape == (37, 5)


def test_search_errors():
    with pytest.raises(ConfigError, match="euclid"):
        retrieval.search(np.ones((2, 3)), np.ones((4, 3)), metric="euclid")
    with pytest.raises(DataError, match="dimension"):
        retrieval.search(np.ones((2, 3)), np.ones((4, 5)))


def test_mrr_single_relevant_by_hand():
    rankings = np.array([[3, 1, 2], [0, 2, 1], [2, 0, 1]])
    relevant = np.array([1, 1, 5])
    # first relevant at rank 2, rank 3, never
    assert retrieval.mrr_at_k(rankings, relevant, k=3) == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert retrieval.mrr_at_k(rankings, relevant, k=2) == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert retrieval.recall_at_k(rankings, relevant, k=3) == pytest.approx(2 / 3)


def test_recall_and_mrr_multi_relevant_by_hand():
    rankings = {"q1": ["d1", "d2", "d3", "d4"], "q2": ["d5", "d1", "d6"]}
    relevant = {"q1": {"d2", "d4", "d9"}, "q2": {"d6"}, "q3": set()}  # q3: skipped
    assert retrieval.recall_at_k(rankings, relevant, k=2) == pytest.approx((1 / 3 + 0) / 2)
    assert retrieval.recall_at_k(rankings, relevant, k=4) == pytest.approx((2 / 3 + 1) / 2)
    assert retrieval.mrr_at_k(rankings, relevant, k=10) == pytest.approx((1 / 2 + 1 / 3) / 2)
    # a query with relevant docs but no ranking counts as 0
    relevant["q4"] = {"d1"}
    assert retrieval.recall_at_k(rankings, relevant, k=4) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_ndcg_graded_by_hand():
    rankings = {"q": ["a", "b", "c", "d"]}
    qrels = {"q": {"a": 0, "b": 2, "c": 1, "e": 3}}
    dcg = 0 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert retrieval.ndcg_at_k(rankings, qrels, k=3) == pytest.approx(dcg / idcg)
    # k = 1: the top doc 'a' is judged non-relevant
    assert retrieval.ndcg_at_k(rankings, qrels, k=1) == 0.0


def naive_ndcg(ranked: dict, qrels: dict, k: int) -> float:
    values = []
    for query, grades in qrels.items():
        positive = np.array([g for g in grades.values() if g > 0], dtype=float)
        if positive.size == 0:
            continue
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        gains = np.zeros(k)
        for position, doc in enumerate(ranked.get(query, [])[:k]):
            gains[position] = max(grades.get(doc, 0), 0)
        ideal = np.zeros(k)
        top = np.sort(positive)[::-1][:k]
        ideal[: top.size] = top
        values.append(gains @ discounts / (ideal @ discounts))
    return float(np.mean(values))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ndcg_matches_naive_on_random_graded_qrels(k):
    rng = np.random.default_rng(k)
    docs = [f"d{i}" for i in range(30)]
    ranked = {f"q{q}": list(rng.permutation(docs)[:12]) for q in range(20)}
    qrels = {
        f"q{q}": {
            d: int(rng.integers(0, 4))
            for d in rng.choice(docs, size=rng.integers(0, 8), replace=False)
        }
        for q in range(20)
    }
    assert retrieval.ndcg_at_k(ranked, qrels, k=k) == pytest.approx(naive_ndcg(ranked, qrels, k))


def test_score_dicts_and_ignore_identical_ids():
    results = {"q1": {"q1": 0.99, "d1": 0.5, "d2": 0.7}}  # BEIR form: ranked d2 before d1
    relevant = {"q1": {"d1": 1}}
    assert retrieval.mrr_at_k(results, relevant, k=3) == pytest.approx(1 / 3)
    assert retrieval.mrr_at_k(results, relevant, k=3, ignore_identical_ids=True) == pytest.approx(
        1 / 2
    )
    # self-retrieval on an array: row i's own index is dropped before the cut
    rankings = np.array([[0, 1, 2], [1, 2, 0]])
    assert retrieval.mrr_at_k(rankings, np.array([1, 0]), k=1, ignore_identical_ids=True) == 0.5


def test_metrics_without_any_relevant_query_raise():
    with pytest.raises(DataError, match="relevant"):
        retrieval.ndcg_at_k({"q": ["a"]}, {"q": {"a": 0}}, k=5)


def test_label_fractions_draw_from_the_training_part_only():
    from sklearn.datasets import load_digits

    from contrastkit.evaluation import protocol
    from contrastkit.evaluation.splits import stratified_split

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    train, test = stratified_split(y, 0.2, seed=0)
    seen = []
    original = protocol.linear_probe_accuracy

    def spy(train_x, train_y, test_x, test_y, seed=0):
        seen.append(len(train_y))
        return original(train_x, train_y, test_x, test_y, seed)

    protocol.linear_probe_accuracy = spy
    try:
        results = protocol.evaluate_with_label_fractions(x, y, fractions=(0.05, 1.0), test_fraction=0.2)
    finally:
        protocol.linear_probe_accuracy = original
    expected_small = sum(max(1, round(0.05 * c)) for c in np.bincount(y[train]))
    assert seen == [expected_small, len(train)]
    assert results["n_test"] == len(test)
    assert results["linear_top1_by_label_fraction"]["1.0"] > results["linear_top1_by_label_fraction"]["0.05"]
