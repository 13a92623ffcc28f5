"""Hybrid retrieval on SciFact: all-MiniLM-L6-v2's cosine fused with BM25, no training, no labels
in the fusion itself; the dense weight w is chosen on the development queries (SciFact's 809 train
claims) and the test claims are scored once with it.

    python benchmarks/text_hybrid.py            # bf16 corpus encoding, cached per model

Prints a markdown table (w, development nDCG@10, and for the chosen w the test metrics), with the
two ends w = 0 (BM25) and w = 1 (dense) for reference.
"""

from __future__ import annotations

import argparse

from contrastkit.core.paths import data_root
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.hybrid import fused_metrics, hybrid_scores
from contrastkit.modalities.text.sources import read_beir

WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--model", default="minilm")
    args = parser.parse_args()
    data = data_root() / "scifact"
    encoder = TextEncoder.from_folder(args.model)
    dev, test = read_beir(data, "train"), read_beir(data, "test")
    print("| dense weight w | dev nDCG@10 | test nDCG@10 | test Recall@100 | test MRR@10 |")
    print("|---:|---:|---:|---:|---:|")
    # Each split's cosine and BM25 matrices once; every weight only re-fuses them.
    dev_matrices = hybrid_scores(encoder, dev, precision=args.precision)
    dev_scores = {w: fused_metrics(dev, *dev_matrices, w)["ndcg@10"] for w in WEIGHTS}
    chosen = max((w for w in WEIGHTS if 0 < w < 1), key=lambda w: dev_scores[w])
    test_matrices = hybrid_scores(encoder, test, precision=args.precision)
    for w in WEIGHTS:
        shown = w in (0.0, 1.0, chosen)
        test_metrics = fused_metrics(test, *test_matrices, w) if shown else None
        cells = ([f"{100 * test_metrics[k]:.2f}" for k in ("ndcg@10", "recall@100", "mrr@10")] if shown
                 else ["", "", ""])
        label = f"{w:g}" + (" (BM25)" if w == 0 else " (dense)" if w == 1 else " **chosen on dev**" if w == chosen else "")
        print(f"| {label} | {100 * dev_scores[w]:.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
