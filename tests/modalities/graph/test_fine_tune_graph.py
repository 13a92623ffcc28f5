"""Fine-tuning a graph run's node encoder on Cora, against second derivations: the rows against the
public split and the closed-form class counts, a frozen GNN against a head trained by the same loop on
the run's own node embeddings, and the test nodes' labels unread unless --split test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contrastkit.evaluation.linear import linear_probe_accuracy
from tests.fine_tune_reference import hand_trained_head
from tests.conftest import data_path

pytest.importorskip("torch_geometric", reason="GNN encoders need torch-geometric")

N_LABELS, DEV_SIZE = 70, 500  # 10 per class of Cora's 7


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    import contrastkit

    data_path("planetoid/Cora/raw")
    out = tmp_path_factory.mktemp("graph-fine-tune") / "run"
    contrastkit.fit(method="graphmae", data="cora", max_steps=2, hidden=32, eval="none", no_report=True, quiet=True,
                    out=str(out))
    return out


def cora():
    from contrastkit.modalities.graph.sources import open_graph_source

    data_path("planetoid/Cora/raw")
    return open_graph_source("cora")


def test_rows_are_balanced_off_the_public_test_nodes_and_fixed_by_seed():
    from contrastkit.modalities.graph.fine_tune import node_rows

    graph = cora()
    y, test_mask = graph.y.numpy(), graph.test_mask.numpy()
    labelled, dev, test = node_rows(y, test_mask, N_LABELS, DEV_SIZE, seed=1)
    assert np.bincount(y[labelled], minlength=7).tolist() == [N_LABELS // 7] * 7
    assert abs(len(dev) - DEV_SIZE) <= 7  # rounded per class
    np.testing.assert_array_equal(test, np.flatnonzero(test_mask))  # the public 1,000 test nodes
    assert len(test) == 1000
    assert not (set(labelled) & set(dev)) and not (set(labelled) | set(dev)) & set(test)
    again = node_rows(y, test_mask, N_LABELS, DEV_SIZE, seed=1)
    other = node_rows(y, test_mask, N_LABELS, DEV_SIZE, seed=2)
    np.testing.assert_array_equal(labelled, again[0])
    np.testing.assert_array_equal(dev, again[1])
    assert not np.array_equal(labelled, other[0])


def test_a_frozen_gnn_gives_the_head_trained_on_the_runs_node_embeddings(graph_run):
    from contrastkit.modalities.graph.fine_tune import fine_tune_graph_run, node_rows
    from contrastkit.modalities.graph.run_folder import load_trained
    from contrastkit.modalities.graph.train import embed_nodes

    figures = fine_tune_graph_run(graph_run, N_LABELS, epochs=4, lrs=(0.05,), encoder_lr_scale=0.0,
                                  dev_size=DEV_SIZE, batch_size=32, seed=0)
    # Second derivation: the run's own embedding path (method.embed in eval mode), then the same loop
    # over a head alone.
    method, graph = load_trained(graph_run / "seed-0")
    frozen = embed_nodes(method, graph)
    y = graph.y
    labelled, dev, _ = node_rows(y.numpy(), graph.test_mask.numpy(), N_LABELS, DEV_SIZE, 0)
    dev_top1, _ = hand_trained_head(frozen, y, labelled, dev, 7, epochs=4, lr=0.05, batch_size=32)
    assert figures["run"] == str(graph_run / "seed-0") and figures["method"] == "graphmae"
    assert figures["fine_tune_dev_top1"] == pytest.approx(max(dev_top1))
    assert figures["chosen"]["epochs"] == int(np.argmax(dev_top1)) + 1
    assert figures["linear_top1"] == pytest.approx(
        linear_probe_accuracy(frozen[labelled].numpy(), y[labelled].numpy(), frozen[dev].numpy(), y[dev].numpy(), 0))


def test_the_test_labels_are_read_only_with_split_test(graph_run, monkeypatch):
    from contrastkit.modalities.graph import run_folder
    from contrastkit.modalities.graph.fine_tune import fine_tune_graph_run

    options = dict(epochs=2, lrs=(0.01,), dev_size=DEV_SIZE, batch_size=N_LABELS, seed=0)
    honest = {split: fine_tune_graph_run(graph_run, N_LABELS, split=split, **options) for split in ("dev", "test")}
    load_trained = run_folder.load_trained

    def with_test_labels_shifted(folder, **kwargs):
        method, graph = load_trained(folder, **kwargs)
        test = graph.test_mask
        graph.y[test] = (graph.y[test] + 1) % 7  # every test label wrong
        return method, graph

    monkeypatch.setattr(run_folder, "load_trained", with_test_labels_shifted)
    shifted = {split: fine_tune_graph_run(graph_run, N_LABELS, split=split, **options) for split in ("dev", "test")}
    assert shifted["dev"] == honest["dev"]  # the dev figures never saw a test label
    assert honest["test"]["n_scored"] == 1000 and honest["test"]["scored"].startswith("test")
    assert shifted["test"]["fine_tune_top1"] != honest["test"]["fine_tune_top1"]  # scored with them, when asked


def test_evaluate_fine_tune_on_a_graph_run(graph_run, tmp_path):
    from contrastkit.cli import main

    output = tmp_path / "ft.json"
    assert main(["evaluate", "--fine-tune", "--run", str(graph_run), "--labels", str(N_LABELS), "--epochs", "2",
                 "--dev-size", str(DEV_SIZE), "--output", str(output)]) == 0
    figures = json.loads(output.read_text())
    assert figures["labels"] == N_LABELS and figures["n_scored"] == figures["dev_size"] and figures["scored"] == "dev"
    assert json.loads((graph_run / "fine_tune.json").read_text())["results"][-1] == figures
