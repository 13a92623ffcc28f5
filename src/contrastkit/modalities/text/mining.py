"""Hard negatives for (anchor, positive) rows, mined from a corpus with BM25 or a dense encoder.

For each anchor ``q`` the retriever ranks the whole corpus (rank 1 = best; BM25 of
:mod:`contrastkit.modalities.text.bm25`, or the cosine of a :class:`~contrastkit.modalities.text.encoders.TextEncoder`).
A document is a candidate negative of the row (q, p) when

- its rank is in the window ``skip_top < rank <= max_rank``: the very top of a ranking holds the
  relevant documents nobody labelled (false negatives), so the first ``skip_top`` are skipped, and
  ``max_rank`` keeps the negatives hard;
- it is none of q's labelled positives (all of them, not only p; for a BEIR folder its qrels with
  grade > 0) and no document with the text of one;
- with ``relative_margin`` m: its score is at most ``(1 - m) * score(q, p)``, so a document that the
  retriever finds as close as the positive is not taken (sentence-transformers' ``relative_margin``;
  meaningful when scores are positive, as BM25's and most cosines of related texts are).

Of the candidates, the ``num_negatives`` best ranked are taken (``sampling="top"``) or as many drawn
at random (``"random"``, seeded). A row with fewer candidates is dropped (the rows of a training
file have the same number of negatives) and counted. The rows are written in the layout of
:func:`contrastkit.modalities.text.tables.write_training_pairs` (anchor, positive, negative_1 ..
negative_k), which ``contrastkit text --method mnrl`` trains on.

Sources: a BEIR folder (queries, corpus, ``qrels/<split>.tsv``: one row per (query, relevant
document)). Mining the ``train`` split of a folder whose ``dev`` split is carved from the train
queries (:func:`~contrastkit.modalities.text.sources.in_dev_carve`, SciFact) leaves the dev queries
out (and train queries with the text of a dev query), so that a model trained on the file can still be
chosen on dev. Or a pairs file
(anchor, positive; CSV, TSV, JSONL) whose corpus is its distinct positives, plus an optional corpus.

Command line (``contrastkit mine``, :func:`add_mine_parser` / :func:`run_mine`)::

    contrastkit mine --data $CONTRASTKIT_DATA/scifact --split train --retriever dense --model minilm \\
        --num-negatives 1 --skip-top 3 --max-rank 30 --relative-margin 0.05 --out scifact-triplets.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.sources import (
    DEV_SPLIT,
    RetrievalSet,
    in_dev_carve,
    read_beir,
    read_corpus,
)
from contrastkit.modalities.text.tables import Columns, TrainingPairs, read_training_pairs, write_training_pairs

RETRIEVERS = ("bm25", "dense")
SAMPLINGS = ("top", "random")


@dataclass(frozen=True)
class MiningSettings:
    """How negatives are chosen (the module docstring): the rank window, the margin, how many."""

    num_negatives: int = 1
    skip_top: int = 0
    max_rank: int = 30
    relative_margin: float | None = None
    sampling: str = "top"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_negatives, bool) or not isinstance(self.num_negatives, int) or self.num_negatives < 1:
            raise ConfigError(f"num_negatives must be a positive integer, got {self.num_negatives!r}.")
        if not 0 <= self.skip_top < self.max_rank:
            raise ConfigError(f"The rank window needs 0 <= skip_top < max_rank, got skip_top={self.skip_top} and "
                              f"max_rank={self.max_rank} (negatives come from ranks skip_top+1 .. max_rank).")
        if self.max_rank - self.skip_top < self.num_negatives:
            raise ConfigError(f"The window of ranks {self.skip_top + 1}..{self.max_rank} is narrower than "
                              f"{self.num_negatives} negatives.")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ConfigError(f"relative_margin must be in [0, 1), got {self.relative_margin}.")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"Unknown sampling '{self.sampling}'; valid: {', '.join(SAMPLINGS)}.")


@dataclass
class MinedNegatives:
    """The rows with their negatives, and what was left out."""

    pairs: TrainingPairs
    rows_in: int
    dropped: int
    settings: dict = field(default_factory=dict)

    def report(self) -> dict:
        return {"rows": len(self.pairs), "rows_in": self.rows_in, "dropped": self.dropped,
                "negatives_per_row": self.pairs.negatives_per_row, **self.settings}


def choose_negatives(ranked: np.ndarray, scores: np.ndarray, excluded: set[int], positive_score: float | None,
                     settings: MiningSettings, generator: np.random.Generator | None = None) -> list[int] | None:
    """The corpus rows of one row's negatives, from its ranking ``ranked`` (corpus rows, best first, at
    least ``max_rank`` long where the corpus allows) and their ``scores``; None when too few qualify."""
    window = range(settings.skip_top, min(settings.max_rank, len(ranked)))
    candidates = []
    for position in window:
        row = int(ranked[position])
        if row in excluded:
            continue
        if (settings.relative_margin is not None and positive_score is not None
                and scores[position] > (1.0 - settings.relative_margin) * positive_score):
            continue
        candidates.append(row)
    if len(candidates) < settings.num_negatives:
        return None
    if settings.sampling == "random":
        generator = generator or np.random.default_rng(settings.seed)
        picked = generator.choice(len(candidates), settings.num_negatives, replace=False)
        return [candidates[i] for i in sorted(picked)]
    return candidates[: settings.num_negatives]


class Retriever:
    """Scores of queries against a corpus: ``rank(queries, depth)`` and ``score(query rows, corpus rows)``."""

    def __init__(self, corpus: Sequence[str], kind: str = "bm25", encoder=None, batch_size: int = 64,
                 corpus_embeddings: np.ndarray | None = None):
        if kind not in RETRIEVERS:
            raise ConfigError(f"Unknown retriever '{kind}'; valid: {', '.join(RETRIEVERS)}.")
        self.kind, self.batch_size = kind, batch_size
        if kind == "bm25":
            from contrastkit.modalities.text.bm25 import BM25Index

            self.index = BM25Index(corpus)
        else:
            if encoder is None:
                raise ConfigError("The dense retriever needs an encoder (model='minilm' or a model folder).")
            from contrastkit.evaluation.arrays import l2_normalize_rows
            from contrastkit.modalities.text.evaluation import encode_texts

            self.encoder = encoder
            embeddings = corpus_embeddings if corpus_embeddings is not None else \
                encode_texts(encoder, corpus, batch_size)
            self.corpus = l2_normalize_rows(np.asarray(embeddings, dtype=np.float32))

    def rank(self, queries: Sequence[str], depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(scores, indices)`` (Q, depth) best first, and the query embeddings (dense) or None."""
        if self.kind == "bm25":
            scores, indices = self.index.search(queries, depth)
            return scores, indices, None
        from contrastkit.evaluation.arrays import l2_normalize_rows
        from contrastkit.evaluation.retrieval import search
        from contrastkit.modalities.text.evaluation import encode_texts

        embedded = l2_normalize_rows(encode_texts(self.encoder, queries, self.batch_size))
        scores, indices = search(embedded, self.corpus, k=depth, metric="dot")
        return scores, indices, embedded

    def pair_scores(self, queries: Sequence[str], query_embeddings: np.ndarray | None,
                    documents: Sequence[int]) -> np.ndarray:
        """The score of query ``i`` with corpus row ``documents[i]``."""
        if self.kind == "dense":
            return np.einsum("ij,ij->i", query_embeddings, self.corpus[np.asarray(documents)])
        result = np.empty(len(queries))
        for start in range(0, len(queries), 256):  # (chunk, N) dense score rows, a chunk at a time
            rows = self.index.scores(queries[start:start + 256])
            result[start:start + 256] = rows[np.arange(len(rows)), np.asarray(documents[start:start + 256])]
        return result


