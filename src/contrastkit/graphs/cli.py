"""``contrastkit graph``: pretrain a graph method over several seeds and evaluate it.

    contrastkit graph --method graphmae --data cora --seeds 20 --out graphmae-cora.json
    contrastkit graph --method scgc --data cora --eval clustering
    contrastkit graph --method graphcl --edges e.csv --features x.npy --labels y.txt --eval clustering

Each seed pretrains from scratch (seeds 0..S-1 seed the model, the masks/views and the batch
order), trains for the fixed epochs of the method's defaults (the papers' settings; override with
--epochs etc.) and evaluates the final model: ``probe`` = linear probe on the public split with C
chosen on the validation nodes, ``clustering`` = k-means ACC/NMI/ARI. The summary is mean and std
over the seeds. ``main(argv)`` returns the exit status (2 for a user error).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.errors import ConfigError, ContrastkitError, DataError
from contrastkit.graphs.evaluate import (
    clustering_scores,
    mean_std,
    split_probe_accuracy,
)
from contrastkit.graphs.train import (
    GraphTrainConfig,
    embed_nodes,
    seed_everything,
    train_graph_method,
)
from contrastkit.sources.graphs import (
    Graph,
    open_graph_source,
    read_edge_list_graph,
    row_normalize_features,
)

# Training defaults per method (papers' Cora settings; see each method's docstring).
TRAIN_DEFAULTS: dict[str, GraphTrainConfig] = {
    "graphmae": GraphTrainConfig(epochs=1500, lr=1e-3, weight_decay=2e-4, cosine_schedule=True),
    "scgc": GraphTrainConfig(epochs=200, lr=1e-3, weight_decay=0.0),
    "graphcl": GraphTrainConfig(epochs=200, lr=5e-4, weight_decay=1e-5),
    "graphclip": GraphTrainConfig(epochs=100, lr=1e-3, weight_decay=0.0),
}
DEFAULT_EVAL = {"graphmae": "probe", "scgc": "clustering", "graphcl": "probe", "graphclip": "probe"}


def build_method(name: str, graph: Graph, args: argparse.Namespace) -> torch.nn.Module:
    """The method ``name`` for ``graph``, with the options the user gave (None = default)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    if name == "graphmae":
        from contrastkit.graphs.graphmae import GraphMAE

        options = {k: given[k] for k in ("encoder", "mask_rate", "replace_rate", "alpha") if k in given}
        if "hidden" in given:
            options["hidden_dim"] = given["hidden"]
        return GraphMAE(graph.num_features, **options)
    if name == "scgc":
        from contrastkit.graphs.scgc import SCGC

        if graph.y is None and "clusters" not in given:
            raise ConfigError("scgc needs --clusters K on a graph without labels.")
        options = {k: given[k] for k in ("order", "temperature", "warmup_epochs") if k in given}
        if "hidden" in given:
            options["hidden"] = (given["hidden"],) * 2
        if "embedding_dim" in given:
            options["embedding_dim"] = given["embedding_dim"]
        return SCGC(
            graph.num_features, graph.adjacency(), given.get("clusters", graph.num_classes),
            cumulative=not args.no_influence, **options,
        )
    if name == "graphcl":
        from contrastkit.graphs.graphcl import GraphCL

        options = {k: given[k] for k in ("encoder", "objective", "temperature") if k in given}
        if "hidden" in given:
            options["hidden_dim"] = given["hidden"]
        return GraphCL(graph.num_features, **options)
    if name == "graphclip":
        from contrastkit.graphs.graphclip import GraphCLIP

        if "text_embeddings" not in given:
            raise ConfigError("graphclip needs --text-embeddings FILE.npy: one row per node (its summary's embedding).")
        path = Path(given["text_embeddings"])
        if not path.is_file():
            raise DataError(f"Text embeddings '{path}' do not exist. Check the path.")
        text = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        return GraphCLIP(graph.num_features, text, **({"encoder": given["encoder"]} if "encoder" in given else {}))
    raise ConfigError(f"Unknown graph method '{name}'. Valid methods: {', '.join(TRAIN_DEFAULTS)}.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contrastkit graph", description="Self-supervised learning on graphs.")
    p.add_argument("--method", required=True, choices=sorted(TRAIN_DEFAULTS))
    p.add_argument("--data", help="built-in graph (cora, citeseer) or a folder (edges.csv + features.csv/.npy)")
    p.add_argument("--edges", help="edge-list CSV src,dst[,weight] (with --features)")
    p.add_argument("--features", help="node features, CSV or .npy, one row per node")
    p.add_argument("--labels", help="optional labels, one integer per line (-1 = unlabelled) or .npy")
    p.add_argument("--raw-features", action="store_true", help="do not row-normalise the features")
    p.add_argument("--seeds", type=int, default=1, help="number of pretraining seeds (0..S-1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--eval", choices=("probe", "clustering", "both"), help="default: the method's")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int, help="node batches instead of the full graph")
    p.add_argument("--sampler", choices=("random", "neighbourhood"))
    p.add_argument("--encoder", choices=("gat", "gcn", "gin"))
    p.add_argument("--hidden", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--objective", help="catalogue objective for graphcl (default infonce)")
    p.add_argument("--mask-rate", type=float)
    p.add_argument("--replace-rate", type=float)
    p.add_argument("--alpha", type=float, help="graphmae: SCE exponent")
    p.add_argument("--order", type=int, help="scgc: r of A^r")
    p.add_argument("--no-influence", action="store_true", help="scgc: positives A^r only, not A + ... + A^r")
    p.add_argument("--clusters", type=int, help="scgc: K (default: number of classes)")
    p.add_argument("--embedding-dim", type=int, help="scgc: size of z")
    p.add_argument("--warmup-epochs", type=int, help="scgc: epochs before the clustering head starts")
    p.add_argument("--text-embeddings", help="graphclip: (N, D) .npy of text-summary embeddings")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="write the per-seed results and the summary as JSON")
    p.add_argument("--quiet", action="store_true")
    return p


