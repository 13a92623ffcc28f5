"""SCGC: self-supervised contrastive graph clustering with an MLP encoder.

Kulatilleke, Portmann & Chandra, "SCGC: Self-Supervised Contrastive Graph Clustering", 2022
(https://arxiv.org/abs/2204.12656; reference code github.com/gayanku/SCGC, ``train.py`` and
``models.py``, forked from SDCN, Bo et al., WWW 2020, github.com/bdy9527/SDCN; its contrastive
term comes from Graph-MLP, Hu et al. 2021, https://arxiv.org/abs/2106.04051).

No message passing: an MLP maps each node's features to z_i, and the graph enters only the loss.

Positives. With the normalised adjacency  A^ = D^{-1} (A + I)  (row-normalised, self-loops; as
the reference code's SDCN graph loader), the positive weight of node j for anchor i is

    w_ij = (A^r)_ij                         (r-hop neighbours; "SCGC")
    w_ij = (A^ + A^2 + ... + A^r)_ij        (Influence Augmented Contrastive loss; "SCGC*")

Neighbour contrastive loss (Graph-MLP's NContrast; :mod:`contrastkit.objectives.neighbour`), with
s_ij = cos(z_i, z_j) / temperature:

    L_N = -1/|I| sum_{i in I} log( sum_{j != i} w_ij exp(s_ij) / sum_{k != i} exp(s_ik) )

over the anchors I with some positive weight. (The reference code keeps j = i in both sums with
s_ii forced to 0, i.e. a constant w_ii in the numerator and 1 in the denominator; we leave the
anchor out, as in every other InfoNCE of the catalogue. Its ``tau`` multiplies the
similarities, so its tau = 1 / temperature here: its tau 0.25 is our temperature 4.)

Clustering head (DEC, Xie et al., ICML 2016; :mod:`contrastkit.objectives.clustering`): centres
mu_j (K, d) and Student-t assignments

    q_ij = (1 + ||z_i - mu_j||^2 / v)^{-(v+1)/2} / sum_j' (same),    v = 1
    p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'),   f_j = sum_i q_ij   (target, no gradient)
    L_C  = KL(P || Q) = 1/B sum_i sum_j p_ij log(p_ij / q_ij)

Total: L = alpha * L_N + beta * L_C (+ lambda * ||x^ - x||^2 / F for the full SCGC, whose
decoder stays; SCGC* drops it, ``reconstruction_weight`` 0).

Start (the reference's, SDCN's): an autoencoder F-500-500-2000-10 / 10-2000-500-500-F is first
trained to reconstruct the node features (mean squared error, Adam lr 1e-3, batches of 256,
30 epochs: SDCN's ``data/pretrain.py``), then k-means (20 restarts) on its z places mu, and the
clustering loss is on from the first epoch. The reference code loads SDCN's checkpoint of that
autoencoder (none exists for Cora); :func:`pretrain_reconstruction` trains it here, on the
unlabelled features, before the first training step (``pretrain_epochs``). Without it
(``pretrain_epochs=0``) the first ``warmup_epochs`` train L_N alone before k-means places mu.
The reference's features are raw (SDCN's Citeseer: binary bag of words), and so are SCGC's in
the graph CLI (``--features-norm none`` is its default). Row-normalised ones (Cora's entries
become about 1/18) leave the autoencoder at the feature means, with a collapsed z, so
:func:`warn_if_reconstruction_is_trivial` warns then.

What is clustered: the reference reports argmax_j q_ij (:meth:`SCGC.predict_clusters`,
:func:`head_clustering_scores`); ``embed`` gives z, on which the graph CLI runs k-means.
(The reference also prints, per metric, the maximum over the 200 epochs of the score computed
with the labels; that selects on labels, and we evaluate the final model.)

Batching: every term needs only the nodes of a batch, so a batch of nodes B uses W[B, B]
(:func:`neighbour_positive_weights` computes those rows of A^r sparsely, without the N x N
power) and p from the batch's q. Sampling batches from neighbourhoods keeps positives in them.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor, nn

from contrastkit.modalities.graph.encoders import NodeMLP
from contrastkit.engine.auxiliary import fit_auxiliary
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.clustering import cluster_accuracy
from contrastkit.modalities.graph.data import NodeBatch
from contrastkit.modalities.graph.sources import Graph
from contrastkit.objectives.clustering import (
    deep_clustering_kl,
    student_t_assignments,
    target_distribution,
)
from contrastkit.objectives.neighbour import neighbour_contrastive_loss


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


# The clustering head's loss lives in the catalogue; the old name stays importable from here.
clustering_kl = deep_clustering_kl


def pretrain_reconstruction(
    encoder: nn.Module, decoder: nn.Module, x: Tensor, epochs: int = 30, lr: float = 1e-3, batch_size: int = 256
) -> list[float]:
    """Train ``decoder(encoder(x))`` to reconstruct x: min 1/(B F) sum_i ||x^_i - x_i||^2 over
    shuffled batches of ``batch_size`` rows, Adam(lr), ``epochs`` passes (SDCN's autoencoder
    pretraining, ``data/pretrain.py`` of github.com/bdy9527/SDCN: 30 epochs, lr 1e-3, batch 256).

    An auxiliary fit (:func:`contrastkit.engine.auxiliary.fit_auxiliary`, the loop the library's
    small fits share). Unsupervised: only the features are read. The shuffling draws from torch's
    global generator, so a seeded run is reproducible. Returns the mean loss of each epoch.
    """
    if epochs < 0 or batch_size < 1:
        raise ConfigError(f"Autoencoder pretraining needs epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}.")
    if epochs == 0:
        return []
    encoder.train()
    decoder.train()

    def reconstruction_error(rows: Tensor) -> Tensor:
        batch = x[rows.to(x.device)]
        return F.mse_loss(decoder(encoder(batch)), batch)

    return fit_auxiliary([*encoder.parameters(), *decoder.parameters()], reconstruction_error, len(x),
                         epochs=epochs, lr=lr, batch_size=batch_size)


def warn_if_reconstruction_is_trivial(final_loss: float | None, x: Tensor) -> None:
    """Warn when the autoencoder reconstructs no better than the feature means (the mean squared
    deviation of x from its column means): its z then carries nothing, and neither do the centres
    placed on it. Seen on row-normalised bag-of-words features (Cora: every entry about 1/18, and
    an untrained decoder's output noise is larger than the signal); the reference feeds raw ones."""
    if final_loss is None:
        return
    mean_only = float(((x - x.mean(dim=0)) ** 2).mean())
    if final_loss >= 0.99 * mean_only:
        warnings.warn(
            f"SCGC's autoencoder start reconstructs the features no better than their means (loss "
            f"{final_loss:.3g}, means alone {mean_only:.3g}): its z is uninformative. Row-normalised "
            f"features are a known cause; the reference uses raw ones (contrastkit graph --features-norm none, "
            "SCGC's default).",
            stacklevel=3,
        )


def head_clustering_scores(model: SCGC, graph: Graph) -> dict[str, float]:
    """ACC / NMI / ARI of argmax_j q_ij (the clustering the reference code reports) on the
    labelled nodes. Labels only score the clusters."""
    if graph.y is None:
        raise DataError(f"Clustering scores on '{graph.name}' need node labels; give a label file.")
    was_training = model.training
    model.eval()
    clusters = model.predict_clusters(graph).cpu().numpy()
    model.train(was_training)
    y = graph.y.cpu().numpy()
    labelled = y >= 0
    truth, clusters = y[labelled], clusters[labelled]
    return {
        "acc": cluster_accuracy(truth, clusters),
        "nmi": float(normalized_mutual_info_score(truth, clusters)),
        "ari": float(adjusted_rand_score(truth, clusters)),
    }


class SCGC(nn.Module):
    """SCGC / SCGC* (see the module docstring). Defaults: the reference's SCGC* on its
    citation and co-authorship graphs (ACM, DBLP, Citeseer: order 1, tau 0.25 i.e. temperature
    4, alpha 1, beta 0.1), started from a reconstruction autoencoder as the reference is.

    Args:
        in_dim: node feature size. adjacency: the graph's (N, N) adjacency (scipy).
        num_clusters: K. hidden: MLP widths (SDCN's encoder: 500, 500, 2000; the decoder mirrors it).
        embedding_dim: d of z (the paper: 10).
        order: r. cumulative: True for the IAC loss (SCGC*); with r = 1 both are A^.
        temperature: of L_N (the reference's 1 / tau). alpha, beta: weights of L_N and L_C.
        pretrain_epochs: autoencoder epochs before training (0: none).
        pretrain_lr, pretrain_batch_size: its Adam learning rate and batch size.
        reconstruction_weight: lambda of the reconstruction term during training (0: SCGC*;
            the full SCGC keeps the decoder with lambda 1).
        warmup_epochs: epochs of training before k-means on z places the centres (0 with the
            autoencoder start: the centres are placed on its z).
    """

    def __init__(
        self,
        in_dim: int,
        adjacency: sp.spmatrix,
        num_clusters: int,
        hidden: tuple[int, ...] = (500, 500, 2000),
        embedding_dim: int = 10,
        order: int = 1,
        cumulative: bool = True,
        temperature: float = 4.0,
        alpha: float = 1.0,
        beta: float = 0.1,
        pretrain_epochs: int = 30,
        pretrain_lr: float = 1e-3,
        pretrain_batch_size: int = 256,
        reconstruction_weight: float = 0.0,
        warmup_epochs: int = 0,
        dropout: float = 0.0,
        normalization: str = "row",
    ):
        super().__init__()
        if num_clusters < 1:
            raise ConfigError(f"SCGC needs num_clusters >= 1, got {num_clusters}.")
        if pretrain_epochs < 0 or warmup_epochs < 0 or reconstruction_weight < 0:
            raise ConfigError(
                f"SCGC needs pretrain_epochs, warmup_epochs and reconstruction_weight >= 0, got "
                f"{pretrain_epochs}, {warmup_epochs} and {reconstruction_weight}."
            )
        self.encoder = NodeMLP((in_dim, *hidden, embedding_dim), "relu", dropout)
        # The decoder exists only where it is trained: for the start, or for the full SCGC's loss.
        needs_decoder = pretrain_epochs > 0 or reconstruction_weight > 0
        self.decoder = NodeMLP((embedding_dim, *reversed(hidden), in_dim), "relu", dropout) if needs_decoder else None
        self.centres = nn.Parameter(torch.zeros(num_clusters, embedding_dim))
        self.register_buffer("centres_ready", torch.tensor(False))
        self.register_buffer("pretrained", torch.tensor(pretrain_epochs == 0))
        self.normalized = normalized_adjacency(adjacency, normalization)
        self.order, self.cumulative = order, cumulative
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        self.pretrain_epochs, self.pretrain_lr, self.pretrain_batch_size = pretrain_epochs, pretrain_lr, pretrain_batch_size
        self.reconstruction_weight = reconstruction_weight
        self.warmup_epochs = warmup_epochs
        self.pretrain_losses: list[float] = []
        self._full_weights: Tensor | None = None
        self.output_dim = embedding_dim

    def positive_weights(self, nodes: Tensor | None, device: torch.device) -> Tensor:
        if nodes is None:  # full batch: compute once
            if self._full_weights is None:
                self._full_weights = neighbour_positive_weights(self.normalized, self.order, self.cumulative)
            return self._full_weights.to(device)
        return neighbour_positive_weights(self.normalized, self.order, self.cumulative, nodes.cpu().numpy()).to(device)

    def before_training(self, graph: Graph) -> None:
        """Called by the training loop before the first step: the autoencoder start, once. (A run
        resumed from a checkpoint skips it: the checkpoint holds the weights it gave.)"""
        if bool(self.pretrained):
            return
        self.pretrain_losses = pretrain_reconstruction(
            self.encoder, self.decoder, graph.x, self.pretrain_epochs, self.pretrain_lr, self.pretrain_batch_size
        )
        self.pretrained.fill_(True)
        warn_if_reconstruction_is_trivial(self.pretrain_losses[-1] if self.pretrain_losses else None, graph.x)

    def on_epoch_start(self, epoch: int, graph: Graph) -> None:
        """Called by the training loop at the start of every epoch: the centres, once the warm-up
        is over (at epoch 0 after the autoencoder start)."""
        if epoch >= self.warmup_epochs and not bool(self.centres_ready):
            self.init_centres(graph)

    @torch.no_grad()
    def init_centres(self, graph: Graph, seed: int | None = None) -> None:
        """mu <- k-means (20 restarts, as the reference code) centres of z over all nodes.

        ``seed``: k-means' random state; by default drawn from torch's global generator, so it
        follows the run's seed (the reference leaves it to numpy's global state, seeded by the run).
        """
        from sklearn.cluster import KMeans

        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
        was_training = self.training
        self.eval()
        z = self.encoder(graph.x).cpu().numpy()
        self.train(was_training)
        kmeans = KMeans(n_clusters=self.centres.shape[0], n_init=20, random_state=seed).fit(z)
        self.centres.copy_(torch.from_numpy(kmeans.cluster_centers_).to(self.centres))
        self.centres_ready.fill_(True)

    takes_node_ids = True  # node batches arrive as NodeBatch (whole graph + ids), see graphs/data.py

    def training_loss(self, batch: Graph | NodeBatch) -> tuple[Tensor, dict[str, float]]:
        """The loss of the whole graph, or of a batch of nodes (their rows of W, see the module doc)."""
        graph, nodes = (batch.graph, batch.nodes) if isinstance(batch, NodeBatch) else (batch, None)
        x = graph.x if nodes is None else graph.x[nodes]
        z = self.encoder(x)
        contrast = neighbour_contrastive_loss(z, self.positive_weights(nodes, z.device), self.temperature)
        logs = {"contrast": float(contrast.detach())}
        loss = self.alpha * contrast
        if bool(self.centres_ready):
            q = student_t_assignments(z, self.centres)
            kl = deep_clustering_kl(q, target_distribution(q.detach()))
            loss = loss + self.beta * kl
            logs["kl"] = float(kl.detach())
        if self.reconstruction_weight > 0:
            reconstruction = F.mse_loss(self.decoder(z), x)
            loss = loss + self.reconstruction_weight * reconstruction
            logs["reconstruction"] = float(reconstruction.detach())
        return loss, logs

    @torch.no_grad()
    def embed(self, graph: Graph) -> Tensor:
        return self.encoder(graph.x)

    @torch.no_grad()
    def predict_clusters(self, graph: Graph) -> Tensor:
        """argmax_j q_ij (needs the centres, i.e. after the warm-up)."""
        if not bool(self.centres_ready):
            raise ConfigError("SCGC's centres are not placed yet: train past the warm-up, or call init_centres.")
        return student_t_assignments(self.encoder(graph.x), self.centres).argmax(dim=1)
