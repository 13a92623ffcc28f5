"""Evaluation of a text encoder: STS Spearman, BEIR retrieval metrics, and isotropy.

- STS (Cer et al. 2017; the SentEval / SimCSE protocol): for pairs (a_i, b_i) with gold scores
  y_i, ``100 * spearman(cos(f(a_i), f(b_i)), y_i)``.
- Retrieval (BEIR, Thakur et al. 2021): queries and documents (title + " " + text) are embedded,
  the corpus is searched exactly (faiss, cosine similarity), and nDCG@k, Recall@k and MRR@k are
  computed with graded qrels by :mod:`contrastkit.evaluation.retrieval` (trec_eval conventions).
  Following BEIR, a retrieved document whose id equals the query id is dropped by default
  (``ignore_identical_ids``); one extra document is retrieved so that the cut at k stays full.
- Isotropy (Su et al., "A Contrastive Framework for Neural Text Generation", NeurIPS 2022): the
  mean cosine between token representations -- over random pairs of tokens of a set of texts, or
  within each sequence (the paper's self-similarity) -- and, for sentences,
  :func:`contrastkit.evaluation.diagnostics.isotropy` of the sentence embeddings.

Corpus embeddings are cached on disk (:func:`encode_corpus`), keyed by a fingerprint of the
encoder's weights, tokenizer and settings and of the corpus text, so each checkpoint encodes a
corpus once (SciFact's 5,183 abstracts take minutes on a CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.diagnostics import isotropy
from contrastkit.evaluation.retrieval import mrr_at_k, ndcg_at_k, recall_at_k, search
from contrastkit.modalities.text.encoders import TextEncoder, load_text_encoder
from contrastkit.modalities.text.query_tower import document_tower, warn_general_use
from contrastkit.modalities.text.sources import RetrievalSet, SentencePairs

PRECISIONS = ("fp32", "bf16")
DOCUMENT_SEPARATOR = " "  # BEIR's dense models embed title + " " + text
CACHE_FORMAT = 1  # bump when the cached content changes meaning


# ----------------------------------------------------------------------------------------- STS


def sts_spearman(encoder: TextEncoder, pairs: SentencePairs, batch_size: int = 64,
                 precision: str = "fp32") -> float:
    """``100 * spearman(cos(f(first_i), f(second_i)), scores_i)`` over the pairs.

    Each distinct sentence is embedded once (STS files repeat sentences across pairs).
    """
    embeddings, first, second = _pair_embeddings(encoder, pairs, batch_size, precision)
    return _spearman(embeddings, first, second, pairs.scores)


def sts_spearman_at_dims(encoder: TextEncoder, pairs: SentencePairs, dims: Sequence[int], batch_size: int = 64,
                         precision: str = "fp32") -> dict[int, float]:
    """:func:`sts_spearman` of the embeddings cut to their first ``m`` features (re-normalised), for
    each ``m`` of ``dims`` (a Matryoshka model's nested dimensions); the sentences are embedded once."""
    embeddings, first, second = _pair_embeddings(encoder, pairs, batch_size, precision)
    dims = _check_dims(dims, embeddings.shape[1])
    return {m: _spearman(embeddings[:, :m], first, second, pairs.scores) for m in dims}


def _pair_embeddings(encoder: TextEncoder, pairs: SentencePairs, batch_size: int,
                     precision: str) -> tuple[torch.Tensor, list[int], list[int]]:
    """The embeddings of the distinct sentences and the rows of each pair's first and second."""
    if len(pairs) < 2:
        raise DataError(f"STS evaluation needs at least 2 sentence pairs, got {len(pairs)}.")
    unique = list(dict.fromkeys([*pairs.first, *pairs.second]))
    row = {sentence: i for i, sentence in enumerate(unique)}
    embeddings = torch.from_numpy(encode_texts(encoder, unique, batch_size, precision))
    return embeddings, [row[s] for s in pairs.first], [row[s] for s in pairs.second]


def _spearman(embeddings: torch.Tensor, first: list[int], second: list[int], scores: np.ndarray) -> float:
    u = torch.nn.functional.normalize(embeddings, dim=1)
    cosines = (u[first] * u[second]).sum(1).numpy().astype(np.float64)
    return 100.0 * float(spearmanr(cosines, scores).statistic)


def _check_dims(dims: Sequence[int], full_dim: int) -> list[int]:
    from contrastkit.modalities.text.matryoshka import check_eval_dims

    return check_eval_dims(dims, full_dim)


# ----------------------------------------------------------------------------------- precision


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision '{precision}'. Valid precisions: {', '.join(PRECISIONS)}.")
    return precision


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    """``fp32``: nothing; ``bf16``: CPU autocast to bfloat16 (matmuls in bf16, fp32 accumulate)."""
    if check_precision(precision) == "fp32":
        yield
        return
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield


# --------------------------------------------------------------------------- corpus embeddings


def default_cache_dir() -> Path:
    """``$CONTRASTKIT_CACHE`` if set, else ``~/.cache/contrastkit``."""
    return Path(os.environ.get("CONTRASTKIT_CACHE", "~/.cache/contrastkit")).expanduser()


def encoder_fingerprint(encoder: TextEncoder) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), the tokenizer's
    vocabulary and rules, and the pooling settings: equal fingerprints embed text identically.

    Hashing all weights costs about 0.1 s for MiniLM (90 MB) -- negligible next to encoding, and
    exact, unlike a hash of a few sampled values that a fine-tuning step could leave unchanged.
    """
    digest = hashlib.sha256()
    for name, tensor in encoder.transformer.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, 0-d too
    if encoder.term_residual is not None:  # hashed apart, so encoders without one keep their old fingerprint
        residual = encoder.term_residual
        weight = residual.weight.detach().float().cpu().contiguous()
        digest.update(b"term_residual|" + weight.reshape(-1).view(torch.uint8).numpy().tobytes())
        # Its restrictions change the embeddings as much as its rows do (scale, cap, ramp, tokens, gate).
        restrictions = {k: v for k, v in residual.settings().items() if k != "corpus"}
        digest.update(f"|{sorted(restrictions.items())!r}|".encode())
        for extra in (residual.allowed, residual.gate_center):
            if extra is not None:
                digest.update(extra.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(_tokenizer_description(encoder.tokenizer).encode())
    digest.update(f"|{encoder.pooling}|{encoder.normalize}|{encoder.max_length}".encode())
    return digest.hexdigest()


def _tokenizer_description(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # fast tokenizers: the full json
    if backend is not None:
        # Without the truncation and padding state: every call of the tokenizer rewrites it (to the
        # max_length of that call), and it does not change how encode() tokenises.
        description = json.loads(backend.to_str())
        description.pop("truncation", None)
        description.pop("padding", None)
        return json.dumps(description, sort_keys=True)
    vocab = tokenizer.get_vocab()
    return f"{type(tokenizer).__name__}|{sorted(vocab.items())}"


def texts_fingerprint(texts: Sequence[str]) -> str:
    """sha256 of the texts in order (length-prefixed, so boundaries cannot shift)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def corpus_cache_path(encoder: TextEncoder, documents: Sequence[str],
                      cache_dir: str | os.PathLike | bool | None = None,
                      precision: str = "fp32") -> Path:
    """``<cache_dir>/text-embeddings/<key>.npy`` with ``key = sha256(format, encoder fingerprint,
    precision, corpus fingerprint)``; ``cache_dir`` None (or True) means :func:`default_cache_dir`."""
    folder = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
    key = hashlib.sha256(
        f"{CACHE_FORMAT}|{encoder_fingerprint(encoder)}|{check_precision(precision)}|"
        f"{texts_fingerprint(documents)}".encode()
    ).hexdigest()
    return folder / "text-embeddings" / f"{key[:40]}.npy"


