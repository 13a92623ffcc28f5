"""Which side of a general-guard retrieval set does a term residual cost on (issue 31)?

The general guard (:mod:`contrastkit.modalities.text.general_guard`) embeds both sides of its retrieval sets
with the encoder under test. For a trained term residual this prints, on each retrieval set of the guard
(code-docstring, WordNet definitions, COCO captions), the loss (base minus adapted, points) with the
residual on both sides, on the queries only (the other side embedded by the base model) and on the
documents only -- e.g. whether WordNet definitions lose through the definitions (sentences) or through
the lemmas (one or two tokens, which get a token's whole row).

    python benchmarks/guard_sides.py RUN/encoder [RUN2/encoder ...] [--alphas 1 0.75] [--split dev]

Reads the dev splits unless told otherwise (the test splits are the guard's report, not a diagnosis
tool). ``--cache`` reuses ``benchmarks/adaptation_guard.py``'s pooled states of the guard's texts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import evaluate_retrieval
from contrastkit.modalities.text.general_guard import GUARD_SPLITS, RETRIEVAL_SETS, FrozenBaseCache

SIDES = ("both", "queries only", "documents only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoders", nargs="+", help="folders of trained encoders with a term residual")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.75], help="residual scales")
    parser.add_argument("--split", choices=GUARD_SPLITS, default="dev")
    parser.add_argument("--cache", default="runs/adaptation-guard/guard-pooled.pt",
                        help="pooled states of the guard's texts (read if present)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = FrozenBaseCache()
    if Path(args.cache).is_file():
        cache.pooled.update(torch.load(args.cache))
    base = cache.wrap(TextEncoder.from_folder("minilm").eval())
    sets = {name: guard.build(args.split) for name, guard in RETRIEVAL_SETS.items()}
    reference = {name: evaluate_retrieval(base, data, k_values=(10,), cache_dir=False, document_encoder=base)
                 for name, data in sets.items()}
    print(f"Loss (points, base minus adapted) on the guard's {args.split} retrieval sets, by the side that "
          "carries the residual\n")
    print("| encoder | alpha | set | metric | " + " | ".join(SIDES) + " |")
    print("|---|---:|---|---|" + "---:|" * len(SIDES))
    for folder in args.encoders:
        encoder = TextEncoder.from_folder(folder).eval()
        if encoder.term_residual is None:
            raise SystemExit(f"{folder} has no term residual.")
        for alpha in args.alphas:
            encoder.term_residual.restrict(scale=alpha)
            adapted = cache.wrap(encoder)
            for name, data in sets.items():
                metric = RETRIEVAL_SETS[name].metric
                towers = {"both": (adapted, adapted), "queries only": (adapted, base),
                          "documents only": (base, adapted)}
                losses = []
                for side in SIDES:
                    queries, documents = towers[side]
                    result = evaluate_retrieval(queries, data, k_values=(10,), cache_dir=False,
                                                document_encoder=documents)
                    losses.append(100.0 * (reference[name][metric] - result[metric]))
                print(f"| {folder} | {alpha:g} | {name} | {metric} | " + " | ".join(f"{v:+.2f}" for v in losses) + " |")


if __name__ == "__main__":
    main()
