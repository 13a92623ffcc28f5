"""Unsupervised domain adaptation of all-MiniLM-L6-v2 to SciFact, from the corpus's unlabeled
sentences only (../shared/data/scifact/sentences.txt.gz: no queries, no qrels in training).

    OMP_NUM_THREADS=2 python benchmarks/text_adaptation.py --runs ict --steps 300

For each run: train from all-MiniLM-L6-v2 for the same time budget, then score the base model and
every trained encoder side by side on

- STS-B dev and test (Spearman x100; the "general-domain" check: a drop > 1 point fails),
- SciFact *train* queries (809 claims) -- the development set: hyper-parameters and the choice of
  method are read from it, never from the test queries,
- SciFact *test* queries (300 claims): nDCG@10, Recall@100, MRR@10, reported once.

Corpus embeddings are computed under bf16 autocast for every model alike (measured on this CPU:
2.4x faster than fp32, per-document cosine to fp32 >= 0.99997, metrics within 0.05 points; see
docs/benchmarks.md), and cached per model fingerprint. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from contrastkit.core.paths import data_root
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import evaluate_retrieval, sts_spearman
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.sources import read_beir, read_sts
from contrastkit.modalities.text.train import fit_text

# name -> (method, options, context window, lr, batch size, training max_length)
RUNS = {
    "simcse": ("simcse", {}, 0, 3e-5, 64, 64),
    "ict": ("ict", {"keep_sentence": 0.1, "context_length": 96}, 1, 2e-5, 32, 64),
    "ict-lr3e-5": ("ict", {"keep_sentence": 0.1, "context_length": 128}, 2, 3e-5, 64, 64),
    "contriever-context": ("contriever", {"use_context": True}, 2, 1e-5, 64, 128),
    "ccp": ("ccp", {}, 1, 1e-5, 64, 64),
    "debcse": ("debcse", {}, 0, 1e-5, 64, 64),
    # ICT whose passage is the rest of the sentence's own document (title included): the corpus's
    # documents (corpus.jsonl.gz, unlabeled) bound the contexts, which the sentence file cannot.
    "ict-doc": ("ict", {"keep_sentence": 0.1, "context_length": 128}, 64, 1e-5, 32, 64),
}
# Runs trained on the corpus's documents instead of the sentence file.
DOCUMENT_RUNS = {"ict-doc"}


def evaluate(encoder: TextEncoder, data: Path, precision: str) -> dict:
    started = time.perf_counter()
    result = {
        "sts_dev": sts_spearman(encoder, read_sts(data / "stsb" / "sts-dev.csv")),
        "sts_test": sts_spearman(encoder, read_sts(data / "stsb" / "sts-test.csv")),
    }
    for split in ("train", "test"):
        metrics = evaluate_retrieval(encoder, read_beir(data / "scifact", split), precision=precision)
        result[f"scifact_{split}"] = {k: metrics[k] for k in ("ndcg@10", "recall@100", "mrr@10")}
    result["eval_seconds"] = round(time.perf_counter() - started, 1)
    return result


def row(name: str, result: dict, train: str) -> str:
    dev, test = result["scifact_train"], result["scifact_test"]
    return (f"| {name} | {train} | {result['sts_dev']:.2f} | {result['sts_test']:.2f} | "
            f"{100 * dev['ndcg@10']:.2f} | {100 * test['ndcg@10']:.2f} | {100 * test['recall@100']:.2f} | "
            f"{100 * test['mrr@10']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=["ict", "simcse"], choices=sorted(RUNS))
    parser.add_argument("--minutes", type=float, default=None, help="training time budget per run")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (linear decay)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"],
                        help="autocast for training and corpus encoding")
    parser.add_argument("--out", default="runs/text-adaptation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = data_root()
    sentences = data / "scifact" / "sentences.txt.gz"
    out = Path(args.out)

    results = {"base": evaluate(TextEncoder.from_folder("minilm"), data, args.precision)}
    lines = ["| model | training | STS-B dev | STS-B test | SciFact dev nDCG@10 | SciFact test nDCG@10 | "
             "Recall@100 | MRR@10 |", "|---|---|---|---|---|---|---|---|",
             row("all-MiniLM-L6-v2", results["base"], "none")]
    print(lines[-1], flush=True)
    for name in args.runs:
        method_name, options, window, lr, batch, length = RUNS[name]
        encoder = TextEncoder.from_folder("minilm")
        method = build_text_method(method_name, encoder, **options)
        source = data / "scifact" / "corpus.jsonl.gz" if name in DOCUMENT_RUNS else sentences
        summary = fit_text(
            method, SentenceData.from_file(source, context_window=max(window, 1)), batch_size=batch,
            lr=lr, max_minutes=args.minutes, max_steps=args.steps, warmup_steps=20, seed=args.seed, out_dir=out / name,
            max_length=length, precision=args.precision,
            extra_summary={"method": method_name, "options": options},
        )
        results[name] = evaluate(method.encoder, data, args.precision)
        results[name]["training"] = {k: summary[k] for k in ("steps", "train_seconds", "steps_per_second")}
        train = (f"{method_name} {options or ''} lr {lr}, batch {batch}, {summary['steps']} steps, "
                 f"{summary['train_seconds'] / 60:.1f} min")
        lines.append(row(name, results[name], train))
        print(lines[-1], flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
