"""Quick screening of SciFact adaptations that use the corpus's documents (unlabeled: no query, no qrel).

    OMP_NUM_THREADS=2 python benchmarks/text_adaptation_quick.py --task title-abstract --lr 1e-5 --epochs 1
    OMP_NUM_THREADS=2 python benchmarks/text_adaptation_quick.py --task ict-doc --lr 1e-5 --steps 150

Both start from all-MiniLM-L6-v2 (title-abstract in fp32, ict-doc with bf16 forward passes) and train with in-batch negatives at temperature
0.05 (the scale it was trained with), and stop after about 17-18 minutes of two loaded cores:

- ``title-abstract``: one shared tower (no head, fixed temperature), symmetric InfoNCE (``clip``)
  on the 5,183 (title, abstract) pairs of ``scifact/corpus.jsonl.gz``;
- ``ict-doc``: the ``ict`` method, a sentence -> the rest of its own document (title first; 10 %
  of the time the sentence stays in), contexts of 128 tokens, from the same file read as documents.

Then STS-B dev, and nDCG@10 on the development queries (SciFact's train claims) over a fixed
2,500-document subset that holds all their relevant documents (``subsample_retrieval_set``, seed 0:
cheaper than the full corpus; compare rows with each other only). ``--full`` adds the full
development and test corpora and STS-B test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from contrastkit.modalities.pairs.pairs import read_pairs
from contrastkit.modalities.pairs.text_towers import text_two_tower
from contrastkit.modalities.pairs.train import TrainOptions, train_two_tower
from contrastkit.modalities.pairs.two_tower import TwoTowerOptions
from contrastkit.core.paths import data_root
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import (
    evaluate_retrieval,
    sts_spearman,
    subsample_retrieval_set,
)
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.sources import read_beir, read_sts
from contrastkit.modalities.text.train import fit_text


def evaluate(encoder: TextEncoder, full: bool) -> dict:
    data = data_root()
    dev = read_beir(data / "scifact", "train")
    result = {
        "sts_dev": sts_spearman(encoder, read_sts(data / "stsb/sts-dev.csv"), precision="bf16"),
        "dev_subset_ndcg@10": evaluate_retrieval(encoder, subsample_retrieval_set(dev, 809, 2500, seed=0),
                                                 precision="bf16")["ndcg@10"],
    }
    if full:
        result["sts_test"] = sts_spearman(encoder, read_sts(data / "stsb/sts-test.csv"), precision="bf16")
        result["dev_ndcg@10"] = evaluate_retrieval(encoder, dev, precision="bf16")["ndcg@10"]
        test = evaluate_retrieval(encoder, read_beir(data / "scifact", "test"), precision="bf16")
        result["test"] = {k: test[k] for k in ("ndcg@10", "recall@100", "mrr@10")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("title-abstract", "ict-doc"), default="title-abstract")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--steps", type=int, default=150, help="ict-doc: optimiser steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--title-length", type=int, default=48)
    parser.add_argument("--abstract-length", type=int, default=128)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--base", action="store_true", help="also evaluate the untrained model")
    args = parser.parse_args()
    results = {"args": vars(args)}
    if args.base:
        results["base"] = evaluate(TextEncoder.from_folder("minilm"), args.full)
    started = time.perf_counter()
    if args.task == "title-abstract":
        pairs = read_pairs(data_root() / "scifact" / "corpus.jsonl.gz", "title", "text")
        options = TwoTowerOptions(head="none", objective="clip", temperature=0.05, learn_temperature=False)
        model, titles, abstracts = text_two_tower(options, "minilm", max_length_a=args.title_length,
                                                  max_length_b=args.abstract_length)
        # fp32: train_two_tower has no autocast of its own, and wrapping the whole loop in one would
        # put the optimiser step under bf16 autocast too (the bug fixed in fit_text, docs/benchmarks.md).
        train_two_tower(model, pairs, titles, abstracts,
                        TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr), progress_bar=True)
        encoder = model.encoder("a")
    else:
        documents = SentenceData.from_file(data_root() / "scifact" / "corpus.jsonl.gz", context_window=64)
        method = build_text_method("ict", TextEncoder.from_folder("minilm"), keep_sentence=0.1, context_length=128)
        with tempfile.TemporaryDirectory() as folder:
            fit_text(method, documents, batch_size=args.batch_size, lr=args.lr, max_steps=args.steps,
                     warmup_steps=max(1, args.steps // 10), out_dir=Path(folder) / "run", max_length=64,
                     precision="bf16", log_every=10)
        encoder = method.encoder
    results["train_minutes"] = round((time.perf_counter() - started) / 60, 1)
    results["adapted"] = evaluate(encoder.eval(), args.full)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
