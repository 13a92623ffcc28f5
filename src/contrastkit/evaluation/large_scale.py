"""Nearest-neighbour search and kNN classification over millions of embeddings, in bounded memory.

The corpus (``bank``) may be a memory-mapped ``.npy`` (``np.load(path, mmap_mode="r")``): it is
copied into the faiss index ``chunk_size`` rows at a time (normalised on the way when cosine
similarity is asked for), and queries are searched ``batch_size`` rows at a time, so the working
memory is the index itself (4·N·d bytes for the exact and IVF-Flat indexes; HNSW adds its graph,
about 8·M·N bytes) plus one chunk and one query batch.

Indexes (all maximise the inner product s(q, b) = q · b, the cosine when rows are normalised):

- ``exact``: ``faiss.IndexFlatIP``, brute force — the reference for correctness.
- ``ivf``: ``faiss.IndexIVFFlat`` (Jégou, Douze & Schmid, "Product quantization for nearest
  neighbor search", TPAMI 2011): k-means with ``nlist`` centroids partitions the bank; a query
  scans only the ``nprobe`` lists whose centroids score highest. Recall grows with nprobe/nlist.
- ``hnsw``: ``faiss.IndexHNSWFlat`` (Malkov & Yashunin, "Efficient and robust approximate
  nearest neighbor search using Hierarchical Navigable Small World graphs", TPAMI 2018) with
  ``M`` links per node and a beam of ``ef_search`` candidates at query time.

Approximate results are judged by their recall against the exact ones,

    recall@k = mean over queries q of |A_k(q) ∩ E_k(q)| / k,

with A_k and E_k the approximate and exact top-k id sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.knn import class_scores

INDEX_KINDS = ("exact", "ivf", "hnsw")
CHUNK_SIZE = 65_536
TRAINING_POINTS_PER_LIST = 64  # faiss warns below 39 points per centroid


@dataclass(frozen=True)
class IndexOptions:
    """``kind``: exact, ivf or hnsw. IVF: ``nlist`` lists (default ~4·sqrt(N)), ``nprobe`` scanned
    per query. HNSW: ``hnsw_m`` links per node, ``ef_construction`` and ``ef_search`` beam widths."""

    kind: str = "exact"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    seed: int = 0


def _float32_rows(rows: np.ndarray, normalize: bool) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if normalize:
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return rows


def _check_matrix(array: np.ndarray, name: str, dim: int | None = None) -> None:
    if array.ndim != 2 or len(array) == 0 or (dim is not None and array.shape[1] != dim):
        expected = f"(n, {dim})" if dim is not None else "(n, d) with n >= 1"
        raise DataError(f"{name} must be a matrix of shape {expected}, got shape {array.shape}.")


def empty_index(dim: int, options: IndexOptions = IndexOptions()) -> faiss.Index:
    """An empty inner-product index of ``options.kind`` exact or hnsw, which takes rows as they come
    (IVF needs a training sample first: :func:`build_index`)."""
    if options.kind == "exact":
        return faiss.IndexFlatIP(dim)
    if options.kind != "hnsw":
        raise ConfigError(f"An empty index is exact or hnsw (an IVF index is trained on its bank: build_index), "
                          f"got '{options.kind}'.")
    index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = options.ef_construction
    index.hnsw.efSearch = options.ef_search
    return index


def build_index(bank: np.ndarray, options: IndexOptions = IndexOptions(), normalize: bool = True,
                chunk_size: int = CHUNK_SIZE) -> faiss.Index:
    """A faiss index over the rows of ``bank`` (N, d), filled ``chunk_size`` rows at a time.

    With ``normalize`` every row is L2-normalised first, so that scores are cosine similarities.
    """
    _check_matrix(bank, "The bank")
    if options.kind not in INDEX_KINDS:
        raise ConfigError(f"Unknown index kind '{options.kind}'; choose one of {', '.join(INDEX_KINDS)}.")
    n, dim = bank.shape
    if options.kind in ("exact", "hnsw"):
        index = empty_index(dim, options)
    else:
        nlist = options.nlist or max(1, int(4 * np.sqrt(n)))
        if nlist > n:
            raise ConfigError(f"IVF with nlist={nlist} needs at least that many bank rows, got {n}.")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = options.seed  # k-means initialisation: the same index every time
        index.nprobe = min(options.nprobe, nlist)
        # k-means on a seeded sample: enough points per centroid, without reading the whole bank.
        sample_size = min(n, nlist * TRAINING_POINTS_PER_LIST)
        rows = np.sort(np.random.default_rng(options.seed).choice(n, sample_size, replace=False))
        index.train(_float32_rows(bank[rows], normalize))
    for start in range(0, n, chunk_size):
        index.add(_float32_rows(bank[start : start + chunk_size], normalize))
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 4096,
           normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores (Q, k) float32 decreasing, ids (Q, k) int64) of every query, searched
    ``batch_size`` queries at a time. Approximate indexes return id -1 where they found fewer
    than k candidates."""
    _check_matrix(queries, "The queries", index.d)
    if not 1 <= k <= index.ntotal:
        raise ConfigError(f"k must be between 1 and the {index.ntotal} bank rows, got {k}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        batch_scores, batch_ids = index.search(_float32_rows(queries[start : start + batch_size], normalize), k)
        scores[start : start + len(batch_ids)], ids[start : start + len(batch_ids)] = batch_scores, batch_ids
    return scores, ids


def recall_against_exact(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """mean_q |A_k(q) ∩ E_k(q)| / k, for id matrices of shape (Q, k)."""
    if approximate_ids.shape != exact_ids.shape:
        raise DataError(f"Id matrices of shapes {approximate_ids.shape} and {exact_ids.shape} cannot be compared.")
    k = exact_ids.shape[1]
    hits = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approximate_ids, exact_ids, strict=True))
    return hits / (k * len(exact_ids))


def knn_accuracy(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                 k: int = 200, temperature: float = 0.1, options: IndexOptions = IndexOptions(),
                 batch_size: int = 4096) -> float:
    """Weighted kNN top-1 accuracy (the rule of :mod:`contrastkit.evaluation.knn`) on cosine
    similarities, with the chosen index and bounded memory."""
    bank_labels, query_labels = np.asarray(bank_labels), np.asarray(query_labels)
    if len(bank_labels) != len(bank) or len(query_labels) != len(queries):
        raise DataError(f"{len(bank_labels)} bank labels for {len(bank)} bank rows and {len(query_labels)} query "
                        f"labels for {len(queries)} queries: every row needs one label.")
    index = build_index(bank, options)
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), batch_size):
        scores, ids = search(index, queries[start : start + batch_size], k, batch_size)
        found = ids >= 0  # an approximate index may return fewer than k: those slots do not vote
        neighbour_labels = np.where(found, bank_labels[np.maximum(ids, 0)], 0)
        scores = np.where(found, scores, -np.inf)
        predicted = class_scores(scores, neighbour_labels, temperature, num_classes).argmax(axis=1)
        correct += int((predicted == query_labels[start : start + batch_size]).sum())
    return correct / len(queries)
