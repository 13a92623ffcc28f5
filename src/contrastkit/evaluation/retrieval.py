"""Retrieval evaluation: exact top-k search over a corpus of embeddings, and the ranking metrics
of BEIR (Thakur et al. 2021) / trec_eval.

Rankings and relevance judgements can be given in three forms each:

- ``rankings``: an array (Q, k) of corpus indices as returned by :func:`search` (query ids are the
  row numbers 0..Q-1); or a mapping ``query id -> ranked sequence of doc ids``; or a BEIR-style
  mapping ``query id -> {doc id: score}`` (sorted by decreasing score, ties broken by decreasing
  doc id as trec_eval does).
- ``relevant``: an array (Q,) with the one relevant doc id of each query (query id = position);
  or a mapping ``query id -> set of relevant doc ids`` (grade 1 each); or a mapping
  ``query id -> {doc id: grade}`` (graded qrels; grade <= 0 means not relevant).

Conventions (BEIR's, which calls trec_eval through pytrec_eval):

- a query is evaluated when it has at least one doc with grade > 0; the others are skipped, and
  the metric is the mean over evaluated queries. An evaluated query missing from ``rankings``
  scores 0.
- ``ignore_identical_ids`` drops a ranked doc whose id equals the query id (e.g. when the queries
  are part of the corpus) *before* the cut at k, so search for k + 1 results in that case.
- MRR@k   = mean_q 1 / rank of the first relevant doc in the top k (0 if none).
- Recall@k = mean_q |top k  intersect  relevant_q| / |relevant_q|.
- nDCG@k  = mean_q DCG@k / IDCG@k, with DCG@k = sum_{r=1..k} g_r / log2(r + 1), gain g_r = the
  grade of the doc at rank r (linear gain, trec_eval's ndcg_cut), and IDCG@k the DCG of the
  judged grades sorted in decreasing order (the ideal ranking from the qrels).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import as_float32_matrix, l2_normalize_rows
from contrastkit.evaluation.faiss_search import top_k_inner_product

METRICS = ("cosine", "dot")


def search(
    queries: Any, corpus: Any, k: int = 10, metric: str = "cosine", batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k search: ``(scores, indices)``, both (Q, k), best first.

    ``metric="cosine"`` L2-normalises queries and corpus rows; ``"dot"`` uses the raw inner
    product. ``k`` larger than the corpus is clipped to the corpus size. Queries are searched
    ``batch_size`` at a time with faiss ``IndexFlatIP`` (exact).
    """
    if metric not in METRICS:
        raise ConfigError(
            f"Unknown retrieval metric '{metric}'. Valid metrics: {', '.join(METRICS)}."
        )
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"search k must be a positive integer, got {k!r}.")
    q = as_float32_matrix(queries, "queries")
    c = as_float32_matrix(corpus, "corpus")
    if q.shape[1] != c.shape[1]:
        raise DataError(
            f"queries have dimension {q.shape[1]} but the corpus has dimension {c.shape[1]}; "
            f"embed both into the same space."
        )
    if metric == "cosine":
        q, c = l2_normalize_rows(q), l2_normalize_rows(c)
    return top_k_inner_product(q, c, min(int(k), c.shape[0]), batch_size)


def mrr_at_k(
    rankings: Any, relevant: Any, k: int = 10, ignore_identical_ids: bool = False
) -> float:
    """Mean reciprocal rank of the first relevant doc within the top k."""

    def reciprocal_rank(ranked: list[Hashable], grades: dict[Hashable, float]) -> float:
        for rank, doc in enumerate(ranked, start=1):
            if grades.get(doc, 0.0) > 0:
                return 1.0 / rank
        return 0.0

    return _mean_over_queries(rankings, relevant, k, ignore_identical_ids, reciprocal_rank)


