"""BM25 (Robertson & Zaragoza 2009), the lexical baseline of BEIR, with the ``bm25s`` package.

For a query q and document d,

    score(q, d) = sum_{t in q} idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

with Lucene's ``idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))`` (``method="lucene"``, what
Elasticsearch and Pyserini compute; Lucene drops Robertson's constant factor (k1 + 1), which does
not change the ranking). |d| counts a document's words after stopword removal; avgdl is its mean. Texts are lower-cased, split into words of two or more word
characters, English stopwords are removed and words are reduced by the Snowball English stemmer
(PyStemmer). Documents are indexed as title + " " + text, as BEIR's dense models see them, and the
same metrics as for dense retrieval are computed (:func:`contrastkit.modalities.text.evaluation.retrieval_metrics`).

bm25s (Lù, "BM25S: Orders of magnitude faster lexical search via eager sparse scoring", 2024)
precomputes every document's score for every vocabulary word in a sparse matrix, so retrieval is a
sparse row sum; its Lucene variant matches Elasticsearch's scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.evaluation import (
    DOCUMENT_SEPARATOR,
    ranked_doc_ids,
    retrieval_metrics,
    search_depth,
)
from contrastkit.modalities.text.sources import RetrievalSet

# bm25s' defaults. On SciFact test (stemmed, stopwords removed) they give nDCG@10 68.6; Anserini's
# k1 = 1.2 gives 67.9 and Pyserini's BEIR setting k1 = 0.9, b = 0.4 gives 67.6 (measured here).
K1 = 1.5
B = 0.75


def _bm25s():
    try:
        import bm25s
        import Stemmer
    except ImportError as error:
        raise ConfigError(
            "The BM25 baseline needs the packages 'bm25s' and 'PyStemmer' (pip install bm25s "
            "PyStemmer, or pip install 'contrastkit[text]')."
        ) from error
    return bm25s, Stemmer


class BM25Index:
    """A BM25 index of ``documents`` (bm25s, Lucene scoring; the module docstring's tokenisation).

    Built once, it serves both top-k search (:meth:`search`) and every document's score for a few
    queries (:meth:`scores`, what a hybrid or a distillation teacher needs).
    """

    def __init__(self, documents: Sequence[str], k1: float = K1, b: float = B, stem: bool = True):
        if not documents:
            raise DataError("BM25 needs at least one document to index.")
        bm25s, Stemmer = _bm25s()
        self._bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english") if stem else None
        self.documents = len(documents)
        corpus_tokens = bm25s.tokenize(list(documents), stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.index = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.index.index(corpus_tokens, show_progress=False)

    def _query_tokens(self, queries: Sequence[str]) -> list[list[str]]:
        # Queries as token strings: bm25s maps them onto the corpus vocabulary (unknown words score 0).
        return self._bm25s.tokenize(list(queries), stopwords="en", stemmer=self.stemmer,
                                    return_ids=False, show_progress=False)

    def search(self, queries: Sequence[str], k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, indices)``, both (Q, min(k, N)), best first."""
        if k < 1:
            raise ConfigError(f"k must be a positive integer, got {k}.")
        indices, scores = self.index.retrieve(self._query_tokens(queries), k=min(k, self.documents),
                                              show_progress=False, n_threads=1)
        return np.asarray(scores), np.asarray(indices, dtype=np.int64)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(Q, N) float64: every document's score for each query (0 where it has none of its words)."""
        rows = np.zeros((len(queries), self.documents))
        for row, tokens in zip(rows, self._query_tokens(queries)):
            if tokens:  # a query of stopwords only has no tokens (and bm25s cannot score an empty list)
                row[:] = self.index.get_scores(tokens)
        return rows


def bm25_search(documents: Sequence[str], queries: Sequence[str], k: int = 100, k1: float = K1,
                b: float = B, stem: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, indices)``, both (Q, min(k, N)), best first: BM25 top-k of each query."""
    return BM25Index(documents, k1, b, stem).search(queries, k)


def evaluate_bm25(retrieval_set: RetrievalSet, k_values: Sequence[int] = (10, 100),
                  ignore_identical_ids: bool = True, k1: float = K1, b: float = B,
                  stem: bool = True) -> dict[str, float]:
    """The BM25 baseline on a retrieval set: the metrics dict of
    :func:`contrastkit.modalities.text.evaluation.evaluate_retrieval` (same keys, same conventions)."""
    if not retrieval_set.queries:
        raise DataError("The retrieval set has no queries (none of them has qrels in this split).")
    depth = search_depth(k_values, ignore_identical_ids)
    _, indices = bm25_search(retrieval_set.documents(DOCUMENT_SEPARATOR), retrieval_set.queries,
                             k=depth, k1=k1, b=b, stem=stem)
    rankings = ranked_doc_ids(indices, retrieval_set)
    metrics = retrieval_metrics(rankings, retrieval_set.qrels, k_values, ignore_identical_ids)
    return {**metrics, "queries": len(retrieval_set.query_ids), "documents": len(retrieval_set.doc_ids)}
