"""Fine-tuning evaluation: the encoder and a linear head trained end to end on a few labels.

Beside the frozen-feature probes (kNN, linear), the other usual measure of a pretrained encoder:

    f(x) = W g_theta(a(x)) + b,   minimise  mean_i CE(f(x_i), y_i)  over theta, W, b

on ``n`` labelled training samples (``a`` a training augmentation; none at evaluation), with Adam
(the engine's auxiliary loop, :func:`contrastkit.engine.auxiliary.fit_auxiliary`). The head learns
at ``lr``; the encoder at ``encoder_lr`` (default ``lr``), scaled per layer when ``layer_decay`` is
given (BEiT / MAE's layer-wise rate decay):

    layer i of depth L = len(blocks) + 1:   lr_i = encoder_lr * layer_decay ** (L - i)

where layer 0 holds the encoder's parameters registered before its first block (patch or token
embeddings, positions, CLS token), layer i (1..L-1) is block i - 1, and layer L the parameters
after the last block (a final norm), at the full rate like the head. The blocks are the encoder's
``blocks`` attribute, or else its first ``ModuleList`` whose name ends in ``blocks``, ``layer`` or
``layers`` (a Hugging Face transformer's ``encoder.layer``; a ResNet's ``blocks`` are its residual
blocks); ``layer_decay`` on an encoder without blocks is an error (a decay that could not be applied
would be reported as chosen), and without ``layer_decay`` the encoder learns at one rate. An encoder
whose rate is 0 is frozen: it runs in eval mode (BatchNorm keeps its statistics), and the fit is then
a linear probe trained by the same loop.

Choices are made on development rows: after each epoch the head is scored on them and the best
epoch's weights are kept (earliest on ties). Test rows, when given, are scored once, with those
weights, after the choice. :func:`balanced_labels` draws the labelled rows and
:func:`carve_development` the development rows, disjoint, both seeded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.core.seeding import seeded
from contrastkit.engine.auxiliary import fit_auxiliary
from contrastkit.evaluation.arrays import as_label_vector
from contrastkit.evaluation.knn import weighted_knn_accuracy
from contrastkit.evaluation.linear import linear_probe_accuracy
from contrastkit.evaluation.splits import stratified_split

BLOCK_NAMES = ("blocks", "layer", "layers")


def balanced_labels(labels: Any, candidates: Any, n_labels: int, seed: int = 0) -> np.ndarray:
    """Exactly ``n_labels`` rows of ``candidates`` (sorted int64), as balanced over the classes as it
    can be: every class of the candidates gets ``n_labels // C`` rows, and ``n_labels % C`` classes,
    chosen by a seeded permutation, one more. Rows are drawn per class with
    ``numpy.random.default_rng(seed)``; the same arguments give the same rows."""
    y = as_label_vector(labels, "labels")
    pool = np.asarray(candidates, dtype=np.int64)
    classes = np.unique(y[pool])
    if not isinstance(n_labels, (int, np.integer)) or n_labels < len(classes):
        raise ConfigError(f"--labels {n_labels}: give at least one label per class ({len(classes)} classes in the "
                          f"training part).")
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), n_labels // len(classes))
    per_class[rng.permutation(len(classes))[: n_labels % len(classes)]] += 1
    chosen = []
    for cls, count in zip(classes, per_class):
        rows = pool[y[pool] == cls]
        if count > len(rows):
            raise ConfigError(f"--labels {n_labels} asks for {count} samples of class {cls}, which has {len(rows)} "
                              f"in the training part (development rows left out); ask for fewer labels.")
        chosen.append(rng.choice(rows, size=int(count), replace=False))
    return np.sort(np.concatenate(chosen))


def carve_development(labels: Any, candidates: Any, size: int | float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rest, development rows) of ``candidates``, stratified: about ``size`` rows (a count, or a
    share when below 1; each class's share is rounded, so the count may differ by up to one per
    class) carved with :func:`contrastkit.evaluation.splits.stratified_split`."""
    y = as_label_vector(labels, "labels")
    pool = np.asarray(candidates, dtype=np.int64)
    share = float(size) if size < 1 else float(size) / len(pool)
    if not 0.0 < share < 1.0:
        raise ConfigError(f"--dev-size {size}: the development carve must be smaller than the training part "
                          f"({len(pool)} samples).")
    rest, dev = stratified_split(y[pool], test_fraction=share, seed=seed)
    return pool[rest], pool[dev]


