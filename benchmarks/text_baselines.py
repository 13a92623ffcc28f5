"""Text baselines: all-MiniLM-L6-v2 on STS-B test and SciFact test, BM25 on SciFact, and the
cost/effect of bf16 autocast for encoding on a subset.

    OMP_NUM_THREADS=2 python benchmarks/text_baselines.py            # full table (~10-15 min on 2 cores)
    OMP_NUM_THREADS=2 python benchmarks/text_baselines.py --skip-dense-scifact   # STS-B, BM25, bf16 only

The SciFact corpus embeddings go to the embedding cache (``$CONTRASTKIT_CACHE`` or
``~/.cache/contrastkit``): a second run, and every later evaluation of the unchanged base model,
reads them instead of re-encoding (the table says whether the corpus came from the cache).

Published: all-MiniLM-L6-v2's model card gives STS-B test Spearman 82.03; MTEB / the BEIR
leaderboard give SciFact nDCG@10 64.5 for it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.evaluation.retrieval import search
from contrastkit.modalities.text.bm25 import evaluate_bm25
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import (
    DOCUMENT_SEPARATOR,
    corpus_cache_path,
    encode_corpus,
    encode_texts,
    evaluate_retrieval,
    ranked_doc_ids,
    retrieval_metrics,
    search_depth,
    sts_spearman,
    subsample_retrieval_set,
)
from contrastkit.modalities.text.sources import read_beir, read_sts

PUBLISHED = {"sts": 82.03, "ndcg@10": 64.5}


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def cache_has(encoder: TextEncoder, retrieval_set, cache_dir: Path | None) -> bool:
    """Whether the corpus embeddings are already cached (looked up without encoding)."""
    return corpus_cache_path(encoder, retrieval_set.documents(DOCUMENT_SEPARATOR), cache_dir).is_file()


def bf16_comparison(encoder: TextEncoder, scifact, stsb_test, n_docs: int, n_queries: int) -> list[str]:
    """fp32 vs bf16 autocast on a SciFact subset (time, embedding agreement, metrics) and STS-B."""
    subset = subsample_retrieval_set(scifact, n_queries=n_queries, n_documents=n_docs, seed=0)
    header = (f"\nbf16 autocast vs fp32 on a SciFact subset ({len(subset.doc_ids)} docs, "
              f"{len(subset.query_ids)} queries; metrics on a subset are higher than on the full corpus):")
    lines = [header]
    results = {}
    for precision in ("fp32", "bf16"):
        cpu_start = time.process_time()
        corpus, seconds = timed(encode_corpus, encoder, subset, cache_dir=False, precision=precision)
        cpu_seconds = time.process_time() - cpu_start
        queries = encode_texts(encoder, subset.queries, precision=precision)
        _, indices = search(queries, corpus, k=search_depth((10, 100), True), metric="cosine")
        metrics = retrieval_metrics(ranked_doc_ids(indices, subset), subset.qrels)
        sts, sts_seconds = timed(sts_spearman, encoder, stsb_test, precision=precision)
        results[precision] = (corpus, metrics)
        lines.append(f"  {precision}: encode {len(subset.doc_ids)} docs {seconds:6.1f} s "
                     f"({len(subset.doc_ids) / seconds:5.1f} docs/s, CPU {cpu_seconds:.1f} s)   nDCG@10 {100 * metrics['ndcg@10']:.2f}  "
                     f"Recall@100 {100 * metrics['recall@100']:.2f}  MRR@10 {100 * metrics['mrr@10']:.2f}   "
                     f"STS-B test {sts:.2f} ({sts_seconds:.1f} s)")
    a, b = results["fp32"][0], results["bf16"][0]
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    lines.append(f"  cosine(fp32, bf16) per document: mean {cosines.mean():.5f}, min {cosines.min():.5f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--skip-dense-scifact", action="store_true")
    parser.add_argument("--bf16-docs", type=int, default=300)
    parser.add_argument("--bf16-queries", type=int, default=100)
    args = parser.parse_args()
    root = Path(args.data_root)
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    encoder, load_seconds = timed(TextEncoder.from_folder, "minilm")
    stsb_test = read_sts(root / "stsb" / "sts-test.csv")
    scifact = read_beir(root / "scifact", "test")
    rows = []

    sts, seconds = timed(sts_spearman, encoder, stsb_test)
    rows.append(f"| all-MiniLM-L6-v2 | STS-B test ({len(stsb_test)} pairs) | Spearman x100 | "
                f"{sts:.2f} | {PUBLISHED['sts']} | {seconds:.0f} s |")

    if not args.skip_dense_scifact:
        cached = cache_has(encoder, scifact, cache_dir)
        metrics, seconds = timed(evaluate_retrieval, encoder, scifact, cache_dir=cache_dir)
        source = "corpus from cache" if cached else "corpus encoded"
        rows.append(f"| all-MiniLM-L6-v2 | SciFact test ({metrics['queries']} q, {metrics['documents']} docs) | "
                    f"nDCG@10 / Recall@100 / MRR@10 | {100 * metrics['ndcg@10']:.2f} / "
                    f"{100 * metrics['recall@100']:.2f} / {100 * metrics['mrr@10']:.2f} | "
                    f"{PUBLISHED['ndcg@10']} (nDCG@10) | {seconds:.0f} s ({source}) |")

    metrics, seconds = timed(evaluate_bm25, scifact)
    rows.append(f"| BM25 (bm25s, Lucene, k1 1.5, b 0.75, English stemmer + stopwords) | SciFact test | "
                f"nDCG@10 / Recall@100 / MRR@10 | {100 * metrics['ndcg@10']:.2f} / "
                f"{100 * metrics['recall@100']:.2f} / {100 * metrics['mrr@10']:.2f} | 68.6 (lead, bm25s) | "
                f"{seconds:.0f} s |")

    print(f"\nModel load {load_seconds:.1f} s\n")
    print("| model | data | metric | measured | published | wall time |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n".join(bf16_comparison(encoder, scifact, stsb_test, args.bf16_docs, args.bf16_queries)))


if __name__ == "__main__":
    main()
