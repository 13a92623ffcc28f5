"""Exact top-k maximum inner product search with faiss, one batch of queries at a time.

``faiss.IndexFlatIP`` is brute force (no approximation): for each query q it returns the k corpus
rows c with the largest q . c, sorted in decreasing order. Feeding the queries in batches keeps
the working memory at O(batch_size * k) for the results, independent of the number of queries,
while faiss itself blocks the (batch_size x n_corpus) score computation internally.
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np

from contrastkit.core.errors import ConfigError


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


def iter_top_k_inner_product(
    queries: np.ndarray, corpus: np.ndarray, k: int, batch_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start, scores, indices)`` for consecutive query batches.

    ``queries`` (Q, d) and ``corpus`` (N, d) are float32 and C-contiguous; ``1 <= k <= N``.
    ``scores[i, j] = queries[start + i] . corpus[indices[i, j]]``, decreasing in j.
    """
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    for start in range(0, queries.shape[0], check_batch_size(batch_size)):
        scores, indices = index.search(queries[start : start + batch_size], k)
        yield start, scores, indices


def top_k_inner_product(
    queries: np.ndarray, corpus: np.ndarray, k: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """All batches of :func:`iter_top_k_inner_product` stacked: scores (Q, k), indices (Q, k)."""
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    for start, batch_scores, batch_indices in iter_top_k_inner_product(
        queries, corpus, k, batch_size
    ):
        scores[start : start + len(batch_scores)] = batch_scores
        indices[start : start + len(batch_indices)] = batch_indices
    return scores, indices