def encoder_blocks(encoder: nn.Module) -> list[nn.Module] | None:
    """The encoder's blocks in order (see the module docstring), or None."""
    blocks = getattr(encoder, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) > 0:
        return list(blocks)
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and name.split(".")[-1] in BLOCK_NAMES:
            return list(module)
    return None


def layer_decay_groups(encoder: nn.Module, lr: float, layer_decay: float | None) -> list[dict]:
    """Optimiser parameter groups of ``encoder``: ``{"params", "lr", "layer"}`` with
    ``lr * layer_decay ** (L - layer)`` (see the module docstring); one group at ``lr`` without
    ``layer_decay``; a ConfigError when ``layer_decay`` is given and the encoder has no blocks."""
    parameters = [(name, p) for name, p in encoder.named_parameters() if p.requires_grad]
    if layer_decay is None:
        return [{"params": [p for _, p in parameters], "lr": lr, "layer": 0}] if parameters else []
    blocks = encoder_blocks(encoder)
    if blocks is None:  # a decay asked for and silently not applied would be reported as chosen
        raise ConfigError(f"--layer-decay needs an encoder made of blocks (a ResNet's residual blocks, a GNN's "
                          f"layers, a ViT's or a transformer's layers); this {type(encoder).__name__} has none: leave "
                          f"--layer-decay out.")
    if not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"--layer-decay must be in (0, 1], got {layer_decay}.")
    depth = len(blocks) + 1
    block_of = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    layers: dict[int, list[nn.Parameter]] = {}
    seen_block = False
    for _, p in parameters:
        if id(p) in block_of:
            layer, seen_block = block_of[id(p)], True
        else:
            layer = depth if seen_block else 0
        layers.setdefault(layer, []).append(p)
    return [{"params": ps, "lr": lr * layer_decay ** (depth - layer), "layer": layer}
            for layer, ps in sorted(layers.items())]


@dataclass
class FineTuneResult:
    dev_top1: list[float]  # after each epoch
    best_epoch: int  # 1-based
    test_top1: float | None = None
    model: nn.Module | None = field(default=None, repr=False)  # encoder + head at the best epoch

    @property
    def best_dev_top1(self) -> float:
        return self.dev_top1[self.best_epoch - 1]


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, features: Callable[[nn.Module, Tensor], Tensor], head: nn.Linear):
        super().__init__()
        self.encoder, self.head, self.features = encoder, head, features

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.features(self.encoder, inputs))


def fine_tune(encoder: nn.Module, features: Callable[[nn.Module, Tensor], Tensor], inputs: Tensor, labels: Any,
              train_rows: Any, dev_rows: Any, *, num_classes: int, feature_dim: int, epochs: int, lr: float,
              encoder_lr: float | None = None, layer_decay: float | None = None, batch_size: int = 64,
              weight_decay: float = 0.0, augment: Callable[[Tensor], Tensor] | None = None, seed: int = 0,
              test_rows: Any = None, eval_batch_size: int = 256) -> FineTuneResult:
    """Fine-tune a copy of ``encoder`` with a new linear head (see the module docstring).

    Args:
        encoder: left untouched; a deep copy is trained.
        features: ``features(encoder, inputs[rows]) -> (B, feature_dim)``, the representation.
        inputs: every sample (indexed by the row arrays); labels: their integer classes (0..C-1).
        train_rows, dev_rows, test_rows: positions in ``inputs``; test rows are scored once, at the end.
        augment: applied to a training batch before ``features`` (random draws from torch's generator).
    """
    y = torch.as_tensor(as_label_vector(labels, "labels"), dtype=torch.long)
    train, dev = torch.as_tensor(np.asarray(train_rows), dtype=torch.long), torch.as_tensor(np.asarray(dev_rows), dtype=torch.long)
    if epochs < 1 or len(train) == 0 or len(dev) == 0:
        raise ConfigError(f"Fine-tuning needs epochs >= 1, training and development rows; got {epochs}, "
                          f"{len(train)}, {len(dev)}.")
    encoder_lr = lr if encoder_lr is None else encoder_lr
    with seeded(seed):
        head = nn.Linear(feature_dim, num_classes)
        model = _Classifier(copy.deepcopy(encoder), features, head)
        frozen = encoder_lr == 0
        groups = layer_decay_groups(model.encoder, encoder_lr, layer_decay) + [{"params": list(head.parameters()),
                                                                                "lr": lr, "layer": None}]

        def loss_of(positions: Tensor) -> Tensor:
            model.encoder.train(not frozen)
            head.train()
            batch = inputs[train[positions]]
            if augment is not None:
                batch = augment(batch)
            return nn.functional.cross_entropy(model(batch), y[train[positions]])

        dev_top1: list[float] = []
        best: dict = {}

        def after_epoch(epoch: int) -> None:
            dev_top1.append(accuracy(model, inputs, y, dev, eval_batch_size))
            if not best or dev_top1[-1] > best["top1"]:
                best.update(top1=dev_top1[-1], epoch=epoch + 1, state=copy.deepcopy(model.state_dict()))

        fit_auxiliary([g for g in groups if g["params"]], loss_of, len(train), epochs=epochs, lr=lr,
                      batch_size=batch_size, weight_decay=weight_decay, after_epoch=after_epoch)
    model.load_state_dict(best["state"])
    model.eval()
    test_top1 = None
    if test_rows is not None:
        test_top1 = accuracy(model, inputs, y, torch.as_tensor(np.asarray(test_rows), dtype=torch.long), eval_batch_size)
    return FineTuneResult(dev_top1, best["epoch"], test_top1, model)


