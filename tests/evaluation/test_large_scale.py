"""Large-scale kNN with faiss: the exact index equals numpy brute force, chunked and memory-mapped
inputs change nothing, and approximate indexes are scored by their recall against the exact one."""

from __future__ import annotations

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.knn import weighted_knn_accuracy
from contrastkit.evaluation.large_scale import (
    IndexOptions,
    build_index,
    knn_accuracy,
    recall_against_exact,
    search,
)


def _clustered(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + 0.8 * rng.normal(size=(n, dim))).astype(np.float32), labels


def test_exact_search_equals_numpy_brute_force(tmp_path):
    bank, _ = _clustered(3000, 32, 10, seed=0)
    queries, _ = _clustered(257, 32, 10, seed=1)
    k = 15
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    similarities = unit_queries.astype(np.float64) @ unit.T.astype(np.float64)
    expected_ids = np.argsort(-similarities, axis=1)[:, :k]

    np.save(tmp_path / "bank.npy", bank)  # a memory-mapped bank, added in chunks of 500 rows
    index = build_index(np.load(tmp_path / "bank.npy", mmap_mode="r"), chunk_size=500)
    scores, ids = search(index, queries, k, batch_size=50)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(similarities, expected_ids, axis=1), atol=1e-5)


def test_exact_knn_accuracy_equals_the_in_memory_knn():
    bank, bank_labels = _clustered(2000, 16, 5, seed=2)
    queries, query_labels = _clustered(400, 16, 5, seed=3)
    expected = weighted_knn_accuracy(bank, bank_labels, queries, query_labels, k=20, temperature=0.1)
    assert knn_accuracy(bank, bank_labels, queries, query_labels, k=20, temperature=0.1, batch_size=64) == expected


def test_ivf_scanning_every_list_is_exact_and_fewer_lists_trade_recall():
    bank, _ = _clustered(5000, 32, 20, seed=4)
    queries, _ = _clustered(300, 32, 20, seed=5)
    k = 10
    _, exact = search(build_index(bank), queries, k)
    _, everything = search(build_index(bank, IndexOptions(kind="ivf", nlist=50, nprobe=50)), queries, k)
    assert recall_against_exact(everything, exact) == 1.0
    _, few = search(build_index(bank, IndexOptions(kind="ivf", nlist=50, nprobe=2)), queries, k)
    recall = recall_against_exact(few, exact)
    print(f"IVF nlist=50 nprobe=2: recall@{k} = {recall:.3f}")
    assert 0.2 < recall < 1.0


def test_hnsw_recall_is_high():
    bank, _ = _clustered(5000, 32, 20, seed=6)
    queries, _ = _clustered(300, 32, 20, seed=7)
    _, exact = search(build_index(bank), queries, 10)
    _, approximate = search(build_index(bank, IndexOptions(kind="hnsw", hnsw_m=16, ef_search=128)), queries, 10)
    recall = recall_against_exact(approximate, exact)
    print(f"HNSW M=16 ef_search=128: recall@10 = {recall:.3f}")
    assert recall > 0.9


def test_recall_counts_the_shared_ids():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approximate = np.array([[3, 2, 9], [-1, -1, 4]])  # -1: an approximate index found too few
    assert recall_against_exact(approximate, exact) == pytest.approx((2 + 1) / 6)


def test_mistakes_are_reported():
    bank, _ = _clustered(100, 8, 2, seed=8)
    with pytest.raises(ConfigError, match="index kind"):
        build_index(bank, IndexOptions(kind="lsh"))
    with pytest.raises(ConfigError, match="k must be"):
        search(build_index(bank), bank, 101)
