"""Self-supervised learning on graphs: methods (SCGC, GraphMAE, GraphCL, GraphCLIP), their
training on the engine (full graph or node batches) and the Planetoid evaluation protocol.

Quick use::

    from contrastkit.modalities.graph.sources import open_graph_source, row_normalize_features
    from contrastkit.modalities.graph import GraphMAE, GraphTrainConfig, train_graph_method, embed_nodes
    from contrastkit.modalities.graph.evaluate import mean_std, probe_over_seeds

    graph = open_graph_source("cora")
    graph = graph.with_features(row_normalize_features(graph.x))
    model = GraphMAE(graph.num_features)
    train_graph_method(model, graph, GraphTrainConfig(epochs=1500, lr=1e-3, weight_decay=2e-4,
                                                      cosine_schedule=True), run_dir="runs/graphmae-cora")
    probe = probe_over_seeds(embed_nodes(model, graph), graph, seeds=range(20))
    print(mean_std(probe["test"]))  # GraphMAE's probe, 20 probe seeds on these embeddings

Methods import torch-geometric (through ``contrastkit.modalities.graph.encoders``) only when built.
"""

from __future__ import annotations

from contrastkit.modalities.graph.graphcl import GraphCL
from contrastkit.modalities.graph.graphclip import GraphCLIP
from contrastkit.modalities.graph.graphmae import (
    GraphMAE,
    apply_feature_mask,
    sample_feature_mask,
    scaled_cosine_error,
)
from contrastkit.modalities.graph.scgc import (
    SCGC,
    neighbour_contrastive_loss,
    neighbour_positive_weights,
)
from contrastkit.modalities.graph.data import NodeBatch
from contrastkit.modalities.graph.train import GraphTrainConfig, GraphTraining, embed_nodes, train_graph_method

__all__ = [
    "SCGC",
    "GraphCL",
    "GraphCLIP",
    "GraphMAE",
    "GraphTrainConfig",
    "GraphTraining",
    "NodeBatch",
    "apply_feature_mask",
    "embed_nodes",
    "neighbour_contrastive_loss",
    "neighbour_positive_weights",
    "sample_feature_mask",
    "scaled_cosine_error",
    "train_graph_method",
]
