"""Graph augmentations (GraphCL, You et al., NeurIPS 2020; GRACE, Zhu et al., 2020; MVGRL,
Hassani & Khasahmadi, ICML 2020): each maps (x, edge_index) to a random view of the same graph.

Node-level contrast needs row i of both views to be node i, so augmentations that remove
nodes keep the node set and *isolate* the dropped nodes instead (features zeroed, incident edges
removed); :func:`random_walk_subgraph` returns the sampled node ids for graph-level use.

All functions take an optional ``torch.Generator`` so that a view is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError


def _check_rate(rate: float, name: str) -> None:
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {rate}.")


def _bernoulli(shape: tuple[int, ...], p: float, device, generator: torch.Generator | None) -> Tensor:
    """Boolean tensor, True with probability p."""
    return torch.rand(shape, device=device, generator=generator) < p


def drop_edges(
    edge_index: Tensor, rate: float, generator: torch.Generator | None = None, undirected: bool = False
) -> Tensor:
    """Each directed edge is removed independently with probability ``rate``.

    With ``undirected``, an edge and its reverse are removed together (the pair is decided by
    the copy with src < dst; edges stored in one direction only are decided on their own).
    """
    _check_rate(rate, "edge drop rate")
    if rate == 0 or edge_index.shape[1] == 0:
        return edge_index
    if not undirected:
        return edge_index[:, ~_bernoulli((edge_index.shape[1],), rate, edge_index.device, generator)]
    src, dst = edge_index
    n = int(edge_index.max()) + 1
    low, high = torch.minimum(src, dst), torch.maximum(src, dst)
    pair_key = low * n + high
    unique_keys, pair = torch.unique(pair_key, return_inverse=True)
    dropped = _bernoulli((unique_keys.shape[0],), rate, edge_index.device, generator)
    return edge_index[:, ~dropped[pair]]


def mask_features(x: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Zero each feature *dimension* with probability ``rate``, the same dimensions for every
    node (GRACE's feature masking: x' = x * m, m_k ~ Bernoulli(1 - rate))."""
    _check_rate(rate, "feature mask rate")
    if rate == 0:
        return x
    keep = ~_bernoulli((x.shape[1],), rate, x.device, generator)
    return x * keep.to(x.dtype)