def mine_rows(anchors: Sequence[str], positives: Sequence[int], labelled: Sequence[set[int]],
              corpus: Sequence[str], retriever: Retriever, settings: MiningSettings) -> list[list[int] | None]:
    """For each row (``anchors[i]``, corpus row ``positives[i]``), its negatives' corpus rows, or None
    where too few qualify. ``labelled[i]``: every corpus row labelled relevant to ``anchors[i]``."""
    distinct = list(dict.fromkeys(anchors))
    depth = min(settings.max_rank, len(corpus))
    scores, ranked, embedded = retriever.rank(distinct, depth)
    where = {anchor: i for i, anchor in enumerate(distinct)}
    rows = [where[a] for a in anchors]
    positive_scores = None
    if settings.relative_margin is not None:
        query_embeddings = embedded[rows] if embedded is not None else None
        positive_scores = retriever.pair_scores(list(anchors), query_embeddings, list(positives))
    by_text: dict[str, list[int]] = {}
    for row, text in enumerate(corpus):
        by_text.setdefault(text, []).append(row)
    generator = np.random.default_rng(settings.seed)
    negatives = []
    for i, query_row in enumerate(rows):
        excluded = {twin for p in labelled[i] for twin in by_text[corpus[p]]}
        negatives.append(choose_negatives(ranked[query_row], scores[query_row], excluded,
                                          None if positive_scores is None else float(positive_scores[i]),
                                          settings, generator))
    return negatives


