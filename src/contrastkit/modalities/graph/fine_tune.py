"""Fine-tuning evaluation of a graph run: node classification with ``contrastkit evaluate --fine-tune
--run RUN --labels N``.

The run's node encoder (the method's ``encoder``: a GNN over the whole graph, or SCGC's node MLP;
the representation of node v is ``encoder(X, A)[v]``, what the run's probes read) and a linear head
are trained end to end on ``N`` labelled nodes (:mod:`contrastkit.evaluation.fine_tune`), beside the
frozen kNN and linear probes on the same labels. Every step runs the encoder over the whole graph
(message passing reaches beyond the batch's nodes) and classifies the batch's nodes; the encoder's
own feature and attention dropout is the training noise (no other augmentation).

The rows: the graph's labelled nodes outside the test part (Cora's public split: the 1,000 test
nodes) are the candidates; a stratified development carve of them (``dev_size``) makes the choices,
the ``N`` labels are drawn balanced from the rest (``--labels 140`` on Cora is 20 per class, the
public split's count, though not its nodes), and the public test nodes are scored only with
``split="test"``, once, after the rate and the epoch were chosen on the carve.

``RUN`` is a pretraining seed's folder (``seed-S/``), or the command's folder, whose first seed
folder is then taken (the result names it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.fine_tune import balanced_labels, carve_development, probe_and_fine_tune

SPLITS = ("dev", "test")


def seed_run_folder(run_dir: str | Path) -> Path:
    """The pretraining seed's folder of ``run_dir``: itself when it is one, else the command folder's
    first ``seed-S/`` (by S) that holds a checkpoint."""
    from contrastkit.engine.run_folder import CHECKPOINT

    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).is_file():
        return run_dir
    seeds = sorted((p for p in run_dir.glob("seed-*") if (p / CHECKPOINT).is_file()),
                   key=lambda p: int(p.name.removeprefix("seed-")) if p.name.removeprefix("seed-").isdigit() else -1)
    if not seeds:
        raise DataError(f"'{run_dir}' holds no trained graph run (no seed-S/{CHECKPOINT}); pass the folder that "
                        f"'contrastkit fit --method graphmae ... --out' wrote, or one of its seed-S folders.")
    return seeds[0]


def node_rows(labels: np.ndarray, test_mask: np.ndarray, labels_wanted: int, dev_size: float,
              seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labelled, development, test) node positions: the development carve and the balanced labels
    from the labelled non-test nodes, the test part as the graph's test nodes (labelled ones)."""
    labelled_nodes = labels >= 0
    candidates = np.flatnonzero(labelled_nodes & ~test_mask)
    y = np.where(labelled_nodes, labels, 0)  # unlabelled nodes are never among the rows
    rest, dev = carve_development(y, candidates, dev_size, seed)
    return balanced_labels(y, rest, labels_wanted, seed), dev, np.flatnonzero(labelled_nodes & test_mask)


def fine_tune_graph_run(run_dir: str | Path, labels: int, *, epochs: int = 30, lrs: Sequence[float] = (1e-3,),
                        encoder_lr_scale: float = 1.0, layer_decay: float | None = None, batch_size: int = 64,
                        weight_decay: float = 0.0, dev_size: float = 1000, seed: int = 0, split: str = "dev",
                        augment: bool = False, trust_checkpoint: bool = False) -> dict:
    """Fine-tune the node encoder of the graph run ``run_dir`` on ``labels`` labelled nodes; the figures
    as a dict (see the module docstring). ``augment`` is accepted for the command's sake: the encoder's
    dropout is the only noise."""
    from contrastkit.modalities.graph.run_folder import load_trained

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} for --fine-tune, got {split!r}.")
    folder = seed_run_folder(run_dir)
    method, graph = load_trained(folder, trust_checkpoint=trust_checkpoint)
    encoder = getattr(method, "encoder", None)
    if encoder is None:
        raise ConfigError(f"The method of '{folder}' has no node encoder to fine-tune.")
    if graph.y is None or graph.test_mask is None:
        raise DataError(f"Fine-tuning on '{graph.name}' needs node labels and a test part (a split); this graph "
                        f"has {'no labels' if graph.y is None else 'no split'}.")
    y = graph.y.cpu().numpy().astype(np.int64)
    labelled, dev, test_part = node_rows(y, graph.test_mask.cpu().numpy(), labels, dev_size, seed)
    test = test_part if split == "test" else None
    nodes = torch.arange(graph.num_nodes)
    y = np.where(y >= 0, y, 0)  # unlabelled nodes are in no row set; a class index keeps the vector valid

    def features(node_encoder: nn.Module, batch: Tensor) -> Tensor:
        return node_encoder(graph.x, graph.edge_index)[batch]

    encoder.eval()
    with torch.inference_mode():
        frozen = features(encoder, nodes).float().numpy()
    scored = dev if test is None else test
    figures, result, lr, tried = probe_and_fine_tune(
        frozen, y, labelled, dev, test, lrs=lrs, seed=seed, batch_size=batch_size, encoder=encoder,
        features=features, inputs=nodes, num_classes=int(y.max()) + 1, epochs=epochs,
        encoder_lr_scale=encoder_lr_scale, layer_decay=layer_decay, weight_decay=weight_decay,
        eval_batch_size=graph.num_nodes)
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return {
        "run": str(folder), "method": config.get("method"), "data": graph.name, "labels": int(len(labelled)),
        "dev_size": int(len(dev)),
        "scored": "test (public test nodes, once, after the choice on dev)" if test is not None else "dev",
        "n_scored": int(len(scored)), **figures, "fine_tune_dev_top1": result.best_dev_top1,
        "chosen": {"lr": lr, "encoder_lr": lr * encoder_lr_scale, "epochs": result.best_epoch,
                   "layer_decay": layer_decay},
        "tried": tried, "augment": "none (the encoder's dropout)", "seed": seed,
    }
