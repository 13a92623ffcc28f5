"""Matryoshka training and mined hard negatives for text (issue 26), on SciFact's dev carve and STS-B dev.

    python benchmarks/text_matryoshka_negatives.py --out runs/issue26 --steps 100 --batch-size 16 \\
        --max-length 64 --eval-documents 1000

Four encoders, all from all-MiniLM-L6-v2, trained with the same seed, steps, batch, learning rate and lengths:

- base: the model itself, untrained;
- in-batch: ``mnrl`` on (claim, abstract) rows of SciFact's train qrels, the dev carve left out (and
  the two train claims that repeat a dev claim's text), in-batch negatives only;
- in-batch + MRL: the same with Matryoshka dimensions 384, 256, 128, 64 (weights 1);
- mined: ``mnrl`` on the same rows with one mined negative each (BM25, ranks 4..30, relative margin 0.05,
  the best ranked candidate; rows without one are dropped), in-batch negatives too.

Each is scored at 384, 256, 128 and 64 dimensions (the embedding cut and re-normalised): nDCG@10 on the
dev carve of SciFact's train claims (268 claims; against the full corpus, or with ``--eval-documents N``
against their relevant abstracts plus random others up to N, a quick-check figure that is higher than
on the full corpus) and STS-B dev Spearman. Three comparisons get a 95 % paired bootstrap interval over
the dev claims (2,000 resamples of the per-claim nDCG@10 difference), at each dimension: in-batch + MRL
against the base model and against in-batch (what Matryoshka adds to the same fine-tuning), and mined
against in-batch. The test splits are not read. Results go to
``<out>/results.json`` and the tables are printed. Trained encoders already in ``<out>`` are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from contrastkit.core.paths import data_root
from contrastkit.evaluation.retrieval import ndcg_at_k, search
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import (
    encode_corpus,
    encode_texts,
    evaluate_retrieval_at_dims,
    ranked_doc_ids,
    sts_spearman_at_dims,
    subsample_retrieval_set,
)
from contrastkit.modalities.text.matryoshka import use_matryoshka
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.mining import beir_training_rows, mine_hard_negatives
from contrastkit.modalities.text.pair_data import PairData
from contrastkit.modalities.text.sources import read_beir, read_sts
from contrastkit.modalities.text.tables import TrainingPairs, write_training_pairs
from contrastkit.modalities.text.train import fit_text

DIMS = [384, 256, 128, 64]
COMPARISONS = (("in-batch + MRL", "base"), ("in-batch + MRL", "in-batch"), ("mined", "in-batch"))
MINING = {"retriever": "bm25", "num_negatives": 1, "skip_top": 3, "max_rank": 30, "relative_margin": 0.05}


def in_batch_rows(folder: Path) -> TrainingPairs:
    """(claim, abstract) for every relevant abstract of the train claims outside the dev carve."""
    train, _ = beir_training_rows(folder, "train")
    position = {doc: i for i, doc in enumerate(train.doc_ids)}
    documents = train.documents()
    anchors, positives = [], []
    for query_id, query in zip(train.query_ids, train.queries):
        for doc in sorted(train.qrels[query_id], key=position.get):
            anchors.append(query)
            positives.append(documents[position[doc]])
    return TrainingPairs(anchors, positives, [()] * len(anchors), name="scifact train (no dev carve)")


def train(name: str, rows: TrainingPairs, args, matryoshka: bool) -> TextEncoder:
    folder = Path(args.out) / name
    if (folder / "encoder").is_dir():
        return TextEncoder.from_folder(folder / "encoder")
    method = build_text_method("mnrl", TextEncoder.from_folder("minilm"), document_length=args.max_length)
    if matryoshka:
        use_matryoshka(method, DIMS)
    summary = fit_text(method, PairData(rows), batch_size=args.batch_size, lr=args.lr, max_steps=args.steps,
                       warmup_steps=max(1, args.steps // 10), seed=args.seed, out_dir=folder, log_every=10,
                       max_length=args.max_length, device="cpu", precision=args.precision,
                       extra_summary={"method": "mnrl", "rows": len(rows), "matryoshka": matryoshka})
    print(f"{name}: {summary['steps']} steps in {summary['train_seconds']} s", flush=True)
    return method.encoder


def per_query_ndcg(encoder: TextEncoder, dev, cache_dir: Path, precision: str) -> dict[int, np.ndarray]:
    """nDCG@10 of each dev claim at each dimension (the corpus embeddings come from the cache)."""
    corpus = encode_corpus(encoder, dev, cache_dir, precision=precision)
    queries = encode_texts(encoder, dev.queries, 64, precision)
    scores = {}
    for m in DIMS:
        _, indices = search(queries[:, :m], corpus[:, :m], k=11, metric="cosine")
        rankings = ranked_doc_ids(indices, dev)
        scores[m] = np.array([100 * ndcg_at_k({q: rankings[q]}, {q: dev.qrels[q]}, 10, ignore_identical_ids=True)
                              for q in dev.query_ids])
    return scores


def paired_interval(delta: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(resamples, len(delta)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 2), round(float(np.percentile(means, 97.5)), 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the runs, the mined file and results.json")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=64, help="tokens of claims and abstracts in training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--eval-documents", type=int, help="score against this many documents (quick check)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scifact, started = data_root() / "scifact", time.time()

    rows = in_batch_rows(scifact)
    mined_file = out / "mined.jsonl"
    if not mined_file.is_file():
        mined = mine_hard_negatives(scifact, mined_file, split="train", **MINING)
        print(f"mined: {json.dumps(mined.report())}", flush=True)
    mined_rows = PairData.from_file(mined_file).pairs
    write_training_pairs(rows, out / "in_batch.jsonl")  # what the in-batch runs train on, for the record

    models = {"base": TextEncoder.from_folder("minilm"),
              "in-batch": train("in-batch", rows, args, matryoshka=False),
              "in-batch + MRL": train("in-batch-mrl", rows, args, matryoshka=True),
              "mined": train("mined", mined_rows, args, matryoshka=False)}

    dev = read_beir(scifact, "dev")
    if args.eval_documents:
        dev = subsample_retrieval_set(dev, len(dev.query_ids), args.eval_documents, seed=0)
    sts = read_sts(data_root() / "stsb" / "sts-dev.csv")
    results = {"settings": {**vars(args), "mining": MINING, "rows": len(rows), "mined_rows": len(mined_rows),
                            "dev_queries": len(dev.query_ids), "dev_documents": len(dev.doc_ids)}, "models": {}}
    per_query = {}
    for name, encoder in models.items():
        retrieval = evaluate_retrieval_at_dims(encoder, dev, DIMS, cache_dir=out / "cache", precision=args.precision)
        per_query[name] = per_query_ndcg(encoder, dev, out / "cache", args.precision)
        for m in DIMS:  # the per-claim scores are the library's metric, claim by claim
            assert abs(per_query[name][m].mean() - 100 * retrieval[m]["ndcg@10"]) < 1e-6
        spearman = sts_spearman_at_dims(encoder, sts, DIMS, precision=args.precision)
        results["models"][name] = {m: {"ndcg@10": 100 * retrieval[m]["ndcg@10"], "sts": spearman[m]} for m in DIMS}
        print(f"scored {name}", flush=True)
    results["paired"] = {f"{a} - {b}": {m: {"mean": round(float((per_query[a][m] - per_query[b][m]).mean()), 2),
                                           "ci95": paired_interval(per_query[a][m] - per_query[b][m]),
                                           "up": int((per_query[a][m] > per_query[b][m]).sum()),
                                           "down": int((per_query[a][m] < per_query[b][m]).sum())} for m in DIMS}
                         for a, b in COMPARISONS}
    results["seconds"] = round(time.time() - started)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(format_tables(results))


def format_tables(results: dict) -> str:
    lines = []
    for key, title in (("ndcg@10", "SciFact dev carve nDCG@10"), ("sts", "STS-B dev Spearman")):
        lines += [f"\n{title}", "| model | " + " | ".join(str(m) for m in DIMS) + " |",
                  "|---|" + "---:|" * len(DIMS)]
        for name, scores in results["models"].items():
            lines.append(f"| {name} | " + " | ".join(f"{scores[m][key]:.2f}" for m in DIMS) + " |")
    lines += ["\nnDCG@10 change, paired over the dev claims: mean [95 % CI] (claims up / down)",
              "| comparison | " + " | ".join(str(m) for m in DIMS) + " |", "|---|" + "---:|" * len(DIMS)]
    for comparison, by_dim in results["paired"].items():
        cells = [f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] ({d['up']}/{d['down']})"
                 for d in (by_dim[m] for m in DIMS)]
        lines.append(f"| {comparison} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
