"""Semi-supervised classifiers on embeddings (contrastkit.evaluation.semi_supervised), each checked
against a second derivation: label propagation against the dense closed form with numpy's inverse
on a graph built by hand, conjugate gradient against a direct solve, the induction formula and the
pseudo-label weights against loops, self-training at threshold 1 against the plain linear probe,
and the command line against the library."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.engine.run_folder import write_split
from contrastkit.evaluation.splits import few_labels_per_class
from contrastkit.evaluation.linear import fit_linear_probe, make_probe_pipeline
from contrastkit.evaluation.semi_supervised import (
    certainty,
    conjugate_gradient,
    few_label_split,
    fit_on_pseudo_labels,
    label_propagation,
    nearest_neighbours,
    pseudo_label_weights,
    self_train,
    semi_supervised_evaluation,
)


def blobs(n_per_class=15, classes=3, dim=6, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    x = np.concatenate([centres[c] + spread * rng.normal(size=(n_per_class, dim)) for c in range(classes)])
    return x.astype(np.float32), np.repeat(np.arange(classes), n_per_class)


def dense_propagation(x, labelled, labels, k, alpha, gamma, classes):
    """Zhou et al.'s closed form written out densely: the kNN graph by sorting a full cosine matrix,
    W = A + A^T, S = D^-1/2 W D^-1/2, F = inv(I - alpha S) Y."""
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosine = v.astype(np.float64) @ v.T.astype(np.float64)
    n = len(x)
    a = np.zeros((n, n))
    for i in range(n):
        others = [j for j in np.argsort(-cosine[i], kind="stable") if j != i][:k]
        for j in others:
            a[i, j] = max(cosine[i, j], 0.0) ** gamma
    w = a + a.T
    d = np.diag(1 / np.sqrt(w.sum(axis=1)))
    s = d @ w @ d
    y = np.zeros((n, classes))
    counts = np.bincount(labels, minlength=classes)
    for row, label in zip(labelled, labels):
        y[row, label] = 1 / counts[label]
    return np.linalg.inv(np.eye(n) - alpha * s) @ y


@pytest.mark.parametrize("k, alpha, gamma", [(3, 0.5, 1.0), (5, 0.99, 3.0), (8, 0.9, 2.0)])
def test_propagation_equals_the_dense_closed_form(k, alpha, gamma):
    x, y = blobs(n_per_class=8, spread=1.5, seed=1)
    labelled = np.array([0, 1, 9, 17, 20])
    expected = dense_propagation(x, labelled, y[labelled], k, alpha, gamma, 3)
    result = label_propagation(x, labelled, y[labelled], k=k, alpha=alpha, gamma=gamma, tol=1e-12)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6, atol=1e-10)
    unlabelled = np.setdiff1d(np.arange(len(x)), labelled)
    np.testing.assert_array_equal(result.pseudo_labels[unlabelled], expected[unlabelled].argmax(axis=1))
    np.testing.assert_allclose(result.distribution[unlabelled],
                               expected[unlabelled] / expected[unlabelled].sum(axis=1, keepdims=True), rtol=1e-6)


def test_conjugate_gradient_equals_the_direct_solve():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(40, 40))
    a = m @ m.T + 40 * np.eye(40)  # symmetric positive definite
    b = rng.normal(size=(40, 3))
    b[:, 1] = 0.0  # a class without labels: its column stays zero
    x, converged = conjugate_gradient(lambda p: a @ p, b, tol=1e-12, max_iter=200)
    assert converged
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8, atol=1e-12)
    assert not x[:, 1].any()


def test_conjugate_gradient_on_the_propagation_system_equals_a_sparse_direct_solve():
    x, _ = blobs(n_per_class=30, seed=2)
    similarities, neighbours = nearest_neighbours(x / np.linalg.norm(x, axis=1, keepdims=True), 6)
    from contrastkit.evaluation.semi_supervised import affinity_from_neighbours, symmetric_normalize

    s = symmetric_normalize(affinity_from_neighbours(similarities, neighbours, 3.0))
    system = (sp.identity(len(x)) - 0.99 * s).tocsc()
    b = np.random.default_rng(3).random((len(x), 3))
    solved, converged = conjugate_gradient(lambda p: system @ p, b, tol=1e-12, max_iter=2000)
    assert converged
    np.testing.assert_allclose(solved, spla.spsolve(system, b), rtol=1e-7, atol=1e-10)


def test_conjugate_gradient_that_stops_early_says_so():
    a = np.diag(np.arange(1.0, 51.0))
    _, converged = conjugate_gradient(lambda p: a @ p, np.ones((50, 1)), tol=1e-14, max_iter=3)
    assert not converged


def test_with_every_row_labelled_it_returns_the_labels():
    x, y = blobs(seed=4)
    result = label_propagation(x, np.arange(len(x)), y, k=5)
    np.testing.assert_array_equal(result.pseudo_labels, y)
    np.testing.assert_array_equal(result.certainty, np.ones(len(x)))
    # Even before the labelled rows are clamped: on well-separated classes F's argmax is the label.
    np.testing.assert_array_equal(result.scores.argmax(axis=1), y)


def test_rows_no_label_reaches_get_zero_certainty():
    x = np.array([[1, 0], [0.99, 0.1], [-1, 0], [-0.99, -0.1]], dtype=np.float32)  # two components
    result = label_propagation(x, [0], [0], num_classes=2, k=1)
    assert result.certainty[1] > 0 and result.pseudo_labels[1] == 0
    assert not result.scores[2:].any() and not result.certainty[2:].any()


def test_nearest_neighbours_leave_out_the_row_itself_even_among_duplicates():
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    _, neighbours = nearest_neighbours(x, 2)
    for row, listed in enumerate(neighbours):
        assert row not in listed and len(set(listed)) == 2


def test_induction_to_new_rows_equals_a_loop():
    x, y = blobs(seed=5)
    result = label_propagation(x, [0, 15, 30], y[[0, 15, 30]], k=4, gamma=2.0)
    queries = blobs(n_per_class=3, seed=6)[0]
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = []
    for q in queries:
        cosine = v @ (q / np.linalg.norm(q))
        nearest = np.argsort(-cosine)[:4]
        expected.append(sum(max(cosine[j], 0) ** 2 * result.distribution[j] for j in nearest))
    np.testing.assert_allclose(result.predict_scores(queries), np.array(expected), rtol=1e-5)


def test_certainty_and_pseudo_label_weights_against_the_definitions():
    np.testing.assert_allclose(certainty(np.array([[1.0, 0, 0, 0], [0.25] * 4, [0, 0, 0, 0]])), [1, 0, 0])
    x, y = blobs(seed=7)
    result = label_propagation(x, [0, 15, 30], y[[0, 15, 30]], k=5, alpha=0.9)
    raw = []
    for z, label in zip(result.distribution, result.pseudo_labels):
        entropy = -sum(p * math.log(p) for p in z if p > 0)
        raw.append((1 - entropy / math.log(3)) / np.sum(result.pseudo_labels == label))
    raw = np.array(raw)
    np.testing.assert_allclose(pseudo_label_weights(result), raw * len(raw) / raw.sum(), rtol=1e-9)


def test_the_pseudo_label_probe_is_the_weighted_probe():
    x, y = blobs(seed=8)
    result = label_propagation(x, [0, 15, 30], y[[0, 15, 30]], k=5)
    head = fit_on_pseudo_labels(x, result, C=0.5)
    by_hand = make_probe_pipeline(0.5).fit(x, result.pseudo_labels,
                                           logistic__sample_weight=pseudo_label_weights(result))
    np.testing.assert_allclose(head.pipeline[-1].coef_, by_hand[-1].coef_)


def test_self_training_at_threshold_one_is_the_plain_linear_probe():
    x, y = blobs(n_per_class=20, spread=2.0, seed=9)
    labelled = np.array([0, 1, 2, 3, 4, 5, 20, 21, 22, 23, 24, 25, 40, 41, 42, 43, 44, 45])
    unlabelled = np.setdiff1d(np.arange(len(x)), labelled)
    trained = self_train(x[labelled], y[labelled], x[unlabelled], threshold=1.0, rounds=3, seed=1)
    probe = fit_linear_probe(x[labelled], y[labelled], seed=1)
    assert trained.pseudo_labelled == (0,)
    np.testing.assert_array_equal(trained.probe.pipeline[-1].coef_, probe.pipeline[-1].coef_)
    np.testing.assert_array_equal(trained.predict(x), probe.predict(x))


def test_one_round_of_self_training_equals_the_refit_written_out():
    x, y = blobs(n_per_class=20, spread=2.0, seed=10)
    labelled = np.array([0, 1, 20, 21, 40, 41])
    unlabelled = np.setdiff1d(np.arange(len(x)), labelled)
    trained = self_train(x[labelled], y[labelled], x[unlabelled], threshold=0.6, rounds=1, unlabelled_weight=0.5)
    probe = fit_linear_probe(x[labelled], y[labelled])
    probabilities = probe.pipeline.predict_proba(x[unlabelled])
    joined = probabilities.max(axis=1) > 0.6
    by_hand = make_probe_pipeline(probe.C).fit(
        np.concatenate([x[labelled], x[unlabelled][joined]]),
        np.concatenate([y[labelled], probabilities[joined].argmax(axis=1)]),
        logistic__sample_weight=np.concatenate([np.ones(len(labelled)), np.full(joined.sum(), 0.5)]))
    assert trained.pseudo_labelled == (int(joined.sum()),) and joined.sum() > 0
    np.testing.assert_allclose(trained.probe.pipeline[-1].coef_, by_hand[-1].coef_)


def test_label_propagation_helps_where_the_classes_are_clusters():
    x, y = blobs(n_per_class=40, classes=4, dim=8, spread=1.2, seed=11)
    labelled, unlabelled, test = few_label_split(y, labels_per_class=1, test_fraction=0.3, seed=0)
    results = semi_supervised_evaluation(x, y, labelled, unlabelled, test, k=10, alpha=0.9)
    assert results["label_propagation_top1"] >= results["linear_top1"]
    assert results["label_propagation_top1"] > 0.9
    assert results["n_labelled"] == 4 and results["n_test"] + results["n_unlabelled"] + 4 == len(y)


def test_few_label_split_keeps_the_parts_apart():
    y = np.repeat(np.arange(3), 10)
    labelled, unlabelled, test = few_label_split(y, labelled=[0, 10, 20, 1], test_fraction=0.2, seed=3)
    assert set(labelled) == {0, 1, 10, 20}
    assert not set(test) & set(labelled) and not set(test) & set(unlabelled)
    assert len(labelled) + len(unlabelled) + len(test) == 30
    with pytest.raises(DataError, match="not in the part"):
        few_label_split(y, labelled=[25], pool=range(20), test=range(20, 30))
    with pytest.raises(ConfigError, match="alpha"):
        label_propagation(np.eye(3, dtype=np.float32), [0], [0], alpha=1.0)


def test_rows_without_a_label_are_unlabelled_data_never_labelled_or_scored():
    """-1 marks a row without a label. The classifiers never read an unlabelled row's label, so the
    scores with -1 there equal the scores with the true labels there; the pseudo-label check covers
    only rows whose label is known; such rows are never drawn to be labelled nor scored."""
    x, y = blobs(n_per_class=20, classes=3, seed=21)
    order = np.random.default_rng(1).permutation(len(x))
    x, y = x[order], y[order]
    pool, test = np.arange(45), np.arange(45, 60)
    missing = np.array([2, 5, 9, 17, 30, 44, 50, 58])  # six in the pool, two in the test part
    partial = y.copy()
    partial[missing] = -1
    labelled, unlabelled, kept = few_label_split(partial, pool=pool, test=test, labels_per_class=3, seed=4)
    assert not np.isin(labelled, missing).any() and not np.isin(kept, missing).any()
    assert np.array_equal(kept, np.setdiff1d(test, missing))
    assert np.isin(missing[missing < 45], unlabelled).all()  # still used, as unlabelled data
    # The draw is the draw among the pool rows that have a label.
    assert np.array_equal(labelled, few_labels_per_class(y, np.setdiff1d(pool, missing), 3, 4))
    with_missing = semi_supervised_evaluation(x, partial, labelled, unlabelled, kept, k=5, alpha=0.9)
    with_truth = semi_supervised_evaluation(x, y, labelled, unlabelled, kept, k=5, alpha=0.9)
    for key in ("linear_top1", "label_propagation_top1", "label_propagation_linear_top1", "self_training_top1"):
        assert with_missing[key] == with_truth[key]
    assert with_missing["n_unlabelled_without_label"] == 6 and with_truth["n_unlabelled_without_label"] == 0
    known = unlabelled[~np.isin(unlabelled, missing)]
    trained = self_train(x[labelled], y[labelled], x[unlabelled], 0.95, 5, seed=0)
    assert with_missing["pseudo_label_accuracy"]["self_training"] == pytest.approx(
        np.mean(trained.predict(x[known]) == y[known]))
    # The stratified split draws its test rows among the labelled rows only.
    labelled, unlabelled, test = few_label_split(partial, labels_per_class=2, test_fraction=0.25, seed=0)
    assert not np.isin(test, missing).any() and not np.isin(labelled, missing).any()
    assert np.isin(missing, unlabelled).all()
    with pytest.raises(DataError, match="has no label"):
        few_label_split(partial, labelled=[2, 3], pool=pool, test=test)
    with pytest.raises(DataError, match="test row 50 has no label"):
        semi_supervised_evaluation(x, partial, labelled, unlabelled, [50, 51])
    with pytest.raises(DataError, match="label -2"):
        few_label_split(np.where(partial == -1, -2, partial), pool=pool, test=test)


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_equals_the_library_on_a_run_folder_and_its_selected_labels(tmp_path, capsys):
    x, y = blobs(n_per_class=20, classes=3, seed=12)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "embeddings.npy", x)
    np.save(run / "labels.npy", y)
    (run / "split.json").write_text(json.dumps({"train": [0, 45], "holdout": [45, 60]}))
    (tmp_path / "chosen.txt").write_text("3\n7\n12\n30\n")
    code, out, err = run_cli(capsys, "evaluate", "--task", "semi-supervised", "--run", run, "--labelled",
                             tmp_path / "chosen.txt", "--k", 5, "--alpha", 0.9, "--threshold", 0.8)
    assert code == 0, err
    expected = semi_supervised_evaluation(x, y, [3, 7, 12, 30], np.setdiff1d(np.arange(45), [3, 7, 12, 30]),
                                          np.arange(45, 60), k=5, alpha=0.9, threshold=0.8)
    assert json.loads(out) == json.loads(json.dumps(expected))


def test_the_command_reads_a_split_of_listed_rows(tmp_path, capsys):
    """A run in its data's order (audio, tabular) lists its parts' rows; the command scores the listed
    held-out rows and labels only listed training rows, as the library does given those rows."""
    x, y = blobs(n_per_class=20, classes=3, seed=14)
    holdout = np.arange(0, 60, 4)  # every fourth row held out, the others trained
    train = np.setdiff1d(np.arange(60), holdout)
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "embeddings.npy", x)
    np.save(run / "labels.npy", y)
    write_split(run, train, holdout, held_out="every fourth row")
    assert json.loads((run / "split.json").read_text())["holdout"] == {"rows": holdout.tolist()}
    code, out, err = run_cli(capsys, "evaluate", "--task", "semi-supervised", "--run", run, "--labels-per-class", 2,
                             "--k", 5, "--seed", 1)
    assert code == 0, err
    labelled = few_labels_per_class(y, train, 2, 1)
    expected = semi_supervised_evaluation(x, y, labelled, np.setdiff1d(train, labelled), holdout, k=5, alpha=0.99,
                                          threshold=0.95, rounds=5, seed=1)
    assert json.loads(out) == json.loads(json.dumps(expected))


def test_the_command_takes_a_run_whose_labels_miss_some_rows(tmp_path, capsys):
    """An audio run whose clip names give no label for some clips writes -1 for them: the command
    scores the held-out rows that have a label and uses the others as unlabelled data."""
    x, y = blobs(n_per_class=20, classes=3, seed=15)
    partial = y.copy()
    partial[[1, 6, 40, 47, 55]] = -1
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "embeddings.npy", x)
    np.save(run / "labels.npy", partial)
    holdout = np.arange(0, 60, 4)
    train = np.setdiff1d(np.arange(60), holdout)
    write_split(run, train, holdout, held_out="every fourth row")
    code, out, err = run_cli(capsys, "evaluate", "--task", "semi-supervised", "--run", run, "--labels-per-class", 2,
                             "--k", 5)
    assert code == 0, err
    labelled = few_labels_per_class(y, np.setdiff1d(train, [1, 6, 47, 55]), 2, 0)
    expected = semi_supervised_evaluation(x, partial, labelled, np.setdiff1d(train, labelled),
                                          np.setdiff1d(holdout, [40]), k=5)
    assert json.loads(out) == json.loads(json.dumps(expected))
    assert json.loads(out)["n_test"] == 14 and json.loads(out)["n_unlabelled_without_label"] == 4


def test_the_command_refuses_held_out_labels_and_missing_inputs(tmp_path, capsys):
    x, y = blobs(n_per_class=10, seed=13)
    np.save(tmp_path / "e.npy", x)
    np.save(tmp_path / "y.npy", y)
    code, _, err = run_cli(capsys, "evaluate", "--task", "semi-supervised", "--embeddings", tmp_path / "e.npy")
    assert code == 2 and "--embeddings with --labels" in err
    code, out, err = run_cli(capsys, "evaluate", "--task", "semi-supervised", "--embeddings", tmp_path / "e.npy",
                             "--labels", tmp_path / "y.npy", "--labels-per-class", 2, "--k", 4)
    assert code == 0, err
    assert json.loads(out)["n_labelled"] == 6
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "embeddings.npy", x)
    np.save(run / "labels.npy", y)
    (tmp_path / "chosen.txt").write_text("1\n25\n")
    code, _, err = run_cli(capsys, "evaluate", "--task", "semi-supervised", "--run", run, "--labelled",
                           tmp_path / "chosen.txt")
    assert code == 2 and "no split.json" in " ".join(err.split())  # the message is wrapped to the terminal
    (run / "split.json").write_text(json.dumps({"train": [0, 20], "holdout": [20, 30]}))
    code, _, err = run_cli(capsys, "evaluate", "--task", "semi-supervised", "--run", run, "--labelled",
                           tmp_path / "chosen.txt")
    assert code == 2 and "held-out rows stay unlabelled" in " ".join(err.split())
