"""What int8 and binary embeddings cost in retrieval: SciFact nDCG@10 and index memory with
all-MiniLM-L6-v2, at float32, int8 and binary, with and without rescoring.

    OMP_NUM_THREADS=1 python benchmarks/quantization_scifact.py            # dev queries (default)

Queries are SciFact's development carve (``read_beir(..., "dev")``: a fixed hash-split share of the
train queries); the test queries are never read. The corpus embeddings come from the embedding cache
(``$CONTRASTKIT_CACHE`` or ``~/.cache/contrastkit``) when an earlier evaluation wrote them. Every
row searches the same L2-normalised embeddings (:mod:`contrastkit.evaluation.quantization`):

- float32: exact cosine (faiss's flat inner-product index);
- int8: the float query against int8 codes whose per-dimension ranges are calibrated on the corpus;
- binary: Hamming distance between sign bits;
- ``+ rescore R``: 4 x 10 candidates fetched by the quantized search, ranked again against the R rows.

Memory is what the search keeps: the codes (measured as faiss's serialised index, which adds a small
header) and, for a rescored row, the rescoring rows too (these may stay on disk, memory-mapped).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from contrastkit.core.paths import data_root
from contrastkit.evaluation.arrays import l2_normalize_rows
from contrastkit.evaluation.quantization import QuantizedSearch
from contrastkit.modalities.text.encoders import load_text_encoder
from contrastkit.modalities.text.evaluation import (
    encode_corpus,
    encode_texts,
    ranked_doc_ids,
    retrieval_metrics,
    search_depth,
)
from contrastkit.modalities.text.sources import read_beir

ROWS = (("float32", None), ("int8", None), ("int8", "float32"), ("binary", None), ("binary", "int8"),
        ("binary", "float32"))


def serialized_bytes(search: QuantizedSearch) -> int:
    write = faiss.serialize_index_binary if search.precision == "binary" else faiss.serialize_index
    stored = int(write(search.index).size)
    if search.rescore is not None:
        stored += int(search.rescoring_rows.nbytes)
        stored += 8 * search.dim if search.rescore == "int8" else 0  # the int8 ranges
    return stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="dev", help="SciFact qrels split (default dev; test only once chosen)")
    parser.add_argument("--rescore-multiplier", type=int, default=4)
    args = parser.parse_args()

    scifact = read_beir(data_root() / "scifact", args.split)
    encoder = load_text_encoder("minilm")
    started = time.perf_counter()
    corpus = l2_normalize_rows(encode_corpus(encoder, scifact))
    queries = l2_normalize_rows(encode_texts(encoder, scifact.queries))
    print(f"SciFact {args.split}: {len(scifact.query_ids)} queries, {len(scifact.doc_ids)} documents, "
          f"dimension {corpus.shape[1]} (embedded or read from the cache in {time.perf_counter() - started:.0f} s)\n")

    depth = search_depth((10,), ignore_identical_ids=True)
    print(f"| precision | rescoring | nDCG@10 | Recall@10 | memory (KiB) | float32 / this | search (ms, all queries) |")
    print("|---|---|---|---|---|---|---|")
    baseline_bytes = None
    for precision, rescore in ROWS:
        search = QuantizedSearch(corpus, precision, rescore=rescore, rescore_multiplier=args.rescore_multiplier)
        started = time.perf_counter()
        _, rows = search.search(queries, depth)
        elapsed = 1000 * (time.perf_counter() - started)
        metrics = retrieval_metrics(ranked_doc_ids(rows, scifact), scifact.qrels, (10,))
        stored = serialized_bytes(search)
        baseline_bytes = baseline_bytes or stored
        print(f"| {precision} | {rescore or '-'} | {100 * metrics['ndcg@10']:.2f} | {100 * metrics['recall@10']:.2f} "
              f"| {stored / 1024:.0f} | {baseline_bytes / stored:.1f}x | {elapsed:.1f} |")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
