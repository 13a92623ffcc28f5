"""The corpus gate and the length ramp applied while the term residual learns, against the same applied
after training (issue 31). ``adaptation_guard.py`` chose, on development data, ``residual_l2`` 0.5 in
training and the gate (quantile 0.2) with the ramp (8 tokens) afterwards; a user who passes
``--option corpus_gate=0.2 --option residual_min_tokens=8`` gets them during training too (a general
sentence's tokens then learn nothing from it). This trains that variant for each seed and scores it as
``adaptation_guard.py`` scores its settings: SciFact's development claims and the guard's **dev** splits
only (no test split is read), beside the after-training row of ``adaptation_guard.py``'s results (run it
first, with the same ``--out``: it holds the base rows and the cached pooled states).

    python benchmarks/gate_in_training.py --out runs/adaptation-guard --seeds 0 1 [--threads 1]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adaptation_guard import pooled_sentences, read_results, score, train  # noqa: E402

from contrastkit.core.paths import data_root  # noqa: E402
from contrastkit.modalities.text.data import SentenceData  # noqa: E402
from contrastkit.modalities.text.encoders import TextEncoder  # noqa: E402
from contrastkit.modalities.text.general_guard import GUARD_SETS, FrozenBaseCache, guard_loss  # noqa: E402
from contrastkit.modalities.text.sources import read_beir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/adaptation-guard")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--l2", type=float, default=0.5)
    parser.add_argument("--gate", type=float, default=0.2)
    parser.add_argument("--min-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    recorded = read_results(out)
    cache = FrozenBaseCache()
    cache.pooled.update(torch.load(out / "guard-pooled.pt"))
    base = TextEncoder.from_folder("minilm").eval()
    scifact = data_root() / "scifact"
    sentences = SentenceData.from_file(scifact / "sentences.txt.gz")
    pooled = pooled_sentences(base, sentences.texts, out / "sentences-pooled.pt")
    dev = read_beir(scifact, "dev")
    options = {"corpus_gate": args.gate, "residual_min_tokens": args.min_tokens}
    after_name = f"gate {args.gate:g} + min {args.min_tokens} tokens"
    print(f"| seed | gate {args.gate:g} + ramp {args.min_tokens}, residual_l2 {args.l2:g} | dev nDCG@10 gain | "
          + " | ".join(f"{n} loss" for n in GUARD_SETS) + " | mean loss | max loss |")
    print("|---:|---|---:|" + "---:|" * (len(GUARD_SETS) + 2))
    for seed in args.seeds:
        reference = recorded[("dev", seed, None, "base")]
        during = score(train(seed, (args.l2, 0.0, 0.0), out, sentences, pooled, options), base, dev, "dev", cache)
        for name, row in (("after training", recorded[("dev", seed, args.l2, after_name)]),
                          ("in training", during)):
            loss = guard_loss(reference["guard"], row["guard"])
            print(f"| {seed} | {name} | {row['ndcg@10'] - reference['ndcg@10']:+.2f} | "
                  + " | ".join(f"{loss[n]:+.2f}" for n in GUARD_SETS) + f" | {loss['mean']:.2f} | {loss['max']:.2f} |")


if __name__ == "__main__":
    main()