def _assemble(anchors: list[str], positives: list[int], negatives: list[list[int] | None], corpus: Sequence[str],
              name: str, settings: dict) -> MinedNegatives:
    kept = [i for i, n in enumerate(negatives) if n is not None]
    pairs = TrainingPairs(anchors=[anchors[i] for i in kept], positives=[corpus[positives[i]] for i in kept],
                          negatives=[tuple(corpus[j] for j in negatives[i]) for i in kept], name=name)
    if not kept:
        raise DataError(f"No row of '{name}' has {settings['num_negatives']} negatives in ranks "
                        f"{settings['skip_top'] + 1}..{settings['max_rank']}; widen the window or lower the margin.")
    return MinedNegatives(pairs, rows_in=len(anchors), dropped=len(anchors) - len(kept), settings=settings)


def beir_training_rows(folder: str | os.PathLike, split: str = "train") -> tuple[RetrievalSet, str]:
    """The split's queries and qrels; for ``train`` without ``qrels/dev.tsv``, the dev carve left out,
    and so are the train queries whose text is that of a dev query (SciFact has two such claims, each
    under two ids on either side of the carve)."""
    data = read_beir(folder, split)
    note = f"qrels/{split}.tsv"
    if split == "train" and not (Path(folder) / "qrels" / f"{DEV_SPLIT}.tsv").is_file():
        dev_texts = {text for q, text in zip(data.query_ids, data.queries) if in_dev_carve(q)}
        keep = [i for i, q in enumerate(data.query_ids) if not in_dev_carve(q) and data.queries[i] not in dev_texts]
        data = RetrievalSet(doc_ids=data.doc_ids, titles=data.titles, texts=data.texts,
                            query_ids=[data.query_ids[i] for i in keep], queries=[data.queries[i] for i in keep],
                            qrels={data.query_ids[i]: data.qrels[data.query_ids[i]] for i in keep})
        note += " without the dev carve (in_dev_carve) and its texts"
    return data, note


def mine_hard_negatives(data: str | os.PathLike | TrainingPairs, out: str | os.PathLike | None = None, *,
                        split: str = "train", columns: Columns = None, corpus: str | os.PathLike | None = None,
                        retriever: str = "bm25", model=None, num_negatives: int = 1, skip_top: int = 0,
                        max_rank: int = 30, relative_margin: float | None = None, sampling: str = "top",
                        seed: int = 0, batch_size: int = 64, cache_dir=None) -> MinedNegatives:
    """(anchor, positive, negative_1 .. negative_k) rows mined for ``data`` (see the module docstring),
    written to ``out`` (.csv, .tsv or .jsonl) when given.

    Args:
        data: a BEIR folder (its ``split``), a pairs file (anchor, positive; ``columns`` as in
            :mod:`contrastkit.modalities.text.tables`), or :class:`TrainingPairs`.
        corpus: more documents to mine from with a pairs file (a JSONL corpus or BEIR folder).
        retriever: ``bm25`` or ``dense`` (with ``model``: ``minilm``, a model folder, or a TextEncoder).
        num_negatives, skip_top, max_rank, relative_margin, sampling, seed: :class:`MiningSettings`.
        cache_dir: the corpus-embedding cache of a BEIR corpus (dense; as in evaluation).
    """
    settings = MiningSettings(num_negatives, skip_top, max_rank, relative_margin, sampling, seed)
    encoder = _encoder(model) if retriever == "dense" else None
    described = {"retriever": retriever, "model": None if encoder is None else str(model or "minilm"),
                 "num_negatives": num_negatives, "skip_top": skip_top, "max_rank": max_rank,
                 "relative_margin": relative_margin, "sampling": sampling, "seed": seed}
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        beir, source = beir_training_rows(data, split)
        documents = beir.documents()
        position = {doc: i for i, doc in enumerate(beir.doc_ids)}
        anchors, positives, labelled = [], [], []
        for query_id, query in zip(beir.query_ids, beir.queries):
            relevant = {position[d] for d, grade in beir.qrels[query_id].items() if grade > 0 and d in position}
            for doc in sorted(relevant):
                anchors.append(query)
                positives.append(doc)
                labelled.append(relevant)
        embeddings = None
        if encoder is not None:
            from contrastkit.modalities.text.evaluation import encode_corpus

            embeddings = encode_corpus(encoder, beir, cache_dir, batch_size)
        search = Retriever(documents, retriever, encoder, batch_size, corpus_embeddings=embeddings)
        negatives = mine_rows(anchors, positives, labelled, documents, search, settings)
        mined = _assemble(anchors, positives, negatives, documents, f"{data} ({source})",
                          {**described, "source": source})
    else:
        pairs = data if isinstance(data, TrainingPairs) else read_training_pairs(data, columns)
        documents = list(dict.fromkeys(pairs.positives))
        if corpus is not None:
            extra = read_corpus(corpus)
            documents = list(dict.fromkeys([*documents, *extra.documents()]))
        position = {text: i for i, text in enumerate(documents)}
        relevant: dict[str, set[int]] = {}
        for anchor, positive in zip(pairs.anchors, pairs.positives):
            relevant.setdefault(anchor, set()).add(position[positive])
        positives = [position[p] for p in pairs.positives]
        search = Retriever(documents, retriever, encoder, batch_size)
        negatives = mine_rows(pairs.anchors, positives, [relevant[a] for a in pairs.anchors], documents, search,
                              settings)
        mined = _assemble(list(pairs.anchors), positives, negatives, documents, pairs.name,
                          {**described, "source": pairs.name})
    if out is not None:
        write_training_pairs(mined.pairs, out)
    return mined


