"""Build the candidate lists of the SciFact reranking task (scifact-reranking.yaml).

For each claim of a split (dev: the fixed carve of the train claims, `in_dev_carve`; test: qrels/test.tsv),
the candidates are the 20 abstracts BM25 ranks first over the whole corpus (bm25s, Lucene scoring,
k1 1.5, b 0.75, stemmed, English stopwords: `contrastkit.modalities.text.bm25`), plus every relevant
abstract BM25 missed. Positives: the claim's relevant abstracts (qrels grade > 0); negatives: the other
BM25 candidates, in BM25 order. Lines hold ids of the SciFact BEIR folder, which the task file names as
its `corpus`:

    {"query": "<claim id>", "positive": ["<doc id>", ...], "negative": ["<doc id>", ...]}

Run from the repository root (BM25 only, about 10 s):

    python benchmarks/text_tasks/build_scifact_reranking.py [--data $CONTRASTKIT_DATA/scifact]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastkit.core.paths import data_root
from contrastkit.modalities.text.bm25 import BM25Index
from contrastkit.modalities.text.evaluation import DOCUMENT_SEPARATOR
from contrastkit.modalities.text.sources import read_beir

DEPTH = 20


def candidate_lists(folder: Path, split: str, depth: int = DEPTH) -> tuple[list[dict], dict[str, int]]:
    retrieval_set = read_beir(folder, split)
    index = BM25Index(retrieval_set.documents(DOCUMENT_SEPARATOR))
    _, ranked = index.search(retrieval_set.queries, k=depth)
    rows, added = [], 0
    for query, top in zip(retrieval_set.query_ids, ranked.tolist()):
        relevant = [doc for doc, grade in retrieval_set.qrels[query].items() if grade > 0]
        top_ids = [retrieval_set.doc_ids[i] for i in top]
        added += sum(doc not in top_ids for doc in relevant)
        rows.append({"query": query, "positive": relevant, "negative": [d for d in top_ids if d not in relevant]})
    stats = {"queries": len(rows), "positives": sum(len(r["positive"]) for r in rows),
             "positives_added_outside_top": added,
             "queries_without_negatives": sum(not r["negative"] for r in rows)}
    return rows, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(data_root() / "scifact"), help="the SciFact BEIR folder")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"), help="folder of the candidate files")
    parser.add_argument("--splits", default="dev,test")
    args = parser.parse_args()
    for split in args.splits.split(","):
        rows, stats = candidate_lists(Path(args.data), split)
        out = Path(args.out) / f"scifact-reranking-{split}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"{out}: {json.dumps(stats)}")


if __name__ == "__main__":
    main()