def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, rows: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (in eval mode, restored after) on ``inputs[rows]``."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for chunk in rows.split(batch_size):
            correct += int((model(inputs[chunk]).argmax(1) == labels[chunk]).sum())
    model.train(was_training)
    return correct / max(len(rows), 1)


def choose_and_fine_tune(lrs: Sequence[float], **kwargs) -> tuple[FineTuneResult, float, list[dict]]:
    """:func:`fine_tune` at each head rate of ``lrs`` (the encoder at ``encoder_lr_scale`` times it,
    default 1), the best development accuracy chosen (earliest on ties); test rows (``test_rows``)
    are scored only for the chosen rate. Returns (the chosen fit, its rate, every rate's figures)."""
    test_rows = kwargs.pop("test_rows", None)
    scale = kwargs.pop("encoder_lr_scale", 1.0)
    tried, best = [], None
    for lr in lrs:
        result = fine_tune(lr=lr, encoder_lr=lr * scale, **kwargs)
        tried.append({"lr": lr, "best_epoch": result.best_epoch, "dev_top1": result.best_dev_top1})
        if best is None or result.best_dev_top1 > best[0].best_dev_top1:
            best = (result, lr)
        else:
            result.model = None
    result, lr = best
    if test_rows is not None:
        y = torch.as_tensor(as_label_vector(kwargs["labels"], "labels"), dtype=torch.long)
        result.test_top1 = accuracy(result.model, kwargs["inputs"], y, torch.as_tensor(np.asarray(test_rows)),
                                    kwargs.get("eval_batch_size", 256))
    return result, lr, tried


def probe_and_fine_tune(frozen: np.ndarray, labels: Any, labelled: Any, dev: Any, test: Any = None, *,
                        lrs: Sequence[float], seed: int, batch_size: int, **kwargs) -> tuple[dict, FineTuneResult, float,
                                                                                            list[dict]]:
    """What every modality's ``evaluate --fine-tune`` reports, on the same rows: the frozen probes on
    ``frozen`` (the encoder's embeddings of every row) with the ``labelled`` rows as training set --
    weighted kNN (k = min(200, labelled), t = 0.1) and the linear probe -- then
    :func:`choose_and_fine_tune` (``kwargs``: encoder, features, inputs, num_classes, epochs, ...;
    the batch at most the number of labels). The probes and the fine-tuned model are scored on the
    ``dev`` rows, or on the ``test`` rows when given (then once, after the choice on dev).

    Returns (figures ``knn_top1`` / ``linear_top1`` / ``fine_tune_top1``, the chosen fit, its rate,
    every rate's figures)."""
    y = as_label_vector(labels, "labels")
    labelled = np.asarray(labelled)
    scored = np.asarray(dev if test is None else test)
    figures = {
        "knn_top1": weighted_knn_accuracy(frozen[labelled], y[labelled], frozen[scored], y[scored],
                                          min(200, len(labelled)), 0.1),
        "linear_top1": linear_probe_accuracy(frozen[labelled], y[labelled], frozen[scored], y[scored], seed),
    }
    result, lr, tried = choose_and_fine_tune(
        lrs, labels=labels, train_rows=labelled, dev_rows=dev, test_rows=test, feature_dim=int(frozen.shape[1]),
        batch_size=min(batch_size, len(labelled)), seed=seed, **kwargs)
    figures["fine_tune_top1"] = result.best_dev_top1 if test is None else result.test_top1
    return figures, result, lr, tried
