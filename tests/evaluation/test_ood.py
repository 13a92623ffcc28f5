"""Out-of-distribution scores on embeddings (contrastkit.evaluation.anomaly): Mahalanobis against
its closed form with numpy's inverse, the Ledoit-Wolf covariance against scikit-learn's, the kNN
score against a naive loop, and the AUROCs against sklearn's roc_auc_score."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.anomaly import (
    knn_distance_scores,
    mahalanobis_scores,
    ood_evaluation,
    shrunk_covariance,
)


def gaussian_sets(seed: int = 0, dim: int = 6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 2
    labels = rng.integers(0, 3, size=120)
    reference = centres[labels] + rng.normal(size=(120, dim))
    inside = centres[rng.integers(0, 3, size=40)] + rng.normal(size=(40, dim))
    outside = rng.normal(size=(30, dim)) * 3 + 4
    return reference, labels, inside, outside


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("use_labels", [False, True])
@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_mahalanobis_equals_the_closed_form(use_labels, shrinkage):
    reference, labels, inside, _ = gaussian_sets()
    r, z = unit(reference), unit(inside)
    groups = labels if use_labels else np.zeros(len(r), dtype=int)
    means = {c: r[groups == c].mean(axis=0) for c in np.unique(groups)}
    centred = np.concatenate([r[groups == c] - means[c] for c in np.unique(groups)])
    covariance = centred.T @ centred / len(r)
    covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / r.shape[1] * np.eye(r.shape[1])
    precision = np.linalg.inv(covariance)
    expected = [min((x - m) @ precision @ (x - m) for m in means.values()) for x in z]
    scores = mahalanobis_scores(reference, inside, labels=labels if use_labels else None, shrinkage=shrinkage)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_ledoit_wolf_shrinkage_matches_scikit_learn():
    reference, _, _, _ = gaussian_sets(1)
    centred = reference - reference.mean(axis=0)
    expected = LedoitWolf(assume_centered=True).fit(centred).covariance_
    np.testing.assert_allclose(shrunk_covariance(centred, "ledoit-wolf"), expected, rtol=1e-10)


def test_mahalanobis_without_normalisation_is_the_raw_distance():
    reference, _, inside, _ = gaussian_sets(2)
    mean = reference.mean(axis=0)
    precision = np.linalg.inv((reference - mean).T @ (reference - mean) / len(reference))
    expected = [(x - mean) @ precision @ (x - mean) for x in inside]
    np.testing.assert_allclose(mahalanobis_scores(reference, inside, shrinkage=0.0, normalize=False),
                               expected, rtol=1e-4)


@pytest.mark.parametrize("normalize", [True, False])
def test_knn_score_equals_a_naive_loop(normalize):
    reference, _, inside, _ = gaussian_sets(3)
    k = 4
    r, z = (unit(reference), unit(inside)) if normalize else (reference, inside)
    expected = [sorted(np.linalg.norm(x - y) for y in r)[k - 1] for x in z]
    np.testing.assert_allclose(knn_distance_scores(reference, inside, k=k, normalize=normalize),
                               expected, rtol=1e-4, atol=1e-5)


def test_ood_evaluation_aurocs_equal_scikit_learns():
    reference, labels, inside, outside = gaussian_sets(4)
    results = ood_evaluation(reference, inside, outside, reference_labels=labels, k=3, shrinkage=0.1)
    truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    test = np.concatenate([inside, outside])
    assert results["auroc_knn"] == pytest.approx(roc_auc_score(truth, knn_distance_scores(reference, test, 3)))
    assert results["auroc_mahalanobis"] == pytest.approx(
        roc_auc_score(truth, mahalanobis_scores(reference, test, shrinkage=0.1)))
    assert results["auroc_mahalanobis_class_conditional"] == pytest.approx(
        roc_auc_score(truth, mahalanobis_scores(reference, test, labels, shrinkage=0.1)))
    # and the AUROC as its definition, P(score(out) > score(in)) + P(equal) / 2, over all pairs
    knn = knn_distance_scores(reference, test, 3)
    pairs = [(o > i) + 0.5 * (o == i) for o in knn[len(inside):] for i in knn[:len(inside)]]
    assert results["auroc_knn"] == pytest.approx(np.mean(pairs))
    assert results["auroc_knn"] > 0.9  # the outside set is far from every class
    assert (results["n_reference"], results["n_in"], results["n_out"]) == (120, 40, 30)


def test_bad_inputs_are_refused():
    reference, _, inside, _ = gaussian_sets(5)
    with pytest.raises(ConfigError, match="k must be"):
        knn_distance_scores(reference, inside, k=0)
    with pytest.raises(ConfigError, match="shrinkage"):
        mahalanobis_scores(reference, inside, shrinkage=1.5)
    with pytest.raises(DataError, match="dimension"):
        mahalanobis_scores(reference, inside[:, :3])