def encode_corpus(encoder: TextEncoder, retrieval_set: RetrievalSet,
                  cache_dir: str | os.PathLike | bool | None = None, batch_size: int = 64,
                  precision: str = "fp32") -> np.ndarray:
    """Embeddings (N, D) float32 of ``retrieval_set.documents()``, in corpus order, cached on disk.

    The cache file is :func:`corpus_cache_path`; a sidecar ``.json`` says what it holds.
    ``cache_dir=None`` uses :func:`default_cache_dir`; ``cache_dir=False`` disables the cache.
    Files are written atomically (temporary file + ``os.replace``), so a killed run never leaves a
    truncated cache entry behind.
    """
    documents = retrieval_set.documents(DOCUMENT_SEPARATOR)
    if not documents:
        raise DataError("The retrieval set has no documents to encode.")
    if cache_dir is False:
        return encode_texts(encoder, documents, batch_size, precision)
    path = corpus_cache_path(encoder, documents, cache_dir, precision)
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(documents), encoder.output_dim):
                return cached
        except (ValueError, OSError):
            pass  # unreadable entry: recompute and overwrite
    embeddings = encode_texts(encoder, documents, batch_size, precision)
    _write_atomically(path, embeddings, {
        "documents": len(documents), "dim": int(embeddings.shape[1]), "precision": precision,
        "pooling": encoder.pooling, "normalize": encoder.normalize, "max_length": encoder.max_length,
        "first_document": documents[0][:200],
    })
    return embeddings


