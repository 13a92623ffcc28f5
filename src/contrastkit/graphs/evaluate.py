"""Evaluation of node embeddings on a graph with labels and a split.

Node classification (the Planetoid protocol of DGI, GRACE, BGRL, GraphMAE): a linear probe
(``StandardScaler`` + L2 logistic regression, :func:`contrastkit.evaluation.linear.make_probe_pipeline`)
fitted on the training nodes (Cora: 140); its C is the one of ``C_GRID`` with the best accuracy
on the validation nodes (Cora: 500), ties going to the smaller C; the test nodes (Cora: 1,000)
are scored once, with that C. Test labels never choose anything.

Clustering: k-means on the embeddings of all labelled nodes (K = number of classes), scored by
ACC (Hungarian matching), NMI and ARI (:func:`contrastkit.evaluation.clustering.kmeans_scores`).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from contrastkit.errors import DataError
from contrastkit.evaluation.arrays import as_float32_matrix
from contrastkit.evaluation.clustering import kmeans_scores
from contrastkit.evaluation.linear import make_probe_pipeline
from contrastkit.sources.graphs import Graph

C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def split_probe_accuracy(embeddings: Tensor | np.ndarray, graph: Graph, c_grid: tuple[float, ...] = C_GRID) -> dict[str, float]:
    """``{"val": ..., "test": ..., "C": ...}``: the probe of the module docstring."""
    if graph.y is None or graph.train_mask is None or graph.val_mask is None or graph.test_mask is None:
        raise DataError(
            f"Node classification on '{graph.name}' needs labels and a train/val/test split; this "
            f"graph has {'no labels' if graph.y is None else 'no split'}. Use --eval clustering, or "
            f"a graph with a split (e.g. cora)."
        )
    x = as_float32_matrix(embeddings, "embeddings")
    y = graph.y.cpu().numpy()
    parts = {name: mask.cpu().numpy() & (y >= 0) for name, mask in
             (("train", graph.train_mask), ("val", graph.val_mask), ("test", graph.test_mask))}
    best = None
    for c in sorted(c_grid):
        probe = make_probe_pipeline(c).fit(x[parts["train"]], y[parts["train"]])
        val = float(np.mean(probe.predict(x[parts["val"]]) == y[parts["val"]]))
        if best is None or val > best[0]:
            best = (val, c, probe)
    val, c, probe = best
    test = float(np.mean(probe.predict(x[parts["test"]]) == y[parts["test"]]))
    return {"val": val, "test": test, "C": c}


def clustering_scores(embeddings: Tensor | np.ndarray, graph: Graph, seed: int = 0) -> dict[str, float]:
    """k-means ACC / NMI / ARI of the labelled nodes' embeddings."""
    if graph.y is None:
        raise DataError(f"Clustering scores on '{graph.name}' need node labels; give a label file.")
    x = as_float32_matrix(embeddings, "embeddings")
    y = graph.y.cpu().numpy()
    labelled = y >= 0
    return kmeans_scores(x[labelled], y[labelled], seed=seed)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (numpy's default, as the papers' tables)."""
    return float(np.mean(values)), float(np.std(values))
