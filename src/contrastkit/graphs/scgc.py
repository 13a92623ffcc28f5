"""SCGC: self-supervised contrastive graph clustering with an MLP encoder.

Kulatilleke, Portmann & Chandra, "SCGC: Self-Supervised Contrastive Graph Clustering", 2022
(https://arxiv.org/abs/2204.12656; reference code github.com/gayanku/SCGC, whose contrastive
term comes from Graph-MLP, Hu et al. 2021, https://arxiv.org/abs/2106.04051).

No message passing: an MLP maps each node's features to z_i, and the graph enters only the loss.

Positives. With the normalised adjacency  A^ = D^{-1} (A + I)  (row-normalised, self-loops; as
the reference code's SDCN graph loader), the positive weight of node j for anchor i is

    w_ij = (A^r)_ij                         (r-hop neighbours; "SCGC")
    w_ij = (A^ + A^2 + ... + A^r)_ij        (Influence Augmented Contrastive loss; "SCGC*")

Neighbour contrastive loss (Graph-MLP's NContrast), with s_ij = cos(z_i, z_j) / temperature:

    L_N = -1/|I| sum_{i in I} log( sum_{j != i} w_ij exp(s_ij) / sum_{k != i} exp(s_ik) )

over the anchors I with some positive weight. (The reference code keeps j = i in both sums with
s_ii forced to 0; we leave the anchor out, as in every other InfoNCE of the catalogue. Its
``tau`` multiplies the similarities, so its tau = 1 / temperature here.)

Clustering head (DEC, Xie et al., ICML 2016): centres mu_j (K, d) and Student-t assignments

    q_ij = (1 + ||z_i - mu_j||^2 / v)^{-(v+1)/2} / sum_j' (same),    v = 1
    p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'),   f_j = sum_i q_ij   (target, no gradient)
    L_C  = KL(P || Q) = 1/B sum_i sum_j p_ij log(p_ij / q_ij)

Total: L = alpha * L_N + beta * L_C. The reference code starts from an autoencoder pretrained by
SDCN and places mu by k-means on its z; we have no such checkpoint, so the first
``warmup_epochs`` train L_N alone and then k-means on z places mu (:meth:`SCGC.init_centres`).

Batching: every term needs only the nodes of a batch, so a batch of nodes B uses W[B, B]
(:func:`neighbour_positive_weights` computes those rows of A^r sparsely, without the N x N
power) and p from the batch's q. Sampling batches from neighbourhoods keeps positives in them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.encoders.gnn import NodeMLP
from contrastkit.errors import ConfigError
from contrastkit.sources.graphs import Graph


def normalized_adjacency(adjacency: sp.spmatrix, kind: str = "row") -> sp.csr_matrix:
    """A^ = D^{-1}(A + I) (``row``) or D^{-1/2}(A + I)D^{-1/2} (``sym``, Graph-MLP's)."""
    n = adjacency.shape[0]
    a = (sp.csr_matrix(adjacency, dtype=np.float64) + sp.identity(n, format="csr")).tocsr()
    degree = np.asarray(a.sum(axis=1)).ravel()
    if kind == "row":
        return sp.diags(1.0 / degree) @ a
    if kind == "sym":
        d = sp.diags(1.0 / np.sqrt(degree))
        return (d @ a @ d).tocsr()
    raise ConfigError(f"Unknown adjacency normalisation '{kind}'. Valid: row, sym.")


def neighbour_positive_weights(
    normalized: sp.csr_matrix, order: int, cumulative: bool = False, nodes: np.ndarray | None = None
) -> Tensor:
    """W[nodes, nodes] with W = A^order, or A^ + ... + A^order when ``cumulative`` (float32).

    Only the rows of ``nodes`` are propagated: R_1 = A^[nodes], R_k = R_{k-1} A^ (sparse), so the
    cost is that of the r-hop neighbourhood of the batch, not of the N x N power.
    """
    if order < 1:
        raise ConfigError(f"SCGC order (the r of A^r) must be >= 1, got {order}.")
    normalized = sp.csr_matrix(normalized)
    rows = normalized if nodes is None else normalized[nodes]
    total = rows.copy()
    for _ in range(order - 1):
        rows = (rows @ normalized).tocsr()
        total = total + rows if cumulative else rows
    block = total if nodes is None else total[:, nodes]
    return torch.from_numpy(np.asarray(block.todense(), dtype=np.float32))


def neighbour_contrastive_loss(z: Tensor, weights: Tensor, temperature: float = 0.5) -> Tensor:
    """L_N of the module docstring: z (B, d), weights (B, B) >= 0 (the diagonal is ignored)."""
    b = z.shape[0]
    zn = F.normalize(z, dim=1)
    logits = zn @ zn.T / temperature
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=z.device)
    weights = weights.to(z.dtype) * off_diagonal
    has_positive = weights.sum(dim=1) > 0
    if not has_positive.any():
        return z.sum() * 0.0
    log_denominator = torch.logsumexp(logits.masked_fill(~off_diagonal, float("-inf")), dim=1)
    # Rows without positives get finite dummy weights (excluded below) so no NaN gradient arises.
    log_weights = torch.where(has_positive[:, None], torch.log(weights.clamp(min=0)), 0.0)
    log_numerator = torch.logsumexp(logits + log_weights, dim=1)
    return (log_denominator - log_numerator)[has_positive].mean()