def drop_nodes(
    x: Tensor, edge_index: Tensor, rate: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Drop each node with probability ``rate``: its features become 0 and its edges go.

    Returns ``(x', edge_index', kept)`` with ``kept`` the (N,) bool mask of surviving nodes.
    """
    _check_rate(rate, "node drop rate")
    kept = ~_bernoulli((x.shape[0],), rate, x.device, generator)
    if rate == 0:
        return x, edge_index, kept
    edge_kept = kept[edge_index[0]] & kept[edge_index[1]]
    return x * kept[:, None].to(x.dtype), edge_index[:, edge_kept], kept


def neighbour_lists(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """CSR form ``(indptr, indices)`` of the out-neighbours: node u's are
    ``indices[indptr[u]:indptr[u + 1]]``. Build once, walk many times."""
    adjacency = sp.csr_matrix(
        (np.ones(edge_index.shape[1]), edge_index.cpu().numpy()), shape=(num_nodes, num_nodes)
    )
    return torch.from_numpy(adjacency.indptr).long(), torch.from_numpy(adjacency.indices).long()


def random_walks(
    neighbours: tuple[Tensor, Tensor], start: Tensor, walk_length: int, generator: torch.Generator | None = None
) -> Tensor:
    """(walk_length + 1, S) node ids of uniform random walks from ``start``; a walk at a node
    without out-edges stays there."""
    indptr, indices = neighbours
    degree = indptr[1:] - indptr[:-1]
    current = start.cpu().long()
    if len(indices) == 0:  # no edges: every walk stays at its start
        return current.expand(walk_length + 1, -1).clone()
    visited = [current]
    for _ in range(walk_length):
        d = degree[current]
        offset = (torch.rand(current.shape, generator=generator) * d.clamp(min=1)).long()
        step = indices[(indptr[current] + offset).clamp(max=len(indices) - 1)]
        current = torch.where(d > 0, step, current)
        visited.append(current)
    return torch.stack(visited)


def random_walk_subgraph(
    edge_index: Tensor,
    num_nodes: int,
    start: Tensor,
    walk_length: int,
    generator: torch.Generator | None = None,
    neighbours: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Nodes visited by uniform random walks of ``walk_length`` steps from each node of
    ``start``, and the subgraph they induce (GraphCL's "subgraph" augmentation).

    Returns ``(nodes, sub_edge_index)``: sorted global ids, and edges relabelled to 0..len-1.
    ``neighbours`` (from :func:`neighbour_lists`) saves rebuilding the CSR on every call.
    """
    neighbours = neighbours or neighbour_lists(edge_index, num_nodes)
    nodes = torch.unique(random_walks(neighbours, start, walk_length, generator))
    return nodes.to(edge_index.device), induced_edges(edge_index, nodes.to(edge_index.device), num_nodes)


def induced_edges(edge_index: Tensor, nodes: Tensor, num_nodes: int) -> Tensor:
    """Edges with both ends in ``nodes`` (sorted ids), relabelled to positions in ``nodes``."""
    position = torch.full((num_nodes,), -1, dtype=torch.long, device=edge_index.device)
    position[nodes] = torch.arange(len(nodes), device=edge_index.device)
    src, dst = position[edge_index[0]], position[edge_index[1]]
    keep = (src >= 0) & (dst >= 0)
    return torch.stack([src[keep], dst[keep]])


def ppr_diffusion(
    edge_index: Tensor, num_nodes: int, alpha: float = 0.15, top_k: int | None = None
) -> Tensor:
    """Personalised-PageRank diffusion matrix (Klicpera et al., "Diffusion Improves Graph
    Learning", NeurIPS 2019; the second view of MVGRL).

        T = D^{-1} (A + I)                       (row-stochastic)
        S = alpha * (I - (1 - alpha) T)^{-1} = alpha * sum_k (1 - alpha)^k T^k

    Each row of S is a probability distribution (rows sum to 1): S 1 = alpha (I - (1-alpha)T)^{-1} 1
    and (I - (1-alpha) T) 1 = alpha 1. With ``top_k`` only the k largest entries of each row are
    kept and the row is renormalised (GDC's sparsification). Dense: O(N^3), for graphs of a few
    thousand nodes. Returns a dense (N, N) float32 tensor.
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"PPR teleport probability alpha must be in (0, 1), got {alpha}.")
    a = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    a[edge_index[0].cpu(), edge_index[1].cpu()] = 1.0
    a += torch.eye(num_nodes, dtype=torch.float64)
    transition = a / a.sum(dim=1, keepdim=True)
    s = alpha * torch.linalg.inv(torch.eye(num_nodes, dtype=torch.float64) - (1 - alpha) * transition)
    if top_k is not None and top_k < num_nodes:
        values, columns = s.topk(top_k, dim=1)
        s = torch.zeros_like(s).scatter_(1, columns, values)
        s = s / s.sum(dim=1, keepdim=True)
    return s.float()


def diffusion_edges(s: Tensor, threshold: float = 1e-4) -> tuple[Tensor, Tensor]:
    """A dense diffusion matrix as a weighted edge list: entries >= ``threshold``."""
    src, dst = torch.nonzero(s >= threshold, as_tuple=True)
    return torch.stack([src, dst]), s[src, dst]


@dataclass(frozen=True)
class GraphView:
    """One augmented view: features, edges, and (for node dropping) the surviving nodes."""

    x: Tensor
    edge_index: Tensor
    kept_nodes: Tensor | None = None


class GraphAugment(nn.Module):
    """A random view: node dropping, then edge dropping, then feature masking (each skipped at
    rate 0). GRACE on Cora uses two such views with edge drop 0.2 / 0.4 and feature mask
    0.3 / 0.4."""

    def __init__(self, edge_drop: float = 0.2, feature_mask: float = 0.3, node_drop: float = 0.0):
        super().__init__()
        for rate, name in ((edge_drop, "edge_drop"), (feature_mask, "feature_mask"), (node_drop, "node_drop")):
            _check_rate(rate, name)
        self.edge_drop, self.feature_mask, self.node_drop = edge_drop, feature_mask, node_drop

    def forward(self, x: Tensor, edge_index: Tensor, generator: torch.Generator | None = None) -> GraphView:
        kept = None
        if self.node_drop > 0:
            x, edge_index, kept = drop_nodes(x, edge_index, self.node_drop, generator)
        edge_index = drop_edges(edge_index, self.edge_drop, generator)
        x = mask_features(x, self.feature_mask, generator)
        return GraphView(x, edge_index, kept)

    def extra_repr(self) -> str:
        return f"edge_drop={self.edge_drop}, feature_mask={self.feature_mask}, node_drop={self.node_drop}"
