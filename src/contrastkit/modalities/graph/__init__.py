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

from contrastkit.core.lazy import lazy_attributes

# Names resolve on first use (PEP 562), so that importing the package (e.g. for its light
# plugin module) loads neither torch nor the methods.
_EXPORTS = {
    "GraphCL": ("contrastkit.modalities.graph.graphcl", "GraphCL"),
    "GraphCLIP": ("contrastkit.modalities.graph.graphclip", "GraphCLIP"),
    "GraphMAE": ("contrastkit.modalities.graph.graphmae", "GraphMAE"),
    "GraphTrainConfig": ("contrastkit.modalities.graph.train", "GraphTrainConfig"),
    "GraphTraining": ("contrastkit.modalities.graph.train", "GraphTraining"),
    "NodeBatch": ("contrastkit.modalities.graph.data", "NodeBatch"),
    "SCGC": ("contrastkit.modalities.graph.scgc", "SCGC"),
    "apply_feature_mask": ("contrastkit.modalities.graph.graphmae", "apply_feature_mask"),
    "embed_nodes": ("contrastkit.modalities.graph.train", "embed_nodes"),
    "neighbour_contrastive_loss": ("contrastkit.modalities.graph.scgc", "neighbour_contrastive_loss"),
    "neighbour_positive_weights": ("contrastkit.modalities.graph.scgc", "neighbour_positive_weights"),
    "sample_feature_mask": ("contrastkit.modalities.graph.graphmae", "sample_feature_mask"),
    "scaled_cosine_error": ("contrastkit.modalities.graph.graphmae", "scaled_cosine_error"),
    "train_graph_method": ("contrastkit.modalities.graph.train", "train_graph_method"),
}


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

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
