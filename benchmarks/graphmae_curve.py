"""GraphMAE on Cora: the linear probe along one pretraining run, for both GAT initialisations.

    OMP_NUM_THREADS=1 python benchmarks/graphmae_curve.py --init graphmae --epochs 1500 --every 100
    OMP_NUM_THREADS=1 python benchmarks/graphmae_curve.py --init pyg --epochs 500 --every 100

Trains GraphMAE with the paper's Cora settings (the CLI's defaults: Adam lr 1e-3, weight decay
2e-4, cosine decay over ``--epochs``) and every ``--every`` epochs scores the embeddings with
GraphMAE's probe (3 probe seeds) and the logreg probe, and prints their mean norm. A learning
curve for the docs, never a way to pick an epoch: the CLI trains the fixed epochs and scores once.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from contrastkit.modalities.graph.cli import open_graph_source
from contrastkit.modalities.graph.evaluate import adam_probe_accuracy, split_probe_accuracy
from contrastkit.modalities.graph.graphmae import GraphMAE
from contrastkit.modalities.graph.train import (
    GraphTrainConfig,
    embed_nodes,
    seed_everything,
    train_graph_method,
)
from contrastkit.modalities.graph.sources import row_normalize_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", choices=("graphmae", "pyg"), default="graphmae")
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    graph = open_graph_source("cora")
    graph = graph.with_features(row_normalize_features(graph.x))
    seed_everything(args.seed)
    model = GraphMAE(graph.num_features, init=args.init)
    config = GraphTrainConfig(epochs=args.epochs, lr=1e-3, weight_decay=2e-4, cosine_schedule=True, seed=args.seed)
    started = time.perf_counter()
    print("| epoch | SCE loss | probe (GraphMAE's, 3 seeds) | probe (logreg) | mean embedding norm |")
    print("|---:|---:|---:|---:|---:|")

    def report(epoch: int, record: dict[str, float]) -> None:
        if (epoch + 1) % args.every and epoch + 1 != args.epochs:
            return
        z = embed_nodes(model, graph)
        adam = np.mean([adam_probe_accuracy(z, graph, seed=s)["test"] for s in range(3)])
        logreg = split_probe_accuracy(z, graph)["test"]
        print(f"| {epoch + 1} | {record['loss']:.4f} | {100 * adam:.1f} | {100 * logreg:.1f} | "
              f"{float(z.norm(dim=1).mean()):.3f} |", flush=True)

    train_graph_method(model, graph, config, log=None, after_epoch=report)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