def load_graph(args: argparse.Namespace) -> Graph:
    if args.data:
        graph = open_graph_source(args.data)
    elif args.edges and args.features:
        graph = read_edge_list_graph(args.edges, args.features, args.labels)
    else:
        raise ConfigError("Give --data NAME_OR_FOLDER, or --edges FILE and --features FILE (and optionally --labels).")
    return graph if args.raw_features else graph.with_features(row_normalize_features(graph.x))


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    graph = load_graph(args)
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "weight_decay", "batch_size", "sampler")
                 if getattr(args, k) is not None}
    evaluation = args.eval or DEFAULT_EVAL[args.method]
    log = None if args.quiet else print
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        config = replace(TRAIN_DEFAULTS[args.method], seed=seed, **overrides)
        seed_everything(seed)
        method = build_method(args.method, graph, args)
        history = train_graph_method(method, graph, config, log)
        embeddings = embed_nodes(method, graph)
        result: dict[str, Any] = {"seed": seed, "final_loss": history[-1]["loss"] if history else None,
                                  "train_seconds": sum(h["seconds"] for h in history)}
        if evaluation in ("probe", "both"):
            result["probe"] = split_probe_accuracy(embeddings, graph)
        if evaluation in ("clustering", "both"):
            result["clustering"] = clustering_scores(embeddings, graph, seed)
        runs.append(result)
        if log:
            log(f"seed {seed}: {json.dumps({k: v for k, v in result.items() if k in ('probe', 'clustering')})}")
    summary: dict[str, Any] = {}
    if evaluation in ("probe", "both"):
        summary["probe_test"] = mean_std([r["probe"]["test"] for r in runs])
    if evaluation in ("clustering", "both"):
        for key in ("acc", "nmi", "ari"):
            summary[f"clustering_{key}"] = mean_std([r["clustering"][key] for r in runs])
    report = {"method": args.method, "data": graph.name, "seeds": args.seeds,
              "train": asdict(replace(TRAIN_DEFAULTS[args.method], **overrides)),
              "options": {k: v for k, v in vars(args).items() if v not in (None, False)},
              "summary": summary, "runs": runs}
    for key, (mean, std) in summary.items():
        print(f"{key}: {100 * mean:.1f} ± {100 * std:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        run(build_parser().parse_args(argv))
    except ContrastkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
