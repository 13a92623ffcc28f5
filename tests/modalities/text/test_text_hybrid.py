"""Hybrid retrieval: the fusion against hand values and a naive loop; its two ends against the dense
evaluation (faiss) and the BM25 baseline, which compute their rankings separately."""

from __future__ import annotations

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.bm25 import bm25_search
from contrastkit.modalities.text.evaluation import evaluate_retrieval
from contrastkit.modalities.text.hybrid import (
    evaluate_hybrid,
    fuse_scores,
    hybrid_search,
    min_max_rows,
)
from tests.conftest import requires_minilm, requires_transformers
from tests.modalities.text.test_text_evaluation import tiny_encoder, tiny_retrieval_set  # noqa: F401  (fixture)


def test_min_max_rows_by_hand():
    scores = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0], [-1.0, 0.0, 1.0]])
    np.testing.assert_allclose(min_max_rows(scores), [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.5, 1.0]])


def test_fusion_against_a_naive_loop():
    rng = np.random.default_rng(0)
    dense, lexical = rng.normal(size=(4, 7)), np.abs(rng.normal(size=(4, 7)))
    lexical[2] = 0.0  # a query BM25 finds nothing for
    fused = fuse_scores(dense, lexical, 0.3)
    for q in range(4):
        for j in range(7):
            d = (dense[q, j] - dense[q].min()) / (dense[q].max() - dense[q].min())
            span = lexical[q].max() - lexical[q].min()
            b = 0.0 if span == 0 else (lexical[q, j] - lexical[q].min()) / span
            assert fused[q, j] == pytest.approx(0.3 * d + 0.7 * b)
    with pytest.raises(ConfigError, match="dense weight"):
        fuse_scores(dense, lexical, 1.5)


@requires_transformers
@requires_minilm
def test_hybrid_ends_rank_as_dense_search_and_bm25(tiny_encoder):  # noqa: F811
    retrieval_set = tiny_retrieval_set()
    n = len(retrieval_set.doc_ids)
    # w = 1: the dense ranking, and the dense evaluation's metrics (faiss, computed separately).
    dense_only = evaluate_hybrid(tiny_encoder, retrieval_set, 1.0, k_values=(3, 10), cache_dir=False)
    reference = evaluate_retrieval(tiny_encoder, retrieval_set, k_values=(3, 10), cache_dir=False)
    for key in ("ndcg@3", "ndcg@10", "recall@10", "mrr@10"):
        assert dense_only[key] == pytest.approx(reference[key], abs=1e-9), key
    # w = 0: every document BM25 scores above 0 comes first, in BM25's order (the rest tie at 0,
    # in an order neither side defines).
    top = hybrid_search(tiny_encoder, retrieval_set, 0.0, n, cache_dir=False)
    scores, indices = bm25_search(retrieval_set.documents(), retrieval_set.queries, k=n)
    for q in range(len(retrieval_set.queries)):
        hits = indices[q][scores[q] > 0].tolist()
        assert top[q][: len(hits)].tolist() == hits


@requires_transformers
@requires_minilm
def test_hybrid_between_the_ends_differs_from_both(tiny_encoder):  # noqa: F811
    retrieval_set = tiny_retrieval_set()
    ends = [evaluate_hybrid(tiny_encoder, retrieval_set, w, k_values=(3,), cache_dir=False)["ndcg@3"] for w in (0, 1)]
    middle = evaluate_hybrid(tiny_encoder, retrieval_set, 0.5, k_values=(3,), cache_dir=False)
    assert middle["dense_weight"] == 0.5 and 0.0 <= middle["ndcg@3"] <= 1.0
    assert len(set(ends)) == 2  # the random encoder and BM25 disagree on this set, so the test can tell them apart