def student_t_assignments(z: Tensor, centres: Tensor, v: float = 1.0) -> Tensor:
    """q (B, K) of the module docstring."""
    squared = torch.cdist(z, centres).pow(2)
    q = (1.0 + squared / v).pow(-(v + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q: Tensor) -> Tensor:
    """p (B, K) of the module docstring (sharpened q, normalised by cluster frequency f)."""
    weight = q.pow(2) / q.sum(dim=0)
    return weight / weight.sum(dim=1, keepdim=True)


def clustering_kl(q: Tensor, p: Tensor) -> Tensor:
    """KL(P || Q) averaged over rows."""
    return F.kl_div(q.clamp(min=1e-12).log(), p, reduction="batchmean")


class SCGC(nn.Module):
    """SCGC / SCGC* (see the module docstring).

    Args:
        in_dim: node feature size. adjacency: the graph's (N, N) adjacency (scipy).
        num_clusters: K. hidden: MLP widths (the paper's SDCN encoder: 500, 500, 2000).
        embedding_dim: d of z (the paper: 10).
        order: r. cumulative: True for the IAC loss (SCGC*).
        temperature: of L_N. alpha, beta: weights of L_N and L_C.
        warmup_epochs: epochs of L_N alone before k-means places the centres.
    """

    def __init__(
        self,
        in_dim: int,
        adjacency: sp.spmatrix,
        num_clusters: int,
        hidden: tuple[int, ...] = (500, 500, 2000),
        embedding_dim: int = 10,
        order: int = 2,
        cumulative: bool = True,
        temperature: float = 0.5,
        alpha: float = 1.0,
        beta: float = 0.1,
        warmup_epochs: int = 50,
        dropout: float = 0.0,
        normalization: str = "row",
    ):
        super().__init__()
        if num_clusters < 1:
            raise ConfigError(f"SCGC needs num_clusters >= 1, got {num_clusters}.")
        self.encoder = NodeMLP((in_dim, *hidden, embedding_dim), "relu", dropout)
        self.centres = nn.Parameter(torch.zeros(num_clusters, embedding_dim))
        self.register_buffer("centres_ready", torch.tensor(False))
        self.normalized = normalized_adjacency(adjacency, normalization)
        self.order, self.cumulative = order, cumulative
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        self.warmup_epochs = warmup_epochs
        self._full_weights: Tensor | None = None
        self.output_dim = embedding_dim

    def positive_weights(self, nodes: Tensor | None, device: torch.device) -> Tensor:
        if nodes is None:  # full batch: compute once
            if self._full_weights is None:
                self._full_weights = neighbour_positive_weights(self.normalized, self.order, self.cumulative)
            return self._full_weights.to(device)
        return neighbour_positive_weights(self.normalized, self.order, self.cumulative, nodes.cpu().numpy()).to(device)

    def on_epoch_start(self, epoch: int, graph: Graph) -> None:
        if epoch == self.warmup_epochs and not bool(self.centres_ready):
            self.init_centres(graph)

    @torch.no_grad()
    def init_centres(self, graph: Graph, seed: int = 0) -> None:
        """mu <- k-means (20 restarts, as the reference code) centres of z over all nodes."""
        from sklearn.cluster import KMeans

        was_training = self.training
        self.eval()
        z = self.encoder(graph.x).cpu().numpy()
        self.train(was_training)
        kmeans = KMeans(n_clusters=self.centres.shape[0], n_init=20, random_state=seed).fit(z)
        self.centres.copy_(torch.from_numpy(kmeans.cluster_centers_).to(self.centres))
        self.centres_ready.fill_(True)

    def training_loss(self, graph: Graph, nodes: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        x = graph.x if nodes is None else graph.x[nodes]
        z = self.encoder(x)
        contrast = neighbour_contrastive_loss(z, self.positive_weights(nodes, z.device), self.temperature)
        logs = {"contrast": float(contrast.detach())}
        loss = self.alpha * contrast
        if bool(self.centres_ready):
            q = student_t_assignments(z, self.centres)
            kl = clustering_kl(q, target_distribution(q.detach()))
            loss = loss + self.beta * kl
            logs["kl"] = float(kl.detach())
        return loss, logs

    @torch.no_grad()
    def embed(self, graph: Graph) -> Tensor:
        return self.encoder(graph.x)

    @torch.no_grad()
    def predict_clusters(self, graph: Graph) -> Tensor:
        """argmax_j q_ij (needs the centres, i.e. after the warm-up)."""
        return student_t_assignments(self.encoder(graph.x), self.centres).argmax(dim=1)