def encode_texts(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64,
                 precision: str = "fp32") -> np.ndarray:
    """``encoder.encode(texts)`` as a float32 numpy array, under ``precision``'s autocast."""
    with autocast(precision):
        return encoder.encode(list(texts), batch_size=batch_size).float().numpy()


def _write_atomically(path: Path, embeddings: np.ndarray, description: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy.tmp", delete=False) as handle:
            np.save(handle, embeddings, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(handle.name, path)
        path.with_suffix(".json").write_text(json.dumps(description, indent=2))
    except OSError as error:
        raise DataError(
            f"Could not write the embedding cache '{path}': {error}. Point --cache-dir (or "
            "CONTRASTKIT_CACHE) at a writable folder, or disable the cache (cache_dir=False)."
        ) from error


# ----------------------------------------------------------------------------------- retrieval


def ranked_doc_ids(indices: np.ndarray, retrieval_set: RetrievalSet) -> dict[str, list[str]]:
    """``{query id: [doc id, ...] best first}`` from a (Q, k) array of corpus row indices
    (faiss marks missing results with -1; they are dropped)."""
    doc_ids = retrieval_set.doc_ids
    return {
        query: [doc_ids[i] for i in row if i >= 0]
        for query, row in zip(retrieval_set.query_ids, indices.tolist())
    }


def retrieval_metrics(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]],
                      k_values: Sequence[int] = (10, 100),
                      ignore_identical_ids: bool = True) -> dict[str, float]:
    """``ndcg@k``, ``recall@k`` and ``mrr@k`` (x1, in [0, 1]) for each k, BEIR conventions."""
    metrics: dict[str, float] = {}
    for name, metric in (("ndcg", ndcg_at_k), ("recall", recall_at_k), ("mrr", mrr_at_k)):
        for k in k_values:
            metrics[f"{name}@{k}"] = metric(rankings, qrels, k, ignore_identical_ids=ignore_identical_ids)
    return metrics


def search_depth(k_values: Sequence[int], ignore_identical_ids: bool) -> int:
    """How many documents to retrieve: the largest cut, plus one that an identical id may take."""
    k_values = list(k_values)
    if not k_values or any(not isinstance(k, int) or k < 1 for k in k_values):
        raise ConfigError(f"k_values must be positive integers, got {k_values!r}.")
    return max(k_values) + (1 if ignore_identical_ids else 0)


