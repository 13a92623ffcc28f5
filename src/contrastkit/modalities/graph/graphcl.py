"""GraphCL / GRACE-style node-level contrast: two augmented views of the graph, one GNN, a
projection head, and any two-view objective of the catalogue.

You et al., "Graph Contrastive Learning with Augmentations", NeurIPS 2020 (the augmentations);
Zhu et al., "Deep Graph Contrastive Representation Learning" (GRACE), 2020
(https://arxiv.org/abs/2006.04131): node i of view 1 and node i of view 2 are a positive pair and
every other node of either view is a negative, which is exactly the catalogue's ``infonce``
(NT-Xent over 2N rows) applied to the two views' projected node embeddings:

    (X1, A1) = t1(X, A),  (X2, A2) = t2(X, A)          t ~ edge drop + feature mask (+ node drop)
    H_v = f(X_v, A_v),  Z_v = g(H_v)                    f: GNN, g: projection MLP
    L = objective(Z_1, Z_2)

Embeddings for evaluation: H = f(X, A) on the unaugmented graph. Defaults are GRACE's Cora
settings: 2-layer GCN 128-d with ReLU (the paper's hidden layer is 2 x 128), projection 128,
edge drop 0.2 / 0.4, feature mask 0.3 / 0.4, temperature 0.4; Adam lr 5e-4, weight decay 1e-5,
200 epochs.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.modalities.graph.encoders import GNNEncoder
from contrastkit.nn.heads import ProjectionHead
from contrastkit.modalities.graph.sources import Graph
from contrastkit.modalities.graph.views import GraphAugment


def build_objective(name: str, temperature: float) -> nn.Module:
    """The catalogue objective ``name``, given ``temperature`` when it takes one."""
    factory = objectives.OBJECTIVES.factory(name)
    takes_temperature = "temperature" in inspect.signature(factory).parameters
    return objectives.get(name, temperature=temperature) if takes_temperature else objectives.get(name)


class GraphCL(nn.Module):
    """Node-level two-view contrast (see the module docstring)."""

    def __init__(
        self,
        in_dim: int,
        encoder: str = "gcn",
        hidden_dim: int = 128,
        num_layers: int = 2,
        projection_dim: int = 128,
        objective: str = "infonce",
        temperature: float = 0.4,
        view_1: GraphAugment | None = None,
        view_2: GraphAugment | None = None,
        heads: int = 4,
    ):
        super().__init__()
        hidden = 2 * hidden_dim if encoder == "gcn" else hidden_dim
        self.encoder = GNNEncoder(encoder, in_dim, hidden, hidden_dim, num_layers, heads, 1, activation="relu")
        self.projector = ProjectionHead(hidden_dim, hidden_dim, projection_dim, num_layers=2, batch_norm=False)
        self.objective = build_objective(objective, temperature)
        self.view_1 = view_1 or GraphAugment(edge_drop=0.2, feature_mask=0.3)
        self.view_2 = view_2 or GraphAugment(edge_drop=0.4, feature_mask=0.4)
        self.output_dim = hidden_dim

    def training_loss(self, graph: Graph, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        a = self.view_1(graph.x, graph.edge_index, generator)
        b = self.view_2(graph.x, graph.edge_index, generator)
        z_a = self.projector(self.encoder(a.x, a.edge_index))
        z_b = self.projector(self.encoder(b.x, b.edge_index))
        loss = self.objective(z_a, z_b)
        return loss, {"contrast": float(loss.detach())}

    @torch.no_grad()
    def embed(self, graph: Graph) -> Tensor:
        return self.encoder(graph.x, graph.edge_index)
