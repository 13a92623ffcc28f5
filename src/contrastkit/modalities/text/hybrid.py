"""Hybrid retrieval: a dense encoder's cosine and BM25, fused per query.

For a query q, with c_j = cos(f(q), f(d_j)) over the whole corpus and b_j the BM25 score of
document j (0 where BM25 finds none of q's words), both are min-max normalised over the corpus
and mixed with the dense weight w::

    s_j = w * (c_j - min c) / (max c - min c) + (1 - w) * (b_j - min b) / (max b - min b)

and documents are ranked by s (a constant score list normalises to 0). This is the convex
combination of Bruch, Gai & Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval",
ACM TOIS 2023 (https://arxiv.org/abs/2210.11934), who find it better than reciprocal-rank fusion
once w is set on a few queries. Needs no training and no labels at all: on a domain where a
general encoder trails BM25 (SciFact: 64.6 vs 68.6 nDCG@10) the two make different mistakes, and
the fusion beats both (docs/benchmarks.md). Set w on development queries, never on test ones.

Scores are exact over the whole corpus (a dense Q x N matrix), so this suits corpora of up to a
few hundred thousand documents per query batch; the corpus embeddings go through the same cache
as :func:`contrastkit.modalities.text.evaluation.evaluate_retrieval`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.bm25 import K1, B, BM25Index
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import (
    DOCUMENT_SEPARATOR,
    encode_corpus,
    encode_texts,
    ranked_doc_ids,
    retrieval_metrics,
    search_depth,
)
from contrastkit.modalities.text.query_tower import document_tower
from contrastkit.modalities.text.sources import RetrievalSet


def min_max_rows(scores: np.ndarray) -> np.ndarray:
    """Each row mapped to [0, 1] by (x - min) / (max - min); constant rows become 0."""
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 0.0)


def check_dense_weight(weight: float) -> float:
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"The hybrid's dense weight must be in [0, 1] (1: dense only, 0: BM25 only), got {weight}.")
    return float(weight)


def fuse_scores(dense: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """``s = w * minmax(dense) + (1 - w) * minmax(lexical)``, row by row (module docstring)."""
    check_dense_weight(weight)
    if dense.shape != lexical.shape:
        raise DataError(f"Dense scores {dense.shape} and BM25 scores {lexical.shape} must have one shape.")
    return weight * min_max_rows(dense.astype(np.float64)) + (1.0 - weight) * min_max_rows(lexical.astype(np.float64))


def bm25_score_matrix(documents: Sequence[str], queries: Sequence[str], k1: float = K1, b: float = B) -> np.ndarray:
    """(Q, N) BM25 scores of every document (0 where a document shares no word with the query)."""
    return BM25Index(documents, k1, b).scores(queries)


def hybrid_scores(encoder: TextEncoder, retrieval_set: RetrievalSet,
                  cache_dir: str | os.PathLike | bool | None = None, precision: str = "fp32",
                  batch_size: int = 64, document_encoder: TextEncoder | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(dense, lexical)``: the (Q, N) cosine and BM25 scores of every query against every
    document. Computed once, they serve every dense weight (:func:`fused_metrics`).
    ``document_encoder`` embeds the documents of a two-tower model (default: ``encoder`` without its term
    residual, which belongs to the query side: :func:`~contrastkit.modalities.text.query_tower.document_tower`)."""
    # A term residual belongs to the query side (contrastkit.modalities.text.query_tower).
    corpus = encode_corpus(document_encoder or document_tower(encoder), retrieval_set, cache_dir, batch_size, precision)
    queries = encode_texts(encoder, retrieval_set.queries, batch_size, precision)
    norms = np.linalg.norm(queries, axis=1, keepdims=True) * np.linalg.norm(corpus, axis=1)[None, :]
    dense = (queries @ corpus.T) / np.maximum(norms, 1e-12)
    lexical = bm25_score_matrix(retrieval_set.documents(DOCUMENT_SEPARATOR), retrieval_set.queries)
    return dense, lexical


def rank_fused(dense: np.ndarray, lexical: np.ndarray, dense_weight: float, depth: int) -> np.ndarray:
    """(Q, depth) corpus row indices of each query's best fused scores, best first (ties: corpus order)."""
    fused = fuse_scores(dense, lexical, dense_weight)
    return np.argsort(-fused, axis=1, kind="stable")[:, :min(depth, fused.shape[1])]


def fused_metrics(retrieval_set: RetrievalSet, dense: np.ndarray, lexical: np.ndarray, dense_weight: float,
                  k_values: Sequence[int] = (10, 100), ignore_identical_ids: bool = True) -> dict[str, float]:
    """The metrics of :func:`~contrastkit.modalities.text.evaluation.evaluate_retrieval` for the ranking
    fused from :func:`hybrid_scores`' matrices with ``dense_weight``."""
    if not retrieval_set.queries:
        raise DataError("The retrieval set has no queries (none of them has qrels in this split).")
    top = rank_fused(dense, lexical, dense_weight, search_depth(k_values, ignore_identical_ids))
    metrics = retrieval_metrics(ranked_doc_ids(top, retrieval_set), retrieval_set.qrels, k_values,
                                ignore_identical_ids)
    return {**metrics, "queries": len(retrieval_set.query_ids), "documents": len(retrieval_set.doc_ids),
            "dense_weight": dense_weight}


def hybrid_search(encoder: TextEncoder, retrieval_set: RetrievalSet, dense_weight: float, depth: int,
                  cache_dir: str | os.PathLike | bool | None = None, precision: str = "fp32",
                  batch_size: int = 64) -> np.ndarray:
    """:func:`rank_fused` of the encoder's and BM25's scores on ``retrieval_set``."""
    check_dense_weight(dense_weight)
    return rank_fused(*hybrid_scores(encoder, retrieval_set, cache_dir, precision, batch_size), dense_weight, depth)


def evaluate_hybrid(encoder: TextEncoder, retrieval_set: RetrievalSet, dense_weight: float,
                    k_values: Sequence[int] = (10, 100), ignore_identical_ids: bool = True,
                    cache_dir: str | os.PathLike | bool | None = None, precision: str = "fp32",
                    batch_size: int = 64, document_encoder: TextEncoder | None = None) -> dict[str, float]:
    """:func:`fused_metrics` of the encoder's and BM25's scores on ``retrieval_set``."""
    check_dense_weight(dense_weight)
    if not retrieval_set.queries:
        raise DataError("The retrieval set has no queries (none of them has qrels in this split).")
    dense, lexical = hybrid_scores(encoder, retrieval_set, cache_dir, precision, batch_size, document_encoder)
    return fused_metrics(retrieval_set, dense, lexical, dense_weight, k_values, ignore_identical_ids)
