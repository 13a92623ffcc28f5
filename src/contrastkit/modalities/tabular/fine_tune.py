"""Fine-tuning evaluation of a tabular run: ``contrastkit evaluate --fine-tune --run RUN --labels N``.

The run's encoder (SCARF's or CLAN's MLP, reloaded from the folder with the feature scaling it was
trained through: :mod:`contrastkit.modalities.tabular.run_folder`) and a linear head are trained
end to end on ``N`` labelled rows (:mod:`contrastkit.evaluation.fine_tune`), beside the frozen kNN
and linear probes on the same labels. No augmentation (SCARF's corruption is the pretraining view,
not used here).

The classes are the run's labels (``--label-column``); for NSL-KDD, the attack family of each row
(normal, DoS, Probe, R2L, U2R: the five-way task of the NSL-KDD literature; the 22 attack names of
the training file include several with one or two rows, and the test file holds 17 attacks the
training file has not, each in a family). The rows follow the modality's protocol
(:mod:`contrastkit.modalities.tabular.cli`): the development rows are the run's fixed, stratified
30 % carve (the rows its encoder and scaling never saw; ``dev_size`` is not used), the ``N``
labels are drawn from the rest, and the test part -- NSL-KDD's KDDTest+, encoded with the run's
scaling; a table has none -- is read and scored only with ``split="test"``, once, after the rate
and the epoch were chosen on the carve.

The ``N`` labels are balanced as far as the classes allow (:func:`labels_as_balanced_as_classes_allow`):
a class with fewer training rows than an even share gives all of them (NSL-KDD's U2R has 8) and the
other classes share the rest evenly, as :func:`~contrastkit.evaluation.fine_tune.balanced_labels`
draws them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import as_label_vector
from contrastkit.evaluation.fine_tune import balanced_labels, probe_and_fine_tune

SPLITS = ("dev", "test")
NSL_KDD = "nsl-kdd"


def labels_as_balanced_as_classes_allow(labels, candidates, n_labels: int, seed: int = 0) -> np.ndarray:
    """Exactly ``n_labels`` rows of ``candidates`` (sorted): every class whose candidate rows are fewer
    than an even share (rounded up) of what the short classes leave gives all of them (decided again
    until no other class is short, since the share grows as short classes give less), and
    :func:`~contrastkit.evaluation.fine_tune.balanced_labels` draws the rest evenly from the other
    classes with ``seed``. When no class is short, that is ``balanced_labels``."""
    y = as_label_vector(labels, "labels")
    pool = np.asarray(candidates, dtype=np.int64)
    classes, counts = np.unique(y[pool], return_counts=True)
    if n_labels >= len(pool):
        raise ConfigError(f"--labels {n_labels}: the training part has {len(pool)} labelled rows; ask for fewer.")
    short = np.zeros(len(classes), dtype=bool)
    while True:
        left, open_classes = n_labels - int(counts[short].sum()), int((~short).sum())
        newly = ~short & (counts < -(-left // max(open_classes, 1)))  # fewer rows than the (rounded-up) share
        if not newly.any():
            break
        short |= newly
    in_short = np.isin(y[pool], classes[short])
    return np.sort(np.concatenate([pool[in_short], balanced_labels(y, pool[~in_short], left, seed)]))


def read_command(run_dir: Path) -> argparse.Namespace:
    """The options of the ``contrastkit fit`` command that wrote ``run_dir`` (its command.yaml)."""
    from contrastkit.modalities.tabular.cli import COMMAND_FILE, DEFAULTS

    path = run_dir / COMMAND_FILE
    if not path.is_file():
        raise ConfigError(f"'{run_dir}' has no {COMMAND_FILE}: fine-tuning reads the labelled table a run of "
                          f"'contrastkit fit --method scarf|clan --data TABLE --label-column COLUMN' names there "
                          f"(a run trained from Python keeps no data).")
    return argparse.Namespace(**{**DEFAULTS, **(yaml.safe_load(path.read_text()) or {})})


def targets(options: argparse.Namespace, names: np.ndarray) -> np.ndarray:
    """The class of each row: NSL-KDD's attack family of each label, else the label itself (as text)."""
    from contrastkit.modalities.tabular.sources import attack_family

    if options.data == NSL_KDD:
        return np.asarray([attack_family(name) for name in names]).astype(str)
    return np.asarray(names).astype(str)


