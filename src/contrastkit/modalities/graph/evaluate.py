"""Evaluation of node embeddings on a graph with labels and a split.

Node classification, two linear probes on the public split (Cora: 140 train / 500 validation /
1,000 test nodes). Neither looks at a test label before its single final score.

* :func:`adam_probe_accuracy` — GraphMAE's protocol (Hou et al. 2022, ``graphmae/evaluation.py``
  of github.com/THUDM/GraphMAE), the one its Cora figure 84.2 ± 0.4 was measured with: a linear
  layer ``logits = E W + b`` on the raw embeddings E, randomly initialised, trained full-batch
  on the training nodes with Adam (lr 0.01, weight decay 1e-4 on W and b, 300 epochs on Cora)
  to minimise the mean cross-entropy. After every epoch the validation accuracy is measured; the
  weights of the epoch with the best validation accuracy (ties: the later epoch, GraphMAE's
  ``>=``) are kept and score the test nodes once. Its only randomness is the initialisation, so
  repeating it with several ``seed`` values on fixed embeddings gives the probe's own spread.
* :func:`split_probe_accuracy` — deterministic (``StandardScaler`` + lbfgs L2 logistic regression,
  :func:`contrastkit.evaluation.linear.make_probe_pipeline`) with C the value of ``C_GRID``
  with the best validation accuracy, ties going to the smaller C.

Clustering: k-means on the embeddings of all labelled nodes (K = number of classes), scored by
ACC (Hungarian matching), NMI and ARI (:func:`contrastkit.evaluation.clustering.kmeans_scores`).
Labels only score the clusters; nothing is chosen with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.engine.auxiliary import fit_auxiliary
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import as_float32_matrix
from contrastkit.evaluation.clustering import kmeans_scores
from contrastkit.evaluation.linear import make_probe_pipeline
from contrastkit.core.seeding import seeded
from contrastkit.modalities.graph.sources import Graph

C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def split_parts(graph: Graph) -> dict[str, np.ndarray]:
    """Boolean masks ``train`` / ``val`` / ``test`` restricted to labelled nodes."""
    if graph.y is None or graph.train_mask is None or graph.val_mask is None or graph.test_mask is None:
        raise DataError(
            f"Node classification on '{graph.name}' needs labels and a train/val/test split; this "
            f"graph has {'no labels' if graph.y is None else 'no split'}. Use --eval clustering, or "
            f"a graph with a split (e.g. cora)."
        )
    y = graph.y.cpu().numpy()
    return {name: mask.cpu().numpy() & (y >= 0) for name, mask in
            (("train", graph.train_mask), ("val", graph.val_mask), ("test", graph.test_mask))}


def split_probe_accuracy(embeddings: Tensor | np.ndarray, graph: Graph, c_grid: tuple[float, ...] = C_GRID) -> dict[str, float]:
    """``{"val": ..., "test": ..., "C": ...}``: the scikit-learn probe of the module docstring."""
    parts = split_parts(graph)
    x = as_float32_matrix(embeddings, "embeddings")
    y = graph.y.cpu().numpy()
    best = None
    for c in sorted(c_grid):
        probe = make_probe_pipeline(c).fit(x[parts["train"]], y[parts["train"]])
        val = float(np.mean(probe.predict(x[parts["val"]]) == y[parts["val"]]))
        if best is None or val > best[0]:
            best = (val, c, probe)
    val, c, probe = best
    test = float(np.mean(probe.predict(x[parts["test"]]) == y[parts["test"]]))
    return {"val": val, "test": test, "C": c}


def adam_probe_accuracy(
    embeddings: Tensor | np.ndarray,
    graph: Graph,
    seed: int = 0,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    epochs: int = 300,
) -> dict[str, float]:
    """GraphMAE's probe (module docstring): ``{"val", "test", "epoch", "final_test"}``.

    ``val``/``test``: accuracies of the weights of the best validation epoch (``epoch``, 0-based);
    ``final_test``: test accuracy of the last epoch's weights (no selection at all; GraphMAE
    prints both, as ``early-stopping_acc`` and ``final_acc``).
    """
    if epochs < 1:
        raise ConfigError(f"The probe needs epochs >= 1, got {epochs}.")
    parts = split_parts(graph)
    x = torch.from_numpy(as_float32_matrix(embeddings, "embeddings"))
    y = graph.y.cpu()
    rows = {name: torch.from_numpy(np.nonzero(mask)[0]) for name, mask in parts.items()}
    num_classes = int(y[y >= 0].max()) + 1
    with seeded(seed):
        layer = torch.nn.Linear(x.shape[1], num_classes)

    def accuracy(split: str) -> float:
        with torch.no_grad():
            return float((layer(x[rows[split]]).argmax(dim=1) == y[rows[split]]).float().mean())

    best = {"val": -1.0, "epoch": -1, "state": None}

    def keep_if_best(epoch: int) -> None:
        val = accuracy("val")
        if val >= best["val"]:
            best.update(val=val, epoch=epoch, state={k: v.detach().clone() for k, v in layer.state_dict().items()})

    train_rows = rows["train"]
    # One full-batch Adam step per epoch on the training nodes (no random number drawn).
    fit_auxiliary(layer.parameters(), lambda _: F.cross_entropy(layer(x[train_rows]), y[train_rows]),
                  len(train_rows), epochs=epochs, lr=lr, weight_decay=weight_decay, after_epoch=keep_if_best)
    final_test = accuracy("test")
    layer.load_state_dict(best["state"])
    return {"val": best["val"], "test": accuracy("test"), "epoch": best["epoch"], "final_test": final_test}


def probe_over_seeds(
    embeddings: Tensor | np.ndarray, graph: Graph, seeds: Sequence[int], **options: float
) -> dict[str, list[float]]:
    """:func:`adam_probe_accuracy` once per seed on the same embeddings; lists per key."""
    results = [adam_probe_accuracy(embeddings, graph, seed, **options) for seed in seeds]
    return {key: [r[key] for r in results] for key in ("val", "test", "epoch", "final_test")}


def clustering_scores(embeddings: Tensor | np.ndarray, graph: Graph, seed: int = 0) -> dict[str, float]:
    """k-means ACC / NMI / ARI of the labelled nodes' embeddings."""
    if graph.y is None:
        raise DataError(f"Clustering scores on '{graph.name}' need node labels; give a label file.")
    x = as_float32_matrix(embeddings, "embeddings")
    y = graph.y.cpu().numpy()
    labelled = y >= 0
    return kmeans_scores(x[labelled], y[labelled], seed=seed)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (numpy's default, as the papers' tables: GraphMAE
    prints ``np.mean(acc_list), np.std(acc_list)``)."""
    return float(np.mean(values)), float(np.std(values))


def pooled_std(groups: Sequence[Sequence[float]]) -> float:
    """sqrt(mean over groups of each group's population variance): the spread *within* a group
    (e.g. over probe seeds on one pretraining seed's embeddings), averaged over groups."""
    return float(np.sqrt(np.mean([np.var(g) for g in groups])))
