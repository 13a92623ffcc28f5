"""How much of the guard's supersense loss is k-means noise (issue 31's caveat), on the dev split only.

The general guard scores the WordNet supersenses (noun definitions clustered by their lexicographer
file) as the mean V-measure of 25 MiniBatch k-means runs, seeds 0-24
(:data:`~contrastkit.modalities.text.general_guard.GUARD_KMEANS_SEEDS`), and a setting's loss is the
base model's mean minus the adapted one's. This script keeps the embeddings fixed and changes only
the k-means seeds: ``--runs`` runs (default 200) cut into blocks of 25, so each block is one guard
reading. It prints, per encoder, the single runs' spread and the blocks' means; and for each adapted
encoder its loss against the base model block by block (block i of both uses the same seeds, as the
guard does).

    python benchmarks/guard_kmeans_noise.py --adapted RUN/encoder [--corpus-gate 0.2 --min-tokens 8]

``--adapted`` takes saved encoders (a hybrid-distill run's ``encoder`` folder); ``--corpus-gate q`` and
``--min-tokens m`` restrict their term residual after loading, as the README's snippet does (the gate
from SciFact's documents, ``corpus_gate_for``). Reads the dev sample only.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from contrastkit.core.paths import data_root
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.evaluation import encode_texts
from contrastkit.modalities.text.general_guard import GUARD_KMEANS_SEEDS, task_specs
from contrastkit.modalities.text.task_data import read_clustering_task
from contrastkit.modalities.text.task_metrics import kmeans_v_measure

BLOCK = len(GUARD_KMEANS_SEEDS)  # one guard reading


def v_measures(encoder: TextEncoder, texts: list[str], labels: list[str], runs: int) -> np.ndarray:
    """100 x the V-measure of each k-means seed 0..runs-1 on the encoder's embeddings of ``texts``."""
    unique = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(unique)}
    embeddings = encode_texts(encoder, unique, 64, "fp32")[[row[t] for t in texts]]
    return np.array([100.0 * kmeans_v_measure(embeddings, labels, seeds=[seed])["v_measure"] for seed in range(runs)])


def blocks(values: np.ndarray) -> np.ndarray:
    """The means of consecutive blocks of ``BLOCK`` runs (the last partial block dropped)."""
    whole = len(values) // BLOCK * BLOCK
    return values[:whole].reshape(-1, BLOCK).mean(axis=1)


def load_adapted(folder: str, corpus_gate: float | None, min_tokens: int | None) -> TextEncoder:
    from contrastkit.modalities.text.methods.hybrid_distill import corpus_gate_for

    encoder = TextEncoder.from_folder(folder).eval()
    residual = encoder.term_residual
    if residual is None:
        return encoder
    given = {}  # what is not given keeps what the folder saved
    if corpus_gate:
        given["gate"] = corpus_gate_for(encoder, data_root() / "scifact", corpus_gate)
    if min_tokens:
        given["min_tokens"] = min_tokens
    residual.restrict(**given)
    return encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="minilm", help="the base model (a folder or a known name)")
    parser.add_argument("--adapted", nargs="*", default=[], help="saved adapted encoders")
    parser.add_argument("--corpus-gate", type=float, default=None, help="corpus gate quantile for --adapted")
    parser.add_argument("--min-tokens", type=int, default=None, help="length ramp for --adapted")
    parser.add_argument("--runs", type=int, default=200, help=f"k-means seeds 0..runs-1 (blocks of {BLOCK})")
    args = parser.parse_args()
    if args.runs < 2 * BLOCK:
        parser.error(f"--runs must be at least {2 * BLOCK} (two guard readings)")

    texts, labels = read_clustering_task(task_specs()["wordnet-supersenses"], "dev")
    encoders = {"base": TextEncoder.from_folder(args.base).eval()}
    for folder in args.adapted:
        encoders[folder] = load_adapted(folder, args.corpus_gate, args.min_tokens)
    values = {name: v_measures(encoder, texts, labels, args.runs) for name, encoder in encoders.items()}

    print(f"\nWordNet supersenses, dev sample ({len(texts):,} definitions, {len(set(labels))} labels): V-measure x 100 "
          f"of k-means seeds 0-{args.runs - 1}; a guard reading is the mean of {BLOCK} (seeds 0-{BLOCK - 1} "
          f"for the guard's own)\n")
    print("| encoder | single run: mean (sd) | guard's reading (seeds 0-24) | "
          f"{args.runs // BLOCK} readings: median (min–max) | sd of a reading |")
    print("|---|---:|---:|---:|---:|")
    for name, v in values.items():
        readings = blocks(v)
        print(f"| {name} | {v.mean():.2f} ({v.std(ddof=1):.2f}) | {readings[0]:.2f} | "
              f"{statistics.median(readings):.2f} ({readings.min():.2f}–{readings.max():.2f}) | "
              f"{readings.std(ddof=1):.2f} |")
    if len(values) > 1:
        print("\nLoss against the base model (base minus adapted), reading by reading with the same seeds:\n")
        print("| encoder | guard's loss (seeds 0-24) | losses: median (min–max) | sd |")
        print("|---|---:|---:|---:|")
        base = blocks(values["base"])
        for name, v in values.items():
            if name == "base":
                continue
            losses = base - blocks(v)
            print(f"| {name} | {losses[0]:.2f} | {statistics.median(losses):.2f} "
                  f"({losses.min():.2f}–{losses.max():.2f}) | {losses.std(ddof=1):.2f} |")


if __name__ == "__main__":
    main()