def _encoder(model):
    from contrastkit.modalities.text.encoders import load_text_encoder

    if model is None:
        model = "minilm"
    return load_text_encoder(model) if isinstance(model, (str, os.PathLike)) else model


# ------------------------------------------------------------------------------------- command


def add_mine_parser(subparsers) -> argparse.ArgumentParser:
    """``contrastkit mine``: the subcommand's parser, added to ``subparsers`` (argparse's)."""
    parser = subparsers.add_parser("mine", help="mine hard negatives for (anchor, positive) rows (BM25 or dense) and "
                                   "write a training file for 'contrastkit text --method mnrl'")
    parser.add_argument("--data", required=True, help="a BEIR folder (e.g. scifact) or a pairs file (.csv, .tsv, "
                        ".jsonl with anchor and positive columns)")
    parser.add_argument("--out", required=True, help="the training file to write (.csv, .tsv or .jsonl)")
    parser.add_argument("--split", default="train", help="qrels split of a BEIR folder (default train; the dev "
                        "carve is left out)")
    parser.add_argument("--columns", help="the columns of a pairs file (anchor,positive or ROLE=NAME pairs)")
    parser.add_argument("--corpus", help="more documents to mine from with a pairs file (JSONL corpus or BEIR folder)")
    parser.add_argument("--retriever", choices=RETRIEVERS, default="bm25", help="bm25 (default) or dense")
    parser.add_argument("--model", default="minilm", help="the dense retriever's encoder (default minilm)")
    parser.add_argument("--num-negatives", type=int, default=1, help="negatives per row (default 1)")
    parser.add_argument("--skip-top", type=int, default=0, help="skip the best ranked documents (false negatives)")
    parser.add_argument("--max-rank", type=int, default=30, help="take negatives down to this rank (default 30)")
    parser.add_argument("--relative-margin", type=float, help="keep a negative only if its score <= (1 - m) x the "
                        "positive's")
    parser.add_argument("--sampling", choices=SAMPLINGS, default="top", help="the best ranked candidates or random ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoding batch (dense)")
    parser.add_argument("--cache-dir", help="corpus-embedding cache (default $CONTRASTKIT_CACHE)")
    return parser


def run_mine(args: argparse.Namespace) -> int:
    from contrastkit.modalities.text.tables import parse_columns

    if Path(args.out).exists():
        raise ConfigError(f"'{args.out}' exists; choose another --out (mined files are not overwritten).")
    mined = mine_hard_negatives(
        args.data, args.out, split=args.split, columns=parse_columns(args.columns), corpus=args.corpus,
        retriever=args.retriever, model=args.model, num_negatives=args.num_negatives, skip_top=args.skip_top,
        max_rank=args.max_rank, relative_margin=args.relative_margin, sampling=args.sampling, seed=args.seed,
        batch_size=args.batch_size, cache_dir=args.cache_dir)
    print(json.dumps({"out": str(args.out), **mined.report()}, indent=2))
    return 0
