"""SCGC's autoencoder start and its clustering head, each against a second derivation: the
linear autoencoder against the PCA (Eckart-Young) optimum, the centres against the k-means
fixed point (each centre is the mean of the z nearest to it), argmax q and its ACC / NMI / ARI
against loops, brute-force matching and closed forms; the reconstruction term against a hand
computation; the order of start, centres and clustering loss in the training loop; the CLI.

The loss maths shared with the rest of the graph code (positives, L_N, q, p) is tested in
tests/modalities/graph/test_graphs.py.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.graph.scgc import (
    SCGC,
    head_clustering_scores,
    pretrain_reconstruction,
    student_t_assignments,
    target_distribution,
)
from contrastkit.objectives.neighbour import neighbour_contrastive_loss
from contrastkit.modalities.graph.train import (
    GraphTrainConfig,
    seed_everything,
    train_graph_method,
)
from contrastkit.modalities.graph.sources import Graph

# Tests that run a start of one or two epochs on random features, where reconstructing no better
# than the feature means is expected, keep the warning about it out of the report.
SHORT_START = pytest.mark.filterwarnings("ignore:SCGC's autoencoder start")


def small_graph(n: int = 40, features: int = 6, classes: int = 3, seed: int = 0) -> Graph:
    """A ring with chords, binary features and labels (clustering only: no split)."""
    rng = np.random.default_rng(seed)
    ring = np.stack([np.arange(n), (np.arange(n) + 1) % n])
    chords = rng.integers(0, n, (2, n // 2))
    chords = chords[:, chords[0] != chords[1]]
    edges = np.concatenate([ring, chords], axis=1)
    edges = np.concatenate([edges, edges[::-1]], axis=1)
    return Graph(
        x=torch.from_numpy((rng.random((n, features)) < 0.4).astype(np.float32)),
        edge_index=torch.from_numpy(edges.astype(np.int64)),
        y=torch.from_numpy(rng.integers(0, classes, n)),
        name="small",
    )


# ---------------------------------------------------------------------------------------------
# Autoencoder start


def test_linear_autoencoder_reaches_the_pca_reconstruction_error():
    # Rank-2 data plus small noise in 6 dimensions. A linear encoder/decoder with a 2-d bottleneck
    # (and biases, so it can centre) can at best reach the error of the top-2 principal subspace.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=generator) @ torch.randn(2, 6, generator=generator)
    x = x + 0.05 * torch.randn(300, 6, generator=generator) + 3.0
    centred = (x - x.mean(dim=0)).double()
    singular = torch.linalg.svdvals(centred)
    pca_error = float((singular[2:] ** 2).sum() / x.numel())
    mean_only = float((singular**2).sum() / x.numel())
    torch.manual_seed(0)
    encoder, decoder = torch.nn.Linear(6, 2), torch.nn.Linear(2, 6)
    losses = pretrain_reconstruction(encoder, decoder, x, epochs=400, lr=1e-2, batch_size=100)
    with torch.no_grad():
        final = float(F.mse_loss(decoder(encoder(x)), x))
    assert final >= pca_error * (1 - 1e-4)  # no linear rank-2 map beats PCA
    assert final < pca_error + 0.01 * mean_only  # and training gets within 1 % of the signal of it
    assert len(losses) == 400 and losses[-1] < losses[0]


@SHORT_START
def test_pretraining_draws_from_the_seeded_generator():
    graph = small_graph()
    embeddings = []
    for _ in range(2):
        seed_everything(5)
        model = SCGC(6, graph.adjacency(), 3, hidden=(8,), embedding_dim=3, pretrain_epochs=3, pretrain_batch_size=16)
        model.before_training(graph)
        embeddings.append(model.embed(graph))
    torch.testing.assert_close(embeddings[0], embeddings[1], rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")  # k-means on identical z
def test_uninformative_reconstruction_warns():
    # Constant features: nothing beyond the means to reconstruct, so the start must say so.
    graph = small_graph()
    graph = Graph(x=torch.full_like(graph.x, 0.25), edge_index=graph.edge_index, y=graph.y, name="flat")
    torch.manual_seed(0)
    model = SCGC(6, graph.adjacency(), 3, hidden=(8,), embedding_dim=3, pretrain_epochs=2)
    with pytest.warns(UserWarning, match="no better than their means"):
        model.before_training(graph)


# ---------------------------------------------------------------------------------------------
# Centres and the training loop


@SHORT_START
def test_centres_are_a_kmeans_fixed_point_of_the_pretrained_z():
    graph = small_graph(n=60)
    torch.manual_seed(0)
    model = SCGC(6, graph.adjacency(), 3, hidden=(16,), embedding_dim=3, pretrain_epochs=5, pretrain_batch_size=16)
    model.before_training(graph)
    model.on_epoch_start(0, graph)
    assert bool(model.pretrained) and bool(model.centres_ready)
    z = model.embed(graph).double()
    centres = model.centres.detach().double()
    nearest = torch.cdist(z, centres).argmin(dim=1)
    for j in range(3):
        members = z[nearest == j]
        assert len(members) > 0
        torch.testing.assert_close(centres[j], members.mean(dim=0), rtol=1e-4, atol=1e-4)


@SHORT_START
def test_start_centres_and_clustering_loss_order():
    graph = small_graph()
    config = GraphTrainConfig(epochs=4, lr=1e-3, log_every=100)
    # Autoencoder start: centres before the first step, so the clustering loss is on from epoch 0.
    torch.manual_seed(0)
    started = SCGC(6, graph.adjacency(), 3, hidden=(8,), embedding_dim=3, pretrain_epochs=2)
    history = train_graph_method(started, graph, config, log=None).history
    assert len(started.pretrain_losses) == 2 and all("kl" in h for h in history)
    # No start: L_N alone for warmup_epochs, then the centres.
    torch.manual_seed(0)
    warm = SCGC(6, graph.adjacency(), 3, hidden=(8,), embedding_dim=3, pretrain_epochs=0, warmup_epochs=2)
    assert warm.decoder is None
    history = train_graph_method(warm, graph, config, log=None).history
    assert ["kl" in h for h in history] == [False, False, True, True]
    assert warm.pretrain_losses == []


def test_training_loss_adds_the_weighted_reconstruction_term():
    graph = small_graph()
    torch.manual_seed(0)
    model = SCGC(6, graph.adjacency(), 3, hidden=(8,), embedding_dim=3, pretrain_epochs=0,
                 reconstruction_weight=0.7, temperature=4.0, alpha=1.3, beta=0.2)
    model.init_centres(graph, seed=0)
    loss, logs = model.training_loss(graph)
    with torch.no_grad():
        z = model.encoder(graph.x)
        x_hat = model.decoder(z)
        reconstruction = float(((x_hat - graph.x) ** 2).sum() / graph.x.numel())
        contrast = neighbour_contrastive_loss(z, model.positive_weights(None, z.device), 4.0)
        q = student_t_assignments(z, model.centres)
        p = target_distribution(q)
        kl = float((p * (p / q).log()).sum() / len(z))
    assert logs["reconstruction"] == pytest.approx(reconstruction, rel=1e-5)
    assert loss.item() == pytest.approx(1.3 * float(contrast) + 0.2 * kl + 0.7 * reconstruction, rel=1e-5)


def test_invalid_settings_are_config_errors():
    graph = small_graph()
    with pytest.raises(ConfigError, match="pretrain_epochs"):
        SCGC(6, graph.adjacency(), 3, pretrain_epochs=-1)
    model = SCGC(6, graph.adjacency(), 3, hidden=(8,), embedding_dim=3, pretrain_epochs=0)
    with pytest.raises(ConfigError, match="centres are not placed"):
        model.predict_clusters(graph)


# ---------------------------------------------------------------------------------------------
# Clustering by the head


def test_head_clustering_scores_against_brute_force_and_closed_forms():
    graph = small_graph(n=30)
    torch.manual_seed(0)
    model = SCGC(6, graph.adjacency(), 3, hidden=(8,), embedding_dim=3, pretrain_epochs=0)
    model.init_centres(graph, seed=1)
    with torch.no_grad():
        z = model.encoder(graph.x)
        centres = model.centres.detach()
    # argmax q by a loop over nodes and centres (q is largest where ||z - mu|| is smallest).
    clusters = np.array([min(range(3), key=lambda j: float(((z[i] - centres[j]) ** 2).sum())) for i in range(30)])
    y = graph.y.numpy()
    acc = max(np.mean([perm[c] == t for c, t in zip(clusters, y)]) for perm in itertools.permutations(range(3)))
    table = np.array([[np.sum((clusters == c) & (y == k)) for k in range(3)] for c in range(3)], dtype=float)
    n = table.sum()
    rows, cols = table.sum(axis=1), table.sum(axis=0)

    def entropy(counts: np.ndarray) -> float:
        return -sum(c / n * math.log(c / n) for c in counts if c > 0)

    mutual = sum(table[a, b] / n * math.log(table[a, b] * n / (rows[a] * cols[b]))
                 for a in range(3) for b in range(3) if table[a, b] > 0)
    nmi = mutual / ((entropy(rows) + entropy(cols)) / 2)

    def pairs(counts: np.ndarray | float) -> np.ndarray | float:  # number of unordered pairs
        return counts * (counts - 1) / 2

    index, expected = pairs(table).sum(), pairs(rows).sum() * pairs(cols).sum() / pairs(n)
    ari = (index - expected) / ((pairs(rows).sum() + pairs(cols).sum()) / 2 - expected)
    scores = head_clustering_scores(model, graph)
    assert scores == pytest.approx({"acc": acc, "nmi": nmi, "ari": ari}, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# CLI


@SHORT_START
@pytest.mark.parametrize("options, decoder", [
    (["--pretrain-epochs", "2"], True),
    (["--pretrain-epochs", "0", "--warmup-epochs", "1"], False),
    (["--pretrain-epochs", "1", "--reconstruction-weight", "1"], True),
])
def test_cli_scgc_options_reach_the_model(tmp_path, options, decoder):
    from contrastkit.modalities.graph import cli

    graph = small_graph(n=30)
    np.savetxt(tmp_path / "edges.csv", graph.edge_index.T.numpy(), fmt="%d", delimiter=",")
    np.save(tmp_path / "features.npy", graph.x.numpy())
    np.savetxt(tmp_path / "labels.txt", graph.y.numpy(), fmt="%d")
    argv = ["--method", "scgc", "--data", str(tmp_path), "--hidden", "8", "--embedding-dim", "3",
            "--raw-features", *options]
    args = cli.parse_args(argv)
    model = cli.build_method("scgc", cli.load_graph(args), args)
    assert (model.decoder is not None) == decoder
    assert model.pretrain_epochs == int(options[1])
    assert model.reconstruction_weight == (1.0 if "--reconstruction-weight" in options else 0.0)
    out = tmp_path / "run"
    assert cli.main([*argv, "--epochs", "2", "--out", str(out), "--quiet", "--no-report"]) == 0
    assert "clustering_acc" in json.loads((out / "results.json").read_text())["summary"]


def test_feature_normalisation_follows_each_methods_reference_code():
    from contrastkit.modalities.graph.cli import feature_norm, parse_args

    assert feature_norm(parse_args(["--method", "scgc", "--data", "cora"])) == "none"  # SDCN's loader: raw
    assert feature_norm(parse_args(["--method", "graphmae", "--data", "cora"])) == "row"  # PyG NormalizeFeatures
    assert feature_norm(parse_args(["--method", "scgc", "--data", "cora", "--features-norm", "row"])) == "row"
    assert feature_norm(parse_args(["--method", "graphmae", "--data", "cora", "--raw-features"])) == "none"


@SHORT_START
@pytest.mark.slow
def test_a_scgc_run_killed_after_its_start_resumes_exactly(tmp_path):
    """Killed after the autoencoder start and before the warm-up ends: the resumed run takes the
    start's weights from the checkpoint (it does not redo it) and places the centres at epoch 12 as
    the uninterrupted run does (k-means seeded by (seed, epoch))."""
    import subprocess

    from tests.resume_harness import ENV, assert_kill_and_resume_is_exact, cli

    graph = small_graph(n=60)
    np.savetxt(tmp_path / "edges.csv", graph.edge_index.T.numpy(), fmt="%d", delimiter=",")
    np.save(tmp_path / "features.npy", graph.x.numpy())
    options = ["--method", "scgc", "--data", str(tmp_path), "--hidden", "16", "--embedding-dim", "3", "--clusters", "3",
               "--pretrain-epochs", "3", "--warmup-epochs", "12", "--epochs", "60", "--eval", "none", "--no-report",
               "--quiet", "--threads", "1"]
    subprocess.run(cli("graph", *options, "--out", str(tmp_path / "whole")), check=True, env=ENV, capture_output=True)
    killed = tmp_path / "killed"
    assert_kill_and_resume_is_exact(cli("graph", *options, "--out", str(killed)),
                                    cli("graph", "--out", str(killed), "--resume"), killed / "seed-0",
                                    tmp_path / "whole" / "seed-0", kill_after_step=4, seed=2)
    state = torch.load(killed / "seed-0" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert bool(state["method.pretrained"]) and bool(state["method.centres_ready"])
