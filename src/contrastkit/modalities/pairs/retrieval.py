"""Cross-modal retrieval on a pair set, in both directions, with the metrics of
:mod:`contrastkit.evaluation.retrieval` (exact faiss top-k, MRR, Recall@k).

Direction ``first -> second`` (e.g. docstring -> code, the code-search setting): every distinct
first item is a query, the distinct second items are the corpus, and a query's relevant documents
are the second items it is paired with; ``second -> first`` swaps the roles. Items are made
distinct by ``keys`` (e.g. their text): two pairs with the same docstring give one query whose two
functions are both relevant, and identical corpus entries -- which would tie -- appear once. With
no keys every row is its own item.

    MRR      = mean_q 1 / rank of the first relevant item (0 beyond the cut-off ``mrr_depth``)
    Recall@k = mean_q |top k  intersect  relevant_q| / |relevant_q|

:func:`label_retrieval` judges relevance by class instead (a spoken digit and any image of that
digit): every row of one side is a query against all rows of the other, a corpus row is relevant
when it has the query's label, and ``R@1`` is the share of queries whose first result is relevant
(with one relevant item per query, as in a pair set, this is Recall@1).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from contrastkit.core.errors import DataError
from contrastkit.evaluation.arrays import as_float32_matrix
from contrastkit.evaluation.retrieval import mrr_at_k, recall_at_k, search

RECALL_CUTOFFS = (1, 5, 10)


def distinct_items(keys: Sequence[Hashable] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(representatives, item_of_row)``: the first row of each distinct key, and for every row
    the index of its item among the representatives (rows are their own items when keys is None)."""
    if keys is None:
        return np.arange(n), np.arange(n)
    if len(keys) != n:
        raise DataError(f"retrieval keys: got {len(keys)} keys for {n} embedded rows; give one key per row.")
    item_of_key: dict[Hashable, int] = {}
    representatives: list[int] = []
    item_of_row = np.empty(n, dtype=np.int64)
    for row, key in enumerate(keys):
        if key not in item_of_key:
            item_of_key[key] = len(representatives)
            representatives.append(row)
        item_of_row[row] = item_of_key[key]
    return np.asarray(representatives, dtype=np.int64), item_of_row


def one_direction(queries: np.ndarray, corpus: np.ndarray, query_item: np.ndarray, corpus_item: np.ndarray,
                  query_rows: np.ndarray, corpus_rows: np.ndarray, mrr_depth: int = 1000,
                  cutoffs: Sequence[int] = RECALL_CUTOFFS) -> dict[str, float]:
    """Metrics of one direction. Row ``i`` of the pair set links query item ``query_item[i]`` to
    corpus item ``corpus_item[i]``; ``query_rows`` / ``corpus_rows`` pick one row per item."""
    relevant: dict[int, set[int]] = {}
    for q, c in zip(query_item.tolist(), corpus_item.tolist()):
        relevant.setdefault(q, set()).add(c)
    depth = min(max(mrr_depth, *cutoffs), len(corpus_rows))
    _, ranking = search(queries[query_rows], corpus[corpus_rows], k=depth)
    result = {"mrr": mrr_at_k(ranking, relevant, k=min(mrr_depth, depth))}
    for k in cutoffs:
        result[f"recall@{k}"] = recall_at_k(ranking, relevant, k=k)
    result["queries"] = len(query_rows)
    result["corpus"] = len(corpus_rows)
    return result


def pair_retrieval(first: Any, second: Any, first_keys: Sequence[Hashable] | None = None,
                   second_keys: Sequence[Hashable] | None = None, mrr_depth: int = 1000,
                   cutoffs: Sequence[int] = RECALL_CUTOFFS) -> dict[str, dict[str, float]]:
    """Cosine retrieval in both directions between the (N, d) embeddings of paired rows.

    Returns ``{"first_to_second": {...}, "second_to_first": {...}}``, each with ``mrr``,
    ``recall@k`` for ``k`` in ``cutoffs``, and the numbers of queries and corpus items.
    ``mrr_depth`` caps the ranking MRR looks at (the whole corpus when it is smaller).
    """
    first = as_float32_matrix(first, "first embeddings")
    second = as_float32_matrix(second, "second embeddings")
    if first.shape[0] != second.shape[0]:
        raise DataError(
            f"pair_retrieval: {first.shape[0]} first embeddings but {second.shape[0]} second "
            "embeddings; row i of each must embed the two sides of pair i."
        )
    first_rows, first_item = distinct_items(first_keys, first.shape[0])
    second_rows, second_item = distinct_items(second_keys, second.shape[0])
    return {
        "first_to_second": one_direction(first, second, first_item, second_item, first_rows, second_rows,
                                         mrr_depth, cutoffs),
        "second_to_first": one_direction(second, first, second_item, first_item, second_rows, first_rows,
                                         mrr_depth, cutoffs),
    }


def label_retrieval(first: Any, second: Any, first_labels: Sequence[Hashable],
                    second_labels: Sequence[Hashable]) -> dict[str, dict[str, float]]:
    """Cosine retrieval in both directions with relevance = the same label (module docstring):
    ``{"first_to_second": {"r@1", "mrr", "queries", "corpus"}, "second_to_first": {...}}``, MRR over
    the whole corpus. The two sides need not have the same number of rows; every label of a query
    must occur in the corpus (else that query could not find anything and is an input error)."""
    first = as_float32_matrix(first, "first embeddings")
    second = as_float32_matrix(second, "second embeddings")
    first_labels, second_labels = list(first_labels), list(second_labels)
    if len(first_labels) != first.shape[0] or len(second_labels) != second.shape[0]:
        raise DataError(f"label_retrieval: {first.shape[0]} and {second.shape[0]} embeddings but {len(first_labels)} "
                        f"and {len(second_labels)} labels; give one label per embedded row.")

    def direction(queries: np.ndarray, query_labels: list, corpus: np.ndarray, corpus_labels: list) -> dict:
        rows_of: dict[Hashable, set[int]] = {}
        for row, label in enumerate(corpus_labels):
            rows_of.setdefault(label, set()).add(row)
        missing = set(query_labels) - set(rows_of)
        if missing:
            raise DataError(f"label_retrieval: the labels {', '.join(sorted(map(repr, missing)))} of some queries "
                            "never occur on the other side, so those queries have nothing to find; give both sides "
                            "labels of one type (e.g. all int) and score only classes present on both.")
        relevant = {q: rows_of[label] for q, label in enumerate(query_labels)}
        _, ranking = search(queries, corpus, k=len(corpus))
        return {"r@1": mrr_at_k(ranking, relevant, k=1), "mrr": mrr_at_k(ranking, relevant, k=len(corpus)),
                "queries": len(queries), "corpus": len(corpus)}

    return {"first_to_second": direction(first, first_labels, second, second_labels),
            "second_to_first": direction(second, second_labels, first, first_labels)}
