"""What a corpus gate lets through (issue 31): for each gate quantile, its thresholds, and for each set of
development texts the share of the term residual the gate gives them (0: the base model; 1: the whole
residual). The gate is placed from SciFact's documents and WikiText-2's sentences only
(:func:`~contrastkit.modalities.text.methods.hybrid_distill.fit_corpus_gate`); the texts are SciFact's
development claims and the general guard's dev splits. Base model: all-MiniLM-L6-v2 (fp32). Prints Markdown.

    python benchmarks/gate_shares.py [--quantiles 0.05 0.1 0.2] [--table 0.2] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch

from contrastkit.core.paths import data_root
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import encode_corpus
from contrastkit.modalities.text.general_guard import coco_captions_set, code_docstring_set, wordnet_definitions_set
from contrastkit.modalities.text.methods.hybrid_distill import fit_corpus_gate
from contrastkit.modalities.text.sources import read_beir, read_sts
from contrastkit.modalities.text.term_residual import gate_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--table", type=float, default=0.2, help="the quantile whose shares are tabled")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TextEncoder.from_folder("minilm").eval()
    scifact = read_beir(data_root() / "scifact", "dev")
    documents = torch.from_numpy(encode_corpus(base, scifact, None, precision="fp32"))
    gates = {q: fit_corpus_gate(base, documents, q) for q in dict.fromkeys(args.quantiles + [args.table])}
    print("| gate quantile | lo | hi |\n|---:|---:|---:|")
    for q, (_, low, high) in gates.items():
        print(f"| {q:g} | {low:.3f} | {high:.3f} |")
    definitions = wordnet_definitions_set("dev")
    sts = read_sts(data_root() / "stsb" / "sts-dev.csv")
    texts = {"SciFact dev claims": scifact.queries, "WordNet definitions": definitions.queries,
             "WordNet lemmas": definitions.texts, "code-docstring docstrings": code_docstring_set("dev").queries,
             "COCO captions": coco_captions_set("dev").texts,
             "STS-B dev sentences": list(dict.fromkeys(sts.first + sts.second))}
    print(f"\nShare of the residual under gate {args.table:g}\n")
    print("| dev texts | n | share 0 (%) | share 1 (%) | mean share |\n|---|---:|---:|---:|---:|")
    for name, items in texts.items():
        share = gate_share(base.encode(list(items)), gates[args.table])
        print(f"| {name} | {len(items):,} | {100 * float((share == 0).float().mean()):.1f} | "
              f"{100 * float((share == 1).float().mean()):.1f} | {float(share.mean()):.3f} |")


if __name__ == "__main__":
    main()
