"""GraphCLIP (minimal two-tower version): contrast subgraph embeddings with text embeddings.

Zhu et al., "GraphCLIP: Enhancing Transferability in Graph Foundation Models for Text-attributed
Graphs", WWW 2025 (https://arxiv.org/abs/2410.10329): each training pair is a subgraph around a
node and a text summary of that subgraph; a graph tower and a text tower are trained with CLIP's
symmetric cross-entropy so that matching pairs score highest.

Here the text side is a precomputed (N, D_t) array (row i: the summary embedding of node i's
subgraph, from any frozen text encoder), so no text model is needed:

    nodes_i = random-walk subgraph around centre c_i           (views.graph.random_walk_subgraph)
    g_i = proj_G( mean_{v in nodes_i} f(X, A)[subgraph]_v )    (GNN on the induced subgraph, mean pool)
    t_i = proj_T( text[c_i] )                                  (an MLP over the frozen text vectors)
    L = clip(g, t)                                             (catalogue objective ``clip``)

A batch holds B centres; their subgraphs are encoded together as one disconnected graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.modalities.graph.encoders import GNNEncoder
from contrastkit.core.errors import DataError
from contrastkit.nn.heads import ProjectionHead
from contrastkit.modalities.graph.sources import Graph
from contrastkit.modalities.graph.views import neighbour_lists, random_walk_subgraph


class GraphCLIP(nn.Module):
    """Two towers: GNN + mean pool + projection over subgraphs, MLP over text embeddings."""

    def __init__(
        self,
        in_dim: int,
        text_embeddings: Tensor,
        encoder: str = "gcn",
        hidden_dim: int = 256,
        embedding_dim: int = 128,
        walk_length: int = 8,
        walks_per_centre: int = 4,
        batch_size: int = 256,
    ):
        super().__init__()
        if text_embeddings.dim() != 2:
            raise DataError(f"GraphCLIP text embeddings must be (N, D), got shape {tuple(text_embeddings.shape)}.")
        self.register_buffer("text", text_embeddings.float())
        self.encoder = GNNEncoder(encoder, in_dim, hidden_dim, hidden_dim, 2, activation="prelu")
        self.graph_projector = ProjectionHead(hidden_dim, hidden_dim, embedding_dim, 2, batch_norm=False)
        self.text_projector = ProjectionHead(text_embeddings.shape[1], hidden_dim, embedding_dim, 2, batch_norm=False)
        self.objective = objectives.get("clip")
        self.walk_length, self.walks_per_centre, self.batch_size = walk_length, walks_per_centre, batch_size
        self.output_dim = hidden_dim

    def subgraph_embeddings(self, graph: Graph, centres: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, hidden_dim): mean-pooled GNN embeddings of each centre's random-walk subgraph."""
        pooled = []
        neighbours = neighbour_lists(graph.edge_index, graph.num_nodes)
        for centre in centres.tolist():
            start = torch.full((self.walks_per_centre,), centre, dtype=torch.long)
            nodes, edges = random_walk_subgraph(
                graph.edge_index, graph.num_nodes, start, self.walk_length, generator, neighbours
            )
            pooled.append((graph.x[nodes], edges))
        # One forward pass over the disjoint union of the B subgraphs.
        offsets = torch.tensor([0] + [x.shape[0] for x, _ in pooled]).cumsum(0)
        x = torch.cat([x for x, _ in pooled])
        edge_index = torch.cat([e + offsets[i] for i, (_, e) in enumerate(pooled)], dim=1)
        h = self.encoder(x, edge_index.to(x.device))
        segment = torch.repeat_interleave(torch.arange(len(pooled)), offsets.diff()).to(x.device)
        sums = torch.zeros(len(pooled), h.shape[1], device=h.device).index_add_(0, segment, h)
        return sums / offsets.diff().to(h.device, h.dtype)[:, None]

    def training_loss(self, graph: Graph, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        if self.text.shape[0] != graph.num_nodes:
            raise DataError(
                f"GraphCLIP has {self.text.shape[0]} text embeddings but the graph has {graph.num_nodes} "
                f"nodes; give one text embedding per node (row i: the summary of node i's subgraph)."
            )
        b = min(self.batch_size, graph.num_nodes)
        centres = torch.randperm(graph.num_nodes, generator=generator)[:b]
        g = self.graph_projector(self.subgraph_embeddings(graph, centres, generator))
        t = self.text_projector(self.text[centres.to(self.text.device)])
        loss = self.objective(g, t)
        return loss, {"clip": float(loss.detach())}

    @torch.no_grad()
    def embed(self, graph: Graph) -> Tensor:
        return self.encoder(graph.x, graph.edge_index)
