"""Graphs: loaders against Cora's published counts and PyG's own reader; GraphMAE's masking and
scaled cosine error against hand computations; SCGC's positives against a dense numpy matrix
power and its losses against naive loops; augmentations' rates against their binomial
expectations; diffusion against its power series; the training loop and CLI end to end."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.graph.evaluate import clustering_scores, split_probe_accuracy
from contrastkit.modalities.graph.graphmae import (
    GraphMAE,
    apply_feature_mask,
    sample_feature_mask,
)
from contrastkit.modalities.graph.scgc import (
    SCGC,
    neighbour_positive_weights,
    normalized_adjacency,
    student_t_assignments,
    target_distribution,
)
from contrastkit.modalities.graph.data import NodeBatch, NodeBatchSampler
from contrastkit.objectives.neighbour import neighbour_contrastive_loss
from contrastkit.objectives.reconstruction import scaled_cosine_error
from contrastkit.modalities.graph.train import (
    GraphTrainConfig,
    embed_nodes,
    train_graph_method,
)
from contrastkit.modalities.graph.sources import (
    Graph,
    open_graph_source,
    read_edge_list_graph,
    read_planetoid,
)
from contrastkit.modalities.graph.views import (
    GraphAugment,
    drop_edges,
    drop_nodes,
    mask_features,
    ppr_diffusion,
    random_walk_subgraph,
)
from tests.conftest import data_path, needs_pyg


def random_graph(n: int = 30, p: float = 0.15, features: int = 8, classes: int = 3, seed: int = 0) -> Graph:
    """An undirected Erdos-Renyi graph without self-loops, with random features and labels."""
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n, n)) < p, k=1)
    src, dst = np.nonzero(upper | upper.T)
    labels = rng.integers(0, classes, n)
    masks = [torch.from_numpy(np.arange(n) % 3 == k) for k in range(3)]
    return Graph(
        x=torch.from_numpy(rng.random((n, features), dtype=np.float32)),
        edge_index=torch.from_numpy(np.stack([src, dst]).astype(np.int64)),
        y=torch.from_numpy(labels),
        train_mask=masks[0], val_mask=masks[1], test_mask=masks[2],
        name="random",
    )


def dense_adjacency(graph: Graph) -> np.ndarray:
    a = np.zeros((graph.num_nodes, graph.num_nodes))
    a[graph.edge_index[0].numpy(), graph.edge_index[1].numpy()] = 1.0
    return a


# ---------------------------------------------------------------------------------------------
# Loaders


def test_cora_matches_published_counts():
    graph = read_planetoid(data_path("planetoid/Cora/raw"), "cora")
    assert (graph.num_nodes, graph.num_features, graph.num_classes) == (2708, 1433, 7)
    assert [int(m.sum()) for m in (graph.train_mask, graph.val_mask, graph.test_mask)] == [140, 500, 1000]
    assert not (graph.train_mask & graph.test_mask).any() and not (graph.val_mask & graph.test_mask).any()
    # 5,278 undirected links after removing the raw lists' duplicates and self-loops; PyG's 10,556.
    assert graph.num_edges == 10556
    edges = set(map(tuple, graph.edge_index.T.tolist()))
    assert all((v, u) in edges for u, v in edges) and all(u != v for u, v in edges)
    # Public split: 20 training nodes per class; binary bag-of-words features.
    assert torch.bincount(graph.y[graph.train_mask]).tolist() == [20] * 7
    assert set(torch.unique(graph.x).tolist()) == {0.0, 1.0}
    # test.index lists the ids 1708..2707.
    assert torch.nonzero(graph.test_mask).min() == 1708 and torch.nonzero(graph.test_mask).max() == 2707


@needs_pyg
def test_cora_matches_torch_geometric_planetoid(tmp_path):
    from torch_geometric.datasets import Planetoid

    raw = data_path("planetoid/Cora/raw")
    shutil.copytree(raw, tmp_path / "Cora" / "raw")  # PyG writes processed/ beside raw/
    reference = Planetoid(str(tmp_path), "Cora")[0]
    graph = read_planetoid(raw, "cora")
    assert torch.equal(graph.x, reference.x) and torch.equal(graph.y, reference.y)
    for split in ("train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(graph, split), getattr(reference, split))
    assert set(map(tuple, graph.edge_index.T.tolist())) == set(map(tuple, reference.edge_index.T.tolist()))


def test_open_graph_source_builtin_name():
    data_path("planetoid/Cora/raw")
    assert open_graph_source("cora").num_nodes == 2708


def test_edge_list_graph(tmp_path):
    (tmp_path / "edges.csv").write_text("src,dst\n0,1\n1,2\n1,0\n2,2\n")
    features = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "features.npy", features)
    (tmp_path / "labels.txt").write_text("0\n1\n-1\n")
    graph = open_graph_source(str(tmp_path))
    assert torch.equal(graph.x, torch.from_numpy(features)) and graph.train_mask is None
    # Both directions, duplicates (1,0) and self-loops (2,2) dropped.
    assert sorted(map(tuple, graph.edge_index.T.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert graph.y.tolist() == [0, 1, -1] and graph.num_features == 2


def test_edge_list_weights_and_csv_features(tmp_path):
    (tmp_path / "e.csv").write_text("0,1,0.5\n2,1,2.0\n")
    (tmp_path / "x.csv").write_text("f0,f1\n1,0\n0,1\n1,0.5\n")  # a header row, then one row per node
    graph = read_edge_list_graph(tmp_path / "e.csv", tmp_path / "x.csv")
    assert graph.x.tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]] and graph.x.dtype == torch.float32
    weights = dict(zip(map(tuple, graph.edge_index.T.tolist()), graph.edge_weight.tolist()))
    assert weights == {(0, 1): 0.5, (1, 0): 0.5, (1, 2): 2.0, (2, 1): 2.0}


@pytest.mark.parametrize(
    "edges, features, message",
    [
        (None, "1,0\n0,1\n", "does not exist"),
        ("0,1\n1,2,3,4\n", "1,0\n0,1\n1,1\n", "ragged|2 columns"),
        ("0,1\n1,5\n", "1,0\n0,1\n1,1\n", "refers to node 5.*3 nodes"),
        ("0,1\n", "1,0\n0\n", "ragged"),
        ("0,1\n1,a\n", "1,0\n0,1\n", "integers"),
        ("src,dst\n", "1,0\n0,1\n", "no data rows"),
    ],
)
def test_edge_list_errors(tmp_path, edges, features, message):
    if edges is not None:
        (tmp_path / "e.csv").write_text(edges)
    (tmp_path / "x.csv").write_text(features)
    with pytest.raises(DataError, match=message):
        read_edge_list_graph(tmp_path / "e.csv", tmp_path / "x.csv")


def test_label_count_mismatch(tmp_path):
    (tmp_path / "e.csv").write_text("0,1\n")
    (tmp_path / "x.csv").write_text("1\n2\n")
    (tmp_path / "y.txt").write_text("0\n1\n1\n")
    with pytest.raises(DataError, match="3 labels.*2 nodes"):
        read_edge_list_graph(tmp_path / "e.csv", tmp_path / "x.csv", tmp_path / "y.txt")


def test_unknown_graph_name_and_incomplete_folder(tmp_path):
    with pytest.raises(ConfigError, match="neither a built-in"):
        open_graph_source(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="edges.csv"):
        open_graph_source(str(tmp_path))


def test_planetoid_unpickler_rejects_other_classes(tmp_path):
    import pickle

    for part in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        (tmp_path / f"ind.toy.{part}").write_bytes(pickle.dumps(print))  # a function: not allowed
    (tmp_path / "ind.toy.test.index").write_text("0\n")
    with pytest.raises(DataError, match="not allowed"):
        read_planetoid(tmp_path, "toy")


def test_subgraph_against_brute_force():
    graph = random_graph()
    nodes = torch.tensor([1, 4, 5, 9, 20])
    sub = graph.subgraph(nodes)
    expected = {(i, j) for i, u in enumerate(nodes.tolist()) for j, v in enumerate(nodes.tolist())
                if dense_adjacency(graph)[u, v]}
    assert set(map(tuple, sub.edge_index.T.tolist())) == expected
    assert torch.equal(sub.x, graph.x[nodes]) and torch.equal(sub.y, graph.y[nodes])


# ---------------------------------------------------------------------------------------------
# GraphMAE


def test_scaled_cosine_error_by_hand():
    reconstruction = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    target = torch.tensor([[1.0, 1.0], [0.0, 5.0], [-1.0, 0.0]])
    # cosines: 1/sqrt(2), 1, -1 -> errors (1 - 1/sqrt 2)^a, 0, 2^a
    for alpha in (1.0, 2.0, 3.0):
        expected = ((1 - 1 / math.sqrt(2)) ** alpha + 0.0 + 2.0**alpha) / 3
        assert scaled_cosine_error(reconstruction, target, alpha).item() == pytest.approx(expected, rel=1e-6)


def test_feature_mask_counts_and_placement():
    n, f = 200, 6
    x = torch.randn(n, f)
    token = torch.full((1, f), 7.0)
    mask = sample_feature_mask(n, 0.5, replace_rate=0.1, unchanged_rate=0.2, generator=torch.Generator().manual_seed(0))
    # floor(0.5 * 200) = 100 masked; floor(0.1 * 100) = 10 replaced; floor(0.2 * 100) = 20 unchanged.
    assert (len(mask.masked), len(mask.replaced), len(mask.unchanged), len(mask.token)) == (100, 10, 20, 70)
    parts = torch.cat([mask.token, mask.replaced, mask.unchanged])
    assert sorted(parts.tolist()) == sorted(mask.masked.tolist()) and len(set(parts.tolist())) == 100
    out = apply_feature_mask(x, mask, token)
    assert torch.equal(out[mask.token], token.expand(70, -1))
    assert torch.equal(out[mask.replaced], x[mask.replacement_sources])
    assert torch.equal(out[mask.unchanged], x[mask.unchanged])
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[mask.masked] = False
    assert torch.equal(out[untouched], x[untouched])


def test_feature_mask_paper_shares():
    # The paper's Cora setting: 2708 nodes, mask 0.5, replace 0.05 -> 1354 masked, 67 replaced.
    mask = sample_feature_mask(2708, 0.5, replace_rate=0.05)
    assert (len(mask.masked), len(mask.replaced), len(mask.token)) == (1354, 67, 1287)
    with pytest.raises(ConfigError):
        sample_feature_mask(10, 0.5, replace_rate=0.6, unchanged_rate=0.5)


@needs_pyg
def test_graphmae_gat_init_matches_the_closed_form_variances():
    # Official GraphMAE: W, a ~ N(0, 1.414^2 * 2 / (fan_in + fan_out)), bias 0. PyG's default is
    # Glorot uniform on [-l, l], l = sqrt(6 / (fan_in + fan_out)): variance l^2 / 3, half as much.
    torch.manual_seed(0)
    official = GraphMAE(300, hidden_dim=256, heads=4)
    library = GraphMAE(300, hidden_dim=256, heads=4, init="pyg")
    first, first_pyg = official.encoder.convs[0], library.encoder.convs[0]
    fan_in, fan_out = 300, 256  # lin: (heads * 64 = 256, 300)
    assert first.lin.weight.std().item() == pytest.approx(1.414 * math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    assert first_pyg.lin.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    assert first_pyg.lin.weight.abs().max().item() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6
    # att_src (1, 4, 64): torch's fans for a 3-d tensor are (4 * 64, 1 * 64).
    att_std = 1.414 * math.sqrt(2 / (4 * 64 + 64))
    atts = torch.cat([c.att_src.flatten() for c in official.encoder.convs[:1]] + [first.att_dst.flatten()])
    assert atts.std().item() == pytest.approx(att_std, rel=0.15)
    assert all(torch.count_nonzero(c.bias) == 0 for c in [*official.encoder.convs, *official.decoder.convs])
    with pytest.raises(ConfigError, match="init"):
        GraphMAE(10, init="xavier")


@needs_pyg
def test_graphmae_remasks_decoder_input_and_scores_masked_nodes_only():
    torch.manual_seed(0)
    graph = random_graph(n=40, features=12)
    model = GraphMAE(12, encoder="gat", hidden_dim=16, heads=2, feat_drop=0.0, attn_drop=0.0,
                     mask_rate=0.5, replace_rate=0.1)
    with torch.no_grad():
        model.mask_token.normal_()
    captured = {}
    model.decoder.register_forward_pre_hook(lambda module, inputs: captured.update(h=inputs[0].detach()))
    torch.manual_seed(1)
    loss, _ = model.training_loss(graph)
    torch.manual_seed(1)
    mask = sample_feature_mask(40, 0.5, 0.1, 0.0)  # the same draws as inside training_loss
    assert torch.all(captured["h"][mask.masked] == 0)
    assert captured["h"][~torch.isin(torch.arange(40), mask.masked)].abs().sum() > 0
    # The loss rebuilt step by step: token rows, encoder, re-mask, decoder, SCE over M by a loop.
    x_tilde = graph.x.clone()
    x_tilde[mask.replaced] = graph.x[mask.replacement_sources]
    x_tilde[mask.token] = model.mask_token.detach()
    with torch.no_grad():
        h = model.encoder_to_decoder(model.encoder(x_tilde, graph.edge_index))
        h[mask.masked] = 0
        z = model.decoder(h, graph.edge_index)
    errors = [(1 - float(torch.dot(z[i], graph.x[i]) / (z[i].norm() * graph.x[i].norm()))) ** 3
              for i in mask.masked.tolist()]
    assert loss.item() == pytest.approx(np.mean(errors), rel=1e-4)
    loss.backward()
    assert model.mask_token.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# SCGC


@pytest.mark.parametrize("kind", ["row", "sym"])
@pytest.mark.parametrize("cumulative", [False, True])
def test_positive_weights_against_dense_matrix_power(kind, cumulative):
    graph = random_graph(n=25)
    a = dense_adjacency(graph) + np.eye(25)
    degree = a.sum(axis=1)
    a_hat = a / degree[:, None] if kind == "row" else a / np.sqrt(np.outer(degree, degree))
    order = 3
    expected = (sum(np.linalg.matrix_power(a_hat, k) for k in range(1, order + 1))
                if cumulative else np.linalg.matrix_power(a_hat, order))
    normalized = normalized_adjacency(graph.adjacency(), kind)
    full = neighbour_positive_weights(normalized, order, cumulative).numpy()
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-7)
    nodes = np.array([0, 3, 7, 11, 24])
    batch = neighbour_positive_weights(normalized, order, cumulative, nodes).numpy()
    np.testing.assert_allclose(batch, expected[np.ix_(nodes, nodes)], rtol=1e-5, atol=1e-7)


def test_neighbour_contrastive_loss_against_loop():
    torch.manual_seed(0)
    z = torch.randn(6, 4)
    w = torch.rand(6, 6) * (torch.rand(6, 6) < 0.5)
    w[2] = 0  # an anchor without positives is left out
    w[2, 2] = 1  # the diagonal is ignored
    tau = 0.3
    zn = z / z.norm(dim=1, keepdim=True)
    terms = []
    for i in range(6):
        positives = sum(w[i, j] * math.exp(zn[i] @ zn[j] / tau) for j in range(6) if j != i)
        if positives == 0:
            continue
        denominator = sum(math.exp(zn[i] @ zn[k] / tau) for k in range(6) if k != i)
        terms.append(-math.log(positives / denominator))
    assert neighbour_contrastive_loss(z, w, tau).item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_student_t_and_target_distribution_against_loops():
    torch.manual_seed(0)
    z, mu = torch.randn(5, 3), torch.randn(2, 3)
    q = student_t_assignments(z, mu)
    for i in range(5):
        raw = [1 / (1 + float(((z[i] - mu[j]) ** 2).sum())) for j in range(2)]
        assert q[i].tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-5)
    p = target_distribution(q)
    f = q.sum(dim=0)
    for i in range(5):
        raw = [float(q[i, j] ** 2 / f[j]) for j in range(2)]
        assert p[i].tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-5)


def test_scgc_batch_of_all_nodes_equals_full_graph():
    graph = random_graph(n=30)
    torch.manual_seed(0)
    model = SCGC(8, graph.adjacency(), 3, hidden=(16,), embedding_dim=4, order=2, warmup_epochs=0)
    model.init_centres(graph)
    full, _ = model.training_loss(graph)
    batched, _ = model.training_loss(NodeBatch(graph, torch.arange(30)))
    assert batched.item() == pytest.approx(full.item(), rel=1e-6)


def test_scgc_trains_on_neighbourhood_batches():
    graph = random_graph(n=60, p=0.08)
    torch.manual_seed(0)
    model = SCGC(8, graph.adjacency(), 3, hidden=(16,), embedding_dim=4, warmup_epochs=2)
    config = GraphTrainConfig(epochs=4, batch_size=20, sampler="neighbourhood", walk_length=2, log_every=100)
    history = train_graph_method(model, graph, config, log=None).history
    assert all(math.isfinite(h["loss"]) for h in history) and "kl" in history[-1]
    batches = list(NodeBatchSampler(graph, 20, "neighbourhood", walk_length=2))
    assert all(len(b) <= 20 for b in batches)


# ---------------------------------------------------------------------------------------------
# Augmentations


def test_drop_edges_rate_is_binomial():
    edge_index = torch.randint(0, 1000, (2, 20000))
    kept = drop_edges(edge_index, 0.3, torch.Generator().manual_seed(0)).shape[1]
    # kept ~ Binomial(20000, 0.7): mean 14000, sd 64.8; allow 4 sd.
    assert abs(kept - 14000) < 4 * math.sqrt(20000 * 0.3 * 0.7)


def test_drop_edges_undirected_drops_pairs_together():
    graph = random_graph(n=80, p=0.2)
    out = drop_edges(graph.edge_index, 0.5, torch.Generator().manual_seed(0), undirected=True)
    edges = set(map(tuple, out.T.tolist()))
    assert all((v, u) in edges for u, v in edges)
    assert 0.35 < len(edges) / graph.num_edges < 0.65


def test_mask_features_zeroes_whole_columns_at_rate():
    x = torch.rand(50, 4000) + 0.1
    out = mask_features(x, 0.25, torch.Generator().manual_seed(0))
    zero_columns = (out == 0).all(dim=0)
    assert ((out == 0) == zero_columns[None, :]).all()  # a column is zero for every node or none
    assert abs(zero_columns.float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000)


def test_drop_nodes_isolates_dropped_nodes():
    graph = random_graph(n=400, p=0.05)
    x, edge_index, kept = drop_nodes(graph.x, graph.edge_index, 0.2, torch.Generator().manual_seed(0))
    assert abs((~kept).float().mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 400)
    assert (x[~kept] == 0).all() and torch.equal(x[kept], graph.x[kept])
    assert kept[edge_index].all()
    expected = {(u, v) for u, v in graph.edge_index.T.tolist() if kept[u] and kept[v]}
    assert set(map(tuple, edge_index.T.tolist())) == expected


def test_ppr_diffusion_rows_sum_to_one_and_match_power_series():
    graph = random_graph(n=20, p=0.2)
    alpha = 0.2
    s = ppr_diffusion(graph.edge_index, 20, alpha).double()
    np.testing.assert_allclose(s.sum(dim=1).numpy(), 1.0, atol=1e-6)
    a = dense_adjacency(graph) + np.eye(20)
    t = a / a.sum(axis=1, keepdims=True)
    series = alpha * sum((1 - alpha) ** k * np.linalg.matrix_power(t, k) for k in range(200))
    np.testing.assert_allclose(s.numpy(), series, atol=1e-5)
    sparse = ppr_diffusion(graph.edge_index, 20, alpha, top_k=5)
    assert ((sparse > 0).sum(dim=1) <= 5).all()
    np.testing.assert_allclose(sparse.sum(dim=1).numpy(), 1.0, atol=1e-5)


def test_random_walk_subgraph_walks_along_edges():
    graph = random_graph(n=50, p=0.1)
    start = torch.tensor([0, 10, 20])
    nodes, edges = random_walk_subgraph(graph.edge_index, 50, start, 4, torch.Generator().manual_seed(0))
    assert set(start.tolist()) <= set(nodes.tolist())
    a = dense_adjacency(graph)
    expected = {(i, j) for i, u in enumerate(nodes.tolist()) for j, v in enumerate(nodes.tolist()) if a[u, v]}
    assert set(map(tuple, edges.T.tolist())) == expected
    # Every visited node other than the starts is reachable: it has a neighbour in the set.
    for u in set(nodes.tolist()) - set(start.tolist()):
        assert a[u, nodes.numpy()].sum() > 0


def test_graph_augment_view_keeps_node_count():
    graph = random_graph()
    view = GraphAugment(edge_drop=0.3, feature_mask=0.3, node_drop=0.1)(graph.x, graph.edge_index)
    assert view.x.shape == graph.x.shape and view.kept_nodes.shape == (30,)
    with pytest.raises(ConfigError):
        GraphAugment(edge_drop=1.5)


# ---------------------------------------------------------------------------------------------
# Evaluation, methods end to end, CLI


def test_graph_clustering_accuracy_matches_scipy_hungarian():
    import itertools

    graph = random_graph(n=90, classes=3)
    y = graph.y.numpy()
    permutation = np.array([2, 0, 1])  # class k is cluster permutation[k]
    rng = np.random.default_rng(0)
    # Well-separated clusters whose ids are a permutation of the classes, 10% of nodes moved.
    cluster_ids = permutation[y].copy()
    moved = rng.choice(90, 9, replace=False)
    cluster_ids[moved] = rng.integers(0, 3, 9)
    embeddings = np.eye(3)[cluster_ids] * 10 + rng.normal(0, 0.01, (90, 3))
    scores = clustering_scores(embeddings, graph)
    # Three derivations of the same number: undoing the known permutation, scipy's assignment on
    # the contingency table, and brute force over all 3! cluster -> class maps.
    inverse = np.argsort(permutation)
    known = np.mean(inverse[cluster_ids] == y)
    counts = np.zeros((3, 3))
    np.add.at(counts, (cluster_ids, y), 1)
    rows, cols = linear_sum_assignment(-counts)
    brute = max(np.mean(np.array(m)[cluster_ids] == y) for m in itertools.permutations(range(3)))
    assert scores["acc"] == pytest.approx(known) == pytest.approx(counts[rows, cols].sum() / 90)
    assert scores["acc"] == pytest.approx(brute)
    assert known == pytest.approx(1 - np.sum(cluster_ids[moved] != permutation[y[moved]]) / 90)
    # No node moved: ACC, NMI and ARI are exactly 1 whatever the permutation.
    perfect = clustering_scores(np.eye(3)[permutation[y]] * 10, graph)
    assert perfect == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})


def test_split_probe_selects_c_on_validation_only():
    graph = random_graph(n=90, classes=3)
    embeddings = np.eye(3)[graph.y.numpy()] + np.random.default_rng(0).normal(0, 0.1, (90, 3))
    result = split_probe_accuracy(embeddings, graph)
    assert result["test"] == 1.0 and result["val"] == 1.0
    # Scrambling the test labels changes the test score but not the chosen C.
    scrambled = Graph(**{**graph.__dict__, "y": graph.y.clone()})
    scrambled.y[graph.test_mask] = (scrambled.y[graph.test_mask] + 1) % 3
    assert split_probe_accuracy(embeddings, scrambled)["C"] == result["C"]


def blob_graph(n: int = 300, dim: int = 5, classes: int = 3, spread: float = 1.5, seed: int = 0) -> tuple[Graph, np.ndarray]:
    """A graph whose embeddings are overlapping Gaussian blobs (one per class), split 50/25/25 %."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(0, 1, (classes, dim)) * 2
    embeddings = (centres[y] + rng.normal(0, spread, (n, dim))).astype(np.float32)
    part = rng.permutation(n)
    masks = [np.zeros(n, dtype=bool) for _ in range(3)]
    for mask, rows in zip(masks, (part[: n // 2], part[n // 2 : 3 * n // 4], part[3 * n // 4 :])):
        mask[rows] = True
    graph = Graph(x=torch.from_numpy(embeddings), edge_index=torch.zeros(2, 0, dtype=torch.long),
                  y=torch.from_numpy(y), train_mask=torch.from_numpy(masks[0]),
                  val_mask=torch.from_numpy(masks[1]), test_mask=torch.from_numpy(masks[2]))
    return graph, embeddings


def test_adam_probe_converges_to_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from contrastkit.modalities.graph.evaluate import adam_probe_accuracy

    graph, embeddings = blob_graph()
    train, test = graph.train_mask.numpy(), graph.test_mask.numpy()
    y = graph.y.numpy()
    # Adam's coupled weight decay wd minimises mean CE + wd/2 ||theta||^2, i.e. scikit-learn's
    # C * sum CE + ||W||^2 / 2 with C = 1 / (wd * n_train) (the bias aside, which sklearn leaves
    # unpenalised; small here).
    wd = 1e-3
    reference = LogisticRegression(C=1 / (wd * train.sum()), max_iter=5000).fit(embeddings[train], y[train])
    expected = np.mean(reference.predict(embeddings[test]) == y[test])
    result = adam_probe_accuracy(embeddings, graph, seed=0, lr=0.05, weight_decay=wd, epochs=1500)
    assert 0.5 < expected < 1.0  # overlapping classes: the comparison is not trivially 1 = 1
    assert abs(result["final_test"] - expected) <= 2 / test.sum()


def test_adam_probe_chooses_its_epoch_on_validation_labels_only():
    from contrastkit.modalities.graph.evaluate import adam_probe_accuracy

    graph, embeddings = blob_graph(spread=2.5)
    result = adam_probe_accuracy(embeddings, graph, seed=0, epochs=100)
    scrambled = Graph(**{**graph.__dict__, "y": graph.y.clone()})
    scrambled.y[graph.test_mask] = (scrambled.y[graph.test_mask] + 1) % 3
    other = adam_probe_accuracy(embeddings, scrambled, seed=0, epochs=100)
    assert (other["epoch"], other["val"]) == (result["epoch"], result["val"])
    assert other["test"] != result["test"]
    # The kept epoch is the last one with the best validation accuracy: training for fewer
    # epochs than that epoch gives a lower or equal validation accuracy.
    shorter = adam_probe_accuracy(embeddings, graph, seed=0, epochs=result["epoch"])
    assert shorter["val"] <= result["val"] and shorter["epoch"] < result["epoch"]
    # Seeds change only the initialisation: same seed, same result; several seeds, some spread.
    assert adam_probe_accuracy(embeddings, graph, seed=0, epochs=100) == result
    tests = {adam_probe_accuracy(embeddings, graph, seed=s, epochs=10)["test"] for s in range(5)}
    assert len(tests) > 1
    separable, _ = blob_graph(spread=0.05)
    assert adam_probe_accuracy(separable.x, separable, epochs=50)["test"] == 1.0


def test_probe_summary_splits_the_spread_over_probe_and_pretraining_seeds():
    from contrastkit.modalities.graph.cli import summarize

    tests = [[0.80, 0.82, 0.81], [0.70, 0.74, 0.72]]  # 2 pretraining seeds x 3 probe seeds
    runs = [{"probe": {"test": t, "val": t, "final_test": t, "epoch": [1, 2, 3]}} for t in tests]
    summary = summarize(runs)
    flat = [0.80, 0.82, 0.81, 0.70, 0.74, 0.72]
    assert summary["probe_test"] == pytest.approx((np.mean(flat), np.std(flat)))
    within = math.sqrt(((0.01**2 + 0.01**2 + 0) / 3 + (0.02**2 + 0.02**2 + 0) / 3) / 2)
    assert summary["probe_test_std_over_probe_seeds"] == pytest.approx(within)
    assert summary["probe_test_std_over_pretraining_seeds"] == pytest.approx(0.045)  # means 0.81, 0.72


def write_graph_folder(folder, graph: Graph, split: bool = True) -> None:
    np.savetxt(folder / "edges.csv", graph.edge_index.T.numpy(), fmt="%d", delimiter=",")
    np.save(folder / "features.npy", graph.x.numpy())
    np.savetxt(folder / "labels.txt", graph.y.numpy(), fmt="%d")
    if split:
        words = np.where(graph.train_mask, "train", np.where(graph.val_mask, "val", "test"))
        (folder / "split.txt").write_text("\n".join(words) + "\n")


def test_split_file_loads_and_checks(tmp_path):
    graph = random_graph(n=12)
    write_graph_folder(tmp_path, graph)
    loaded = open_graph_source(str(tmp_path))
    for key in ("train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(loaded, key), getattr(graph, key))
    (tmp_path / "split.txt").write_text("train\nvalid\n" + "test\n" * 10)
    with pytest.raises(DataError, match="valid"):
        open_graph_source(str(tmp_path))
    (tmp_path / "split.txt").write_text("train\nval\ntest\n")
    with pytest.raises(DataError, match="3 lines.*12 nodes"):
        open_graph_source(str(tmp_path))


@pytest.mark.parametrize("method, options", [
    pytest.param("graphmae", ["--hidden", "16"], marks=needs_pyg),
    ("scgc", ["--hidden", "16", "--embedding-dim", "4", "--warmup-epochs", "1"]),  # an MLP: no torch-geometric
    pytest.param("graphcl", ["--hidden", "8"], marks=needs_pyg),
    pytest.param("graphcl", ["--hidden", "8", "--objective", "dcl"], marks=needs_pyg),
    pytest.param("graphclip", [], marks=needs_pyg),
])
def test_cli_every_method_reports_probe_over_seeds(tmp_path, method, options):
    from contrastkit.modalities.graph.cli import main

    graph = random_graph(n=30, features=6)
    write_graph_folder(tmp_path, graph)
    if method == "graphclip":
        np.save(tmp_path / "text.npy", np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32))
        options = [*options, "--text-embeddings", str(tmp_path / "text.npy")]
    out = tmp_path / "run"
    status = main(["--method", method, "--data", str(tmp_path), "--epochs", "2", "--seeds", "2",
                   "--probe-seeds", "3", "--probe-epochs", "5", "--probe", "adam", "logreg",
                   *options, "--out", str(out), "--quiet", "--no-report"])
    assert status == 0
    report = json.loads((out / "results.json").read_text())
    assert [len(r["probe"]["test"]) for r in report["runs"]] == [3, 3]
    flat = [t for r in report["runs"] for t in r["probe"]["test"]]
    assert report["summary"]["probe_test"] == pytest.approx([np.mean(flat), np.std(flat)])
    assert {"probe_logreg_test", "clustering_acc"} <= set(report["summary"])


def fixed_draw_loss(model, graph: Graph, draws: int = 5) -> float:
    """The method's training loss without dropout, averaged over the same seeded masks, views or
    batches every time it is called: a before/after comparison sees the model change, not the draws."""
    model.eval()
    with torch.no_grad():
        return float(np.mean([model.training_loss(graph, torch.Generator().manual_seed(draw))[0].item()
                              for draw in range(draws)]))


@needs_pyg
@pytest.mark.parametrize("method", ["graphmae", "graphcl", "graphclip"])
def test_methods_train_and_embed(method):
    from contrastkit.modalities.graph.graphcl import GraphCL
    from contrastkit.modalities.graph.graphclip import GraphCLIP

    graph = random_graph(n=40, features=10)
    # Centred features: with uniform [0, 1) ones the untrained GraphCL's projections are nearly parallel
    # (mean pairwise cosine 0.9997), and its loss can then only fall towards collapse, ln(2N - 1).
    graph = Graph(**{**graph.__dict__, "x": graph.x - graph.x.mean(dim=0)})
    torch.manual_seed(0)
    model = {
        "graphmae": lambda: GraphMAE(10, encoder="gcn", hidden_dim=16, num_layers=2),
        "graphcl": lambda: GraphCL(10, hidden_dim=8, projection_dim=8),
        "graphclip": lambda: GraphCLIP(10, torch.randn(40, 5), hidden_dim=16, embedding_dim=8, batch_size=12),
    }[method]()
    before = fixed_draw_loss(model, graph)
    history = train_graph_method(model, graph, GraphTrainConfig(epochs=30, lr=1e-2), log=None).history
    assert len(history) == 30 and all(math.isfinite(h["loss"]) for h in history)
    assert embed_nodes(model, graph).shape == (40, model.output_dim)
    # Training descends the method's own objective: on the same draws, 30 steps lower it by more than
    # 3% (measured: GraphMAE 1.37 -> 1.08, GraphCL 4.37 -> 4.12, GraphCLIP 3.21 -> 2.47; GraphCL on the raw
    # features, 4.373 -> 4.370).
    assert fixed_draw_loss(model, graph) < 0.97 * before


@needs_pyg
def test_training_is_reproducible_with_a_seed():
    from contrastkit.modalities.graph.train import seed_everything

    graph = random_graph(n=40, features=10)
    losses = []
    for _ in range(2):
        seed_everything(3)
        model = GraphMAE(10, encoder="gin", hidden_dim=16)
        history = train_graph_method(model, graph, GraphTrainConfig(epochs=3, seed=3), log=None).history
        losses.append([h["loss"] for h in history])
    assert losses[0] == losses[1]


def test_cli_on_an_edge_list_folder(tmp_path, capsys):
    from contrastkit.modalities.graph.cli import main

    graph = random_graph(n=30, features=6)
    np.savetxt(tmp_path / "edges.csv", graph.edge_index.T.numpy(), fmt="%d", delimiter=",")
    np.save(tmp_path / "features.npy", graph.x.numpy())
    np.savetxt(tmp_path / "labels.txt", graph.y.numpy(), fmt="%d")
    out = tmp_path / "run"
    status = main(["--method", "scgc", "--data", str(tmp_path), "--epochs", "3", "--warmup-epochs", "1",
                   "--hidden", "8", "--embedding-dim", "4", "--seeds", "2", "--out", str(out), "--quiet",
                   "--no-report"])
    assert status == 0
    report = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 1] and "clustering_acc" in report["summary"]
    assert "probe_test" not in report["summary"]  # labels but no split: clustering only
    assert main(["--method", "scgc", "--data", str(tmp_path / "missing")]) == 2
    assert "neither a built-in" in capsys.readouterr().err
    # Asking for the probe on a graph without a split fails before any training.
    assert main(["--method", "scgc", "--data", str(tmp_path), "--eval", "probe"]) == 2
    assert "no split" in capsys.readouterr().err
    assert main(["--method", "scgc", "--data", str(tmp_path), "--epoch", "3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Unknown option '--epoch'" in err and "Did you mean: --epochs" in err, err
    # An option of another graph method is refused, not ignored (GraphMAE has no objective).
    assert main(["--method", "graphmae", "--data", str(tmp_path), "--objective", "dcl"]) == 2
    assert "--objective does not apply to method 'graphmae'" in " ".join(capsys.readouterr().err.split())


# ---------------------------------------------------------------------------------------------
# Training on the engine: optimiser and schedule, node batches, run folders, resume


@needs_pyg
def test_full_graph_training_equals_a_plain_adam_loop_with_cosine_decay():
    """The engine trains as the old loop did: Adam with weight decay on every parameter, the rate
    lr (1 + cos(pi e / E)) / 2 in epoch e, one step per epoch; given the engine's per-step seeds
    (masks and dropout), a plain loop reaches the same weights bit for bit."""
    from contrastkit.engine import step_seed
    from contrastkit.modalities.graph.train import seed_everything

    graph = random_graph(n=40, features=10)
    epochs, lr, weight_decay, seed = 6, 1e-2, 1e-3, 7
    models = []
    for _ in range(2):
        seed_everything(0)
        models.append(GraphMAE(10, encoder="gat", hidden_dim=16, heads=2, mask_rate=0.4))
    trained, reference = models
    config = GraphTrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, cosine_schedule=True, seed=seed)
    history = train_graph_method(trained, graph, config, log=None).history
    optimizer = torch.optim.Adam(reference.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1 + math.cos(math.pi * e / epochs)) / 2)
    reference.train()
    losses, rates = [], []
    for epoch in range(epochs):
        torch.manual_seed(step_seed(seed, epoch, 0))
        loss, _ = reference.training_loss(graph)
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    for (name, value), expected in zip(trained.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(value, expected), name
    assert [h["loss"] for h in history] == pytest.approx(losses, rel=1e-6)
    assert [h["lr"] for h in history] == pytest.approx(rates, rel=1e-6)


@pytest.mark.parametrize("kind", ["random", "neighbourhood"])
def test_node_batches_are_a_function_of_seed_and_epoch_and_shared_out_over_processes(kind):
    graph = random_graph(n=50, p=0.1)

    def batches(epoch: int, rank: int = 0, replicas: int = 1) -> list[list[int]]:
        sampler = NodeBatchSampler(graph, 12, kind, walk_length=2, seed=3, rank=rank, num_replicas=replicas)
        sampler.set_epoch(epoch)
        return list(sampler)

    whole = batches(2)
    assert whole == batches(2) and whole != batches(3)
    assert all(b == sorted(b) and len(b) <= 12 for b in whole)
    if kind == "random":  # a partition of the nodes: 4 batches of 12 and one of 2
        assert sorted(n for b in whole for n in b) == list(range(50)) and len(whole) == 5
    first, second = batches(2, 0, 2), batches(2, 1, 2)
    assert len(first) == len(second) == len(whole) // 2
    interleaved = [b for pair in zip(first, second, strict=True) for b in pair]
    assert interleaved == whole[: len(interleaved)]


@needs_pyg
def test_cli_run_folders_resume_and_reload(tmp_path, monkeypatch, capsys):
    from contrastkit.modalities.graph.cli import main
    from contrastkit.modalities.graph.run_folder import load_trained

    graph = random_graph(n=30, features=6)
    data = tmp_path / "graph"
    data.mkdir()
    write_graph_folder(data, graph)
    out = tmp_path / "run"
    argv = ["--method", "graphmae", "--data", str(data), "--hidden", "8", "--epochs", "3", "--seeds", "2",
            "--first-seed", "4", "--eval", "clustering", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for seed, run in zip((4, 5), results["runs"], strict=True):
        folder = out / f"seed-{seed}"
        names = {"config.yaml", "checkpoints", "metrics.csv", "summary.json", "embeddings.npy", "labels.npy",
                 "report.md", "plots"}
        assert names <= {p.name for p in folder.iterdir()}
        assert run["seed"] == seed and run["steps"] == 3 and json.loads((folder / "summary.json").read_text()) == run
        model, reloaded_graph = load_trained(folder)  # the encoder, rebuilt from config.yaml + checkpoint
        np.testing.assert_array_equal(embed_nodes(model, reloaded_graph).numpy(), np.load(folder / "embeddings.npy"))
    # A finished run is never overwritten; --resume reads its seeds back without training again.
    assert main([*argv, "--out", str(out)]) == 2
    assert "already holds a run" in " ".join(capsys.readouterr().err.split())
    checkpoint_time = (out / "seed-4" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert main(["--out", str(out), "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    assert (out / "seed-4" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == checkpoint_time
    # --out FILE.json: the results file alone, as before run folders; the folders go under runs/.
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--seeds", "1", "--out", "results.json", "--no-report"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert json.loads((tmp_path / "results.json").read_text())["run_folder"] == str(folder.relative_to(tmp_path))
    assert (folder / "seed-4" / "checkpoints" / "last.ckpt").is_file()


# SIGKILL during training, then --resume: the full graph (one step an epoch) and node batches
# (3 batches an epoch, a checkpoint every 2 steps, so most checkpoints fall inside an epoch).
KILLED_RUNS = {
    "graphmae-full-graph": ["--method", "graphmae", "--hidden", "16", "--epochs", "12"],
    "graphcl-node-batches": ["--method", "graphcl", "--hidden", "16", "--batch-size", "1024", "--epochs", "4",
                             "--max-steps", "10", "--checkpoint-every-steps", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KILLED_RUNS))
@needs_pyg
def test_a_graph_run_killed_between_checkpoints_resumes_exactly(tmp_path, name):
    import subprocess

    from tests.conftest import DATA_ROOT
    from tests.resume_harness import ENV, assert_kill_and_resume_is_exact, cli

    data_path("planetoid/Cora/raw")
    env = {**ENV, "CONTRASTKIT_DATA": str(DATA_ROOT)}
    options = ["--data", "cora", *KILLED_RUNS[name], "--seeds", "1", "--first-seed", "2", "--eval", "none",
               "--no-report", "--quiet", "--threads", "1"]
    subprocess.run(cli("graph", *options, "--out", str(tmp_path / "whole")), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    assert_kill_and_resume_is_exact(cli("graph", *options, "--out", str(killed)),
                                    cli("graph", "--out", str(killed), "--resume"), killed / "seed-2",
                                    tmp_path / "whole" / "seed-2", kill_after_step=4, seed=3, env=env)


@pytest.mark.slow
@needs_pyg
def test_two_processes_train_as_one_on_the_mean_of_their_losses(tmp_path):
    """--devices 2 --strategy ddp on the full graph: each process draws its own masks (seeded by
    (seed, step, rank)) and DDP averages the gradients, so the weights equal one process stepping
    on the mean of both processes' losses."""
    import subprocess

    from contrastkit.engine import step_seed
    from contrastkit.modalities.graph.cli import build_method, load_graph, parse_args
    from contrastkit.modalities.graph.train import seed_everything
    from tests.resume_harness import ENV, cli, load_checkpoint

    graph = random_graph(n=40, features=8)
    data = tmp_path / "graph"
    data.mkdir()
    write_graph_folder(data, graph)
    options = ["--method", "graphmae", "--data", str(data), "--hidden", "8", "--epochs", "4", "--seeds", "1",
               "--first-seed", "3", "--eval", "none", "--no-report", "--quiet", "--threads", "1"]
    subprocess.run(cli("graph", *options, "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path / "ddp")),
                   check=True, env=ENV, capture_output=True)
    args = parse_args(options)
    graph = load_graph(args)  # as the command does: the graph, then the seeded initialisation
    seed_everything(3)
    reference = build_method("graphmae", graph, args)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3, weight_decay=2e-4)  # GraphMAE's defaults
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1 + math.cos(math.pi * e / 4)) / 2)
    reference.train()
    for step in range(4):
        losses = []
        for rank in range(2):
            torch.manual_seed(step_seed(3, step, rank))
            losses.append(reference.training_loss(graph)[0])
        optimizer.zero_grad()
        (sum(losses) / 2).backward()
        optimizer.step()
        schedule.step()
    trained = load_checkpoint(tmp_path / "ddp" / "seed-3")["state_dict"]
    for name, expected in reference.state_dict().items():
        torch.testing.assert_close(trained[f"method.{name}"], expected, rtol=1e-5, atol=1e-6, msg=name)
    assert json.loads((tmp_path / "ddp" / "seed-3" / "summary.json").read_text())["world_size"] == 2