def evaluate_retrieval(encoder: TextEncoder, retrieval_set: RetrievalSet,
                       k_values: Sequence[int] = (10, 100),
                       cache_dir: str | os.PathLike | bool | None = None,
                       ignore_identical_ids: bool = True, precision: str = "fp32",
                       batch_size: int = 64, document_encoder: TextEncoder | None = None) -> dict[str, float]:
    """Dense retrieval with cosine similarity; returns :func:`retrieval_metrics` plus the counts
    ``queries`` and ``documents``. Corpus embeddings go through :func:`encode_corpus`'s cache.

    ``document_encoder`` embeds the corpus of a two-tower model (queries: ``encoder``), e.g. the
    base model of a query-side fine-tuning (:mod:`contrastkit.modalities.text.methods.hybrid_distill`);
    by default ``encoder`` without its term residual, if it has one (a query tower's:
    :func:`~contrastkit.modalities.text.query_tower.document_tower`)."""
    depth = search_depth(k_values, ignore_identical_ids)
    queries, corpus = _retrieval_embeddings(encoder, retrieval_set, cache_dir, precision, batch_size, document_encoder)
    return _retrieval_scores(queries, corpus, retrieval_set, depth, k_values, ignore_identical_ids)


def _retrieval_embeddings(encoder: TextEncoder, retrieval_set: RetrievalSet, cache_dir, precision: str,
                          batch_size: int, document_encoder: TextEncoder | None) -> tuple[np.ndarray, np.ndarray]:
    """(queries, corpus) embeddings at the full dimension, the corpus through the cache."""
    if not retrieval_set.queries:
        raise DataError("The retrieval set has no queries (none of them has qrels in this split).")
    # A term residual is a query tower's (contrastkit.modalities.text.query_tower): documents go without it.
    corpus = encode_corpus(document_encoder or document_tower(encoder), retrieval_set, cache_dir, batch_size, precision)
    return encode_texts(encoder, retrieval_set.queries, batch_size, precision), corpus


def _retrieval_scores(queries: np.ndarray, corpus: np.ndarray, retrieval_set: RetrievalSet, depth: int,
                      k_values: Sequence[int], ignore_identical_ids: bool) -> dict[str, float]:
    """:func:`retrieval_metrics` of the cosine ranking (``depth`` documents) of ``corpus`` for each
    query, with the counts."""
    _, indices = search(queries, corpus, k=depth, metric="cosine")
    metrics = retrieval_metrics(ranked_doc_ids(indices, retrieval_set), retrieval_set.qrels, k_values,
                                ignore_identical_ids)
    return {**metrics, "queries": len(retrieval_set.query_ids), "documents": len(retrieval_set.doc_ids)}


def evaluate_retrieval_at_dims(encoder: TextEncoder, retrieval_set: RetrievalSet, dims: Sequence[int],
                               k_values: Sequence[int] = (10, 100),
                               cache_dir: str | os.PathLike | bool | None = None,
                               ignore_identical_ids: bool = True, precision: str = "fp32", batch_size: int = 64,
                               document_encoder: TextEncoder | None = None) -> dict[int, dict[str, float]]:
    """:func:`evaluate_retrieval` with queries and documents cut to their first ``m`` features (cosine,
    so re-normalised), for each ``m`` of ``dims``: ``{m: metrics}``. Corpus and queries are embedded
    once, at the full dimension (the corpus through the cache)."""
    depth = search_depth(k_values, ignore_identical_ids)
    queries, corpus = _retrieval_embeddings(encoder, retrieval_set, cache_dir, precision, batch_size, document_encoder)
    return {m: _retrieval_scores(queries[:, :m], corpus[:, :m], retrieval_set, depth, k_values, ignore_identical_ids)
            for m in _check_dims(dims, corpus.shape[1])}


