"""Fine-tuning evaluation of a time-series run (``contrastkit evaluate --fine-tune --run RUN --labels N``).

TS2Vec's representation of a series is its weight-averaged encoder's output, max-pooled over time
(``TS2Vec.encode(x, encoding_window="full_series")``); that encoder and a linear head are trained
end to end on ``N`` labels (:mod:`contrastkit.evaluation.fine_tune`), beside the frozen kNN and
linear probes on the same labels. The rows follow the modality's protocol
(:mod:`contrastkit.modalities.timeseries.cli`): the development rows are the fixed, stratified 30 %
carve of the UCR training split (``carve_dev_split``, the run's own ``dev_indices.npy`` for a dev
run), the ``N`` labels are drawn balanced from the rest, and the official test split is read and
scored only with ``split="test"``, once, after the rate and the epoch were chosen on the carve.
Series are standardised with the statistics of the run's training series. No augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.fine_tune import balanced_labels, probe_and_fine_tune


def pooled_features(encoder: nn.Module, series: Tensor) -> Tensor:
    """(B, C, T) -> (B, D): the encoder's per-step output, max over time (TS2Vec's full-series encoding)."""
    return encoder(series, mask="none").amax(dim=1)


def fine_tune_timeseries_run(run_dir: str | Path, labels: int, *, epochs: int = 30, lrs: Sequence[float] = (1e-3,),
                             encoder_lr_scale: float = 1.0, layer_decay: float | None = None, batch_size: int = 64,
                             weight_decay: float = 0.0, seed: int = 0, split: str = "dev",
                             augment: bool = False) -> dict:
    """Fine-tune the encoder of the TS2Vec run ``run_dir`` on ``labels`` labels; the figures as a dict
    (see the module docstring). ``augment`` is accepted for the command's sake: series are not augmented."""
    from contrastkit.modalities.timeseries.cli import carve_dev_split
    from contrastkit.modalities.timeseries.sources import open_timeseries_source, standardize_with_train_statistics
    from contrastkit.modalities.timeseries.ts2vec import TS2Vec

    if split not in ("dev", "test"):
        raise ConfigError(f"--split must be dev or test for --fine-tune, got {split!r}.")
    run_dir = Path(run_dir)
    command = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("command") or {}
    if not command.get("data"):
        raise DataError(f"'{run_dir / 'config.yaml'}' names no data set (written by 'contrastkit fit --method ts2vec'?).")
    model = TS2Vec.load(run_dir / "model.pt")
    train = open_timeseries_source(command["data"], split="train")
    if train.y is None:
        raise DataError(f"'{command['data']}' has no labels: nothing to fine-tune on.")
    kept, dev = carve_dev_split(len(train), train.y)
    basis = train.x[kept] if command.get("eval_split", "dev") == "dev" else train.x  # what the encoder trained on
    series = [train.x]
    targets = [train.y]
    test = None
    if split == "test":
        scored = open_timeseries_source(command.get("test_data") or command["data"], split="test")
        series.append(scored.x)
        targets.append(scored.y)
        test = np.arange(len(train), len(train) + len(scored))
    standardised = standardize_with_train_statistics(basis, *series)[1:]
    inputs = torch.from_numpy(np.concatenate(standardised).astype(np.float32))
    y = np.concatenate(targets).astype(np.int64)
    labelled = balanced_labels(y, kept, labels, seed)
    scored_rows = dev if test is None else test

    encoder = model.averaged_encoder.module.cpu()  # the weights TS2Vec encodes with
    with torch.inference_mode():
        encoder.eval()
        frozen = torch.cat([pooled_features(encoder, inputs[i : i + 256]) for i in range(0, len(inputs), 256)]).numpy()
    figures, result, lr, tried = probe_and_fine_tune(
        frozen, y, labelled, dev, test, lrs=lrs, seed=seed, batch_size=batch_size, encoder=encoder,
        features=pooled_features, inputs=inputs, num_classes=int(y.max()) + 1, epochs=epochs,
        encoder_lr_scale=encoder_lr_scale, layer_decay=layer_decay, weight_decay=weight_decay)
    return {
        "run": str(run_dir), "method": "ts2vec", "labels": int(len(labelled)), "dev_size": int(len(dev)),
        "scored": "test (once, after the choice on dev)" if test is not None else "dev", "n_scored": int(len(scored_rows)),
        **figures, "fine_tune_dev_top1": result.best_dev_top1,
        "chosen": {"lr": lr, "encoder_lr": lr * encoder_lr_scale, "epochs": result.best_epoch, "layer_decay": layer_decay},
        "tried": tried, "augment": "none", "seed": seed,
    }