def recall_at_k(
    rankings: Any, relevant: Any, k: int = 100, ignore_identical_ids: bool = False
) -> float:
    """Mean fraction of each query's relevant docs found in its top k."""

    def recall(ranked: list[Hashable], grades: dict[Hashable, float]) -> float:
        relevant_docs = {doc for doc, grade in grades.items() if grade > 0}
        return len(relevant_docs.intersection(ranked)) / len(relevant_docs)

    return _mean_over_queries(rankings, relevant, k, ignore_identical_ids, recall)


def ndcg_at_k(
    rankings: Any, relevant: Any, k: int = 10, ignore_identical_ids: bool = False
) -> float:
    """Mean normalised discounted cumulative gain at k with graded relevance."""

    def ndcg(ranked: list[Hashable], grades: dict[Hashable, float]) -> float:
        dcg = sum(
            max(grades.get(doc, 0.0), 0.0) / math.log2(r + 1) for r, doc in enumerate(ranked, 1)
        )
        ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, start=1))
        return dcg / idcg

    return _mean_over_queries(rankings, relevant, k, ignore_identical_ids, ndcg)


def _mean_over_queries(rankings, relevant, k, ignore_identical_ids, per_query) -> float:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"the metric cut-off k must be a positive integer, got {k!r}.")
    ranked_lists = as_ranked_lists(rankings)
    qrels = as_graded_qrels(relevant)
    values = []
    for query, grades in qrels.items():
        if not any(grade > 0 for grade in grades.values()):
            continue  # nothing to find: skipped, as trec_eval / BEIR do
        ranked = ranked_lists.get(query, [])
        if ignore_identical_ids:
            ranked = [doc for doc in ranked if doc != query]
        values.append(per_query(ranked[:k], grades))
    if not values:
        raise DataError(
            "no query has a relevant document (grade > 0) in the relevance judgements; check that "
            "the qrels file matches the queries and uses positive grades for relevant documents."
        )
    return float(np.mean(values))


def as_ranked_lists(rankings: Any) -> dict[Hashable, list[Hashable]]:
    """Normalise any accepted form of ``rankings`` to ``{query id: [doc id, ...] best first}``."""
    if isinstance(rankings, Mapping):
        ranked = {}
        for query, docs in rankings.items():
            if isinstance(docs, Mapping):
                # trec_eval order: score descending, then doc id descending.
                docs = [
                    d
                    for d, _ in sorted(
                        docs.items(), key=lambda item: (item[1], item[0]), reverse=True
                    )
                ]
            ranked[query] = list(docs)
        return ranked
    array = np.asarray(rankings.cpu() if hasattr(rankings, "cpu") else rankings)
    if array.ndim != 2:
        raise DataError(
            f"rankings must be a (n_queries, k) array of corpus indices or a mapping from query id "
            f"to ranked doc ids, but it has shape {array.shape}."
        )
    return {query: row for query, row in enumerate(array.tolist())}


def as_graded_qrels(relevant: Any) -> dict[Hashable, dict[Hashable, float]]:
    """Normalise any accepted form of ``relevant`` to ``{query id: {doc id: grade}}``."""
    if isinstance(relevant, Mapping):
        qrels = {}
        for query, docs in relevant.items():
            if isinstance(docs, Mapping):
                qrels[query] = {doc: float(grade) for doc, grade in docs.items()}
            elif isinstance(docs, (str, bytes)) or not hasattr(docs, "__iter__"):
                qrels[query] = {docs: 1.0}  # a single relevant id
            else:
                qrels[query] = {doc: 1.0 for doc in docs}
        return qrels
    array = np.asarray(relevant.cpu() if hasattr(relevant, "cpu") else relevant)
    if array.ndim != 1:
        raise DataError(
            f"relevant must be a (n_queries,) array with the relevant corpus index of each query, "
            f"or a mapping from query id to relevant doc ids, but it has shape {array.shape}."
        )
    return {query: {doc: 1.0} for query, doc in enumerate(array.tolist())}