def subsample_retrieval_set(retrieval_set: RetrievalSet, n_queries: int, n_documents: int,
                            seed: int = 0) -> RetrievalSet:
    """A smaller retrieval set for quick checks: ``n_queries`` random queries, all of their
    relevant documents, and random other documents up to ``n_documents`` (corpus order kept).

    Metrics on a subset are higher than on the full corpus (fewer distractors); use it to compare
    models with each other, never against published figures.
    """
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(retrieval_set.query_ids), min(n_queries, len(retrieval_set.query_ids)),
                               replace=False).tolist())
    query_ids = [retrieval_set.query_ids[i] for i in chosen]
    position = {doc: i for i, doc in enumerate(retrieval_set.doc_ids)}
    keep = {position[d] for q in query_ids for d in retrieval_set.qrels[q] if d in position}
    others = rng.permutation([i for i in range(len(retrieval_set.doc_ids)) if i not in keep])
    keep.update(others[: max(0, n_documents - len(keep))].tolist())
    rows = sorted(keep)
    return RetrievalSet(
        doc_ids=[retrieval_set.doc_ids[i] for i in rows],
        titles=[retrieval_set.titles[i] for i in rows],
        texts=[retrieval_set.texts[i] for i in rows],
        query_ids=query_ids,
        queries=[retrieval_set.queries[i] for i in chosen],
        qrels={q: dict(retrieval_set.qrels[q]) for q in query_ids},
    )


# ------------------------------------------------------------------------------------ isotropy


@torch.inference_mode()
def content_token_states(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64,
                         max_length: int | None = None) -> list[torch.Tensor]:
    """Last-layer states (L_i, D) of each text's tokens, special tokens ([CLS], [SEP]) and
    padding excluded, in eval mode."""
    special = torch.tensor(sorted(encoder.tokenizer.all_special_ids))
    was_training = encoder.training
    encoder.eval()
    states: list[torch.Tensor] = []
    try:
        for start in range(0, len(texts), batch_size):
            tokens = encoder.tokenize(list(texts[start:start + batch_size]), max_length)
            hidden = encoder.token_states(tokens).float().cpu()
            keep = tokens["attention_mask"].bool() & ~torch.isin(tokens["input_ids"], special)
            states.extend(h[m] for h, m in zip(hidden, keep))
    finally:
        encoder.train(was_training)
    return states


def token_isotropy(encoder: TextEncoder, texts: Sequence[str], pairs: int = 10_000, seed: int = 0,
                   within_sequence: bool = False, batch_size: int = 64) -> float:
    """Mean cosine between token representations (Su et al. 2022); about 0 when isotropic.

    - ``within_sequence=False``: the mean of cos(h_a, h_b) over ``pairs`` random pairs (a, b),
      a != b, drawn uniformly from all content tokens of ``texts`` (a Monte-Carlo estimate of the
      mean over all distinct token pairs; standard error about 0.01 for 10,000 pairs).
    - ``within_sequence=True``: the paper's self-similarity, exact:
      s(x) = 1 / (|x| (|x| - 1)) sum_{i != j} cos(h_i, h_j), averaged over the texts with at
      least two content tokens.
    """
    states = content_token_states(encoder, texts, batch_size)
    if within_sequence:
        values = [isotropy(h) for h in states if h.shape[0] >= 2]
        if not values:
            raise DataError("token_isotropy needs texts with at least two content tokens each.")
        return float(np.mean(values))
    tokens = torch.nn.functional.normalize(torch.cat(states), dim=1)
    n = tokens.shape[0]
    if n < 2:
        raise DataError(f"token_isotropy needs at least two content tokens, the texts have {n}.")
    if pairs < 1:
        raise ConfigError(f"pairs must be a positive integer, got {pairs}.")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, pairs)
    second = (first + rng.integers(1, n, pairs)) % n  # uniform over the other n - 1 tokens
    cosines = (tokens[torch.from_numpy(first)] * tokens[torch.from_numpy(second)]).sum(1)
    return float(cosines.double().mean())


def sentence_isotropy(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64) -> float:
    """Mean cosine over all distinct pairs of sentence embeddings (exact, O(n D))."""
    return isotropy(encoder.encode(list(texts), batch_size=batch_size))


# ------------------------------------------------------------------------- command-line tasks


