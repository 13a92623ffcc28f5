"""Score query encoders against all-MiniLM-L6-v2's document embeddings on SciFact, with the paired
per-query difference to the base model, and STS-B.

    python benchmarks/text_two_tower_eval.py --split train --sts dev runs/hd-*/encoder   # development
    python benchmarks/text_two_tower_eval.py --split test --sts test runs/hd-final/encoder  # once

Each model given embeds the queries (and both sides of STS); the documents are always embedded by the
base model (bf16, cached), as after query-side training (``contrastkit text --method hybrid-distill``).
The base model is the first row. For each other row: the mean per-query change of nDCG@10 with a 95 %
paired bootstrap interval (2,000 resamples of the queries) and how many queries went up / down; for every
row, the same change against BM25 (bm25s, stemmed: the library's baseline, ``evaluate_bm25``).
"""

from __future__ import annotations

import argparse

import numpy as np

from contrastkit.evaluation.retrieval import ndcg_at_k, search
from contrastkit.core.paths import data_root
from contrastkit.modalities.text.bm25 import bm25_search
from contrastkit.modalities.text.encoders import TextEncoder, load_text_encoder
from contrastkit.modalities.text.evaluation import (
    DOCUMENT_SEPARATOR,
    encode_corpus,
    encode_texts,
    ranked_doc_ids,
    retrieval_metrics,
    search_depth,
    sts_spearman,
)
from contrastkit.modalities.text.sources import read_beir, read_sts


def per_query_ndcg(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> np.ndarray:
    return np.array([ndcg_at_k({q: rankings[q]}, {q: qrels[q]}, 10, ignore_identical_ids=True) for q in qrels])


def paired_bootstrap(delta: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(resamples, len(delta)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="query encoders (folders written by contrastkit text)")
    parser.add_argument("--split", default="train", help="SciFact qrels split: train (development) or test")
    parser.add_argument("--sts", default="dev", choices=("dev", "test"))
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    args = parser.parse_args()
    data = data_root()
    retrieval_set = read_beir(data / "scifact", args.split)
    pairs = read_sts(data / f"stsb/sts-{args.sts}.csv")
    base = TextEncoder.from_folder("minilm")
    documents = encode_corpus(base, retrieval_set, precision=args.precision)
    depth = search_depth((10, 100), True)  # evaluate_retrieval's: Recall@100 with identical ids ignored
    _, bm25_top = bm25_search(retrieval_set.documents(DOCUMENT_SEPARATOR), retrieval_set.queries, k=depth)
    bm25_scores = per_query_ndcg(ranked_doc_ids(bm25_top, retrieval_set), retrieval_set.qrels)
    print(f"BM25 nDCG@10 on SciFact {args.split}: {100 * bm25_scores.mean():.2f}")
    print(f"| query encoder | STS-B {args.sts} | SciFact {args.split} nDCG@10 | Recall@100 | MRR@10 | "
          "change of nDCG@10 vs base [95 % CI] | queries up / down | change vs BM25 [95 % CI] |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base_scores = None
    for name, encoder in [("all-MiniLM-L6-v2 (base)", base)] + [(m, load_text_encoder(m)) for m in args.models]:
        # The ranking of evaluate_retrieval (exact cosine top-k with faiss), kept per query.
        queries = encode_texts(encoder, retrieval_set.queries, 64, args.precision)
        _, top = search(queries, documents, k=depth, metric="cosine")
        rankings = ranked_doc_ids(top, retrieval_set)
        metrics = retrieval_metrics(rankings, retrieval_set.qrels)
        scores = per_query_ndcg(rankings, retrieval_set.qrels)
        assert abs(scores.mean() - metrics["ndcg@10"]) < 1e-9  # the per-query values are the metric's
        change = ""
        if base_scores is None:
            base_scores = scores
        else:
            delta = scores - base_scores
            low, high = paired_bootstrap(delta)
            change = (f"{100 * delta.mean():+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] | "
                      f"{int((delta > 1e-12).sum())} / {int((delta < -1e-12).sum())}")
        versus = scores - bm25_scores
        low, high = paired_bootstrap(versus)
        sts = sts_spearman(encoder, pairs)
        print(f"| {name} | {sts:.2f} | {100 * metrics['ndcg@10']:.2f} | {100 * metrics['recall@100']:.2f} | "
              f"{100 * metrics['mrr@10']:.2f} | {change or '– | –'} | "
              f"{100 * versus.mean():+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] |", flush=True)


if __name__ == "__main__":
    main()