def encoded_rows(run_dir: str | Path, split: str = "dev"):
    """``(command options, estimator, x (N, D) float32, classes (N,) of text, candidates, dev, test or
    None)`` of the run ``run_dir``: its table encoded with its own feature scaling, the training rows,
    the run's development carve and, only with ``split="test"``, NSL-KDD's test rows appended after
    them."""
    from contrastkit.core.paths import data_root
    from contrastkit.engine.run_folder import read_split
    from contrastkit.modalities.tabular.cli import dev_carve, read_rows
    from contrastkit.modalities.tabular.run_folder import FEATURE_ENCODER_FILE, load_tabular_run

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} for --fine-tune, got {split!r}.")
    run_dir = Path(run_dir)
    options = read_command(run_dir)
    estimator = load_tabular_run(run_dir)
    if estimator.feature_encoder is None:
        raise DataError(f"'{run_dir}' has no {FEATURE_ENCODER_FILE}, the feature scaling its encoder was trained "
                        f"through (written by 'contrastkit fit' since fine-tuning came to tabular runs); fit the run "
                        f"again to fine-tune it.")
    table, names, _ = read_rows(options)
    if names is None:
        raise DataError(f"The run '{run_dir}' was trained without labels (no --label-column): nothing to fine-tune "
                        f"on. Fit it with --label-column COLUMN.")
    # The run's own carve (its encoder and scaling saw only the rest), as its split.json names it; a run
    # written before runs kept one is carved again, as its fit carved it.
    candidates, dev = read_split(run_dir, rows=len(names)) or dev_carve(names)
    x, classes = [estimator.feature_encoder.transform(table)], [targets(options, names)]
    test = None
    if split == "test":
        if options.data != NSL_KDD:
            raise ConfigError(f"--split test: '{options.data}' has no test part (the run's 30% carve is its "
                              f"development part); keep a test table apart and embed it.")
        from contrastkit.modalities.tabular.sources import load_nsl_kdd

        scored = load_nsl_kdd(data_root() / NSL_KDD, "test")
        x.append(estimator.feature_encoder.transform(scored.table))
        classes.append(scored.family.astype(str))
        test = np.arange(len(names), len(names) + len(scored))
    return options, estimator, np.concatenate(x), np.concatenate(classes), candidates, dev, test


def mlp_features(encoder: nn.Module, rows: Tensor) -> Tensor:
    """The encoder's output of encoded rows, what ``estimator.encode`` returns."""
    return encoder(rows)


def fine_tune_tabular_run(run_dir: str | Path, labels: int, *, epochs: int = 30, lrs: Sequence[float] = (1e-3,),
                          encoder_lr_scale: float = 1.0, layer_decay: float | None = None, batch_size: int = 64,
                          weight_decay: float = 0.0, seed: int = 0, split: str = "dev", augment: bool = False) -> dict:
    """Fine-tune the encoder of the tabular run ``run_dir`` on ``labels`` labelled rows; the figures as a
    dict (see the module docstring). ``augment`` is accepted for the command's sake: rows are not augmented."""
    options, estimator, x, names, candidates, dev, test = encoded_rows(run_dir, split)
    classes = sorted(set(names.tolist()))
    y = np.searchsorted(np.asarray(classes), names).astype(np.int64)
    labelled = labels_as_balanced_as_classes_allow(y, candidates, labels, seed)
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    frozen = estimator.encode(inputs)
    figures, result, lr, tried = probe_and_fine_tune(
        frozen, y, labelled, dev, test, lrs=lrs, seed=seed, batch_size=batch_size, encoder=estimator.encoder,
        features=mlp_features, inputs=inputs, num_classes=len(classes), epochs=epochs,
        encoder_lr_scale=encoder_lr_scale, layer_decay=layer_decay, weight_decay=weight_decay, eval_batch_size=4096)
    scored = dev if test is None else test
    return {
        "run": str(run_dir), "method": options.method, "data": str(options.data),
        "target": "attack family" if options.data == NSL_KDD else f"column {options.label_column}",
        "classes": classes, "labels": int(len(labelled)),
        "labels_per_class": np.bincount(y[labelled], minlength=len(classes)).tolist(), "dev_size": int(len(dev)),
        "scored": "test (once, after the choice on dev)" if test is not None else "dev", "n_scored": int(len(scored)),
        **figures, "fine_tune_dev_top1": result.best_dev_top1,
        "chosen": {"lr": lr, "encoder_lr": lr * encoder_lr_scale, "epochs": result.best_epoch,
                   "layer_decay": layer_decay},
        "tried": tried, "augment": "none", "seed": seed,
    }