def evaluate_text_task(task: str, model: str, data: str | os.PathLike, split: str = "dev",
                       batch_size: int = 64, cache_dir: str | os.PathLike | bool | None = None,
                       precision: str = "fp32", hybrid_weight: float | None = None,
                       document_model: str | None = None, dims: Sequence[int] | None = None) -> dict:
    """What ``contrastkit evaluate --task sts|retrieval`` prints: the task's scores with the
    model, data and sizes they came from. With ``dims`` (a Matryoshka model's dimensions, e.g.
    ``[384, 256, 128, 64]``) the scores are a list ``rows``, one per dimension, of the embeddings cut
    to that many features. ``model="bm25"`` runs the BM25 baseline (retrieval);
    ``hybrid_weight`` w fuses the model's cosine with BM25 (:mod:`contrastkit.modalities.text.hybrid`);
    ``document_model`` embeds the documents of a two-tower model (``model`` embeds the queries).
    Retrieval scores the qrels ``split`` of :func:`~contrastkit.modalities.text.sources.read_beir` (``dev`` by
    default; ``test`` only when asked for)."""
    from contrastkit.modalities.text.sources import read_beir, read_sts

    check_precision(precision)
    if document_model is not None and (task != "retrieval" or model == "bm25"):
        raise ConfigError("--document-model is the document tower of a two-tower text model for --task "
                          "retrieval (--model embeds the queries); STS and BM25 have no document tower.")
    if hybrid_weight is not None and (task != "retrieval" or model == "bm25"):
        raise ConfigError("--hybrid-weight fuses a text encoder with BM25 for --task retrieval; give --model "
                          "'minilm' or a model folder (not bm25).")
    if dims is not None and (model == "bm25" or hybrid_weight is not None):
        raise ConfigError("--dims cuts a text encoder's embeddings to each dimension; BM25 and the hybrid have no "
                          "embedding to cut.")
    if task == "sts":
        if model == "bm25":
            raise ConfigError("--model bm25 is a retrieval baseline; STS needs a text encoder "
                              "('minilm' or a model folder).")
        pairs = read_sts(data)
        header = {"task": "sts", "model": str(model), "data": str(data), "pairs": len(pairs)}
        encoder = load_text_encoder(model)
        warn_general_use(encoder, model, "STS")  # a query tower's figure here is the adaptation's cost
        if dims is not None:
            by_dim = sts_spearman_at_dims(encoder, pairs, dims, batch_size, precision)
            return {**header, "rows": [{"dim": m, "spearman": value} for m, value in by_dim.items()]}
        return {**header, "spearman": sts_spearman(encoder, pairs, batch_size, precision)}
    if task == "retrieval":
        retrieval_set = read_beir(data, split)
        header = {"task": "retrieval", "model": str(model), "data": str(data), "split": split}
        if model == "bm25":
            from contrastkit.modalities.text.bm25 import evaluate_bm25

            return {**header, **evaluate_bm25(retrieval_set)}
        encoder = load_text_encoder(model)
        documents = None
        if document_model is not None:
            header["document_model"] = str(document_model)
            documents = load_text_encoder(document_model)
        if dims is not None:
            by_dim = evaluate_retrieval_at_dims(encoder, retrieval_set, dims, cache_dir=cache_dir, precision=precision,
                                                batch_size=batch_size, document_encoder=documents)
            return {**header, "rows": [{"dim": m, **metrics} for m, metrics in by_dim.items()]}
        if hybrid_weight is not None:
            from contrastkit.modalities.text.hybrid import evaluate_hybrid

            return {**header, **evaluate_hybrid(encoder, retrieval_set, hybrid_weight, cache_dir=cache_dir,
                                                precision=precision, batch_size=batch_size,
                                                document_encoder=documents)}
        return {**header, **evaluate_retrieval(encoder, retrieval_set, cache_dir=cache_dir,
                                               precision=precision, batch_size=batch_size,
                                               document_encoder=documents)}
    raise ConfigError(f"Unknown text evaluation task '{task}'. Valid tasks: sts, retrieval.")
