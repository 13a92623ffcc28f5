"""``contrastkit timeseries``: TS2Vec on a UCR/UEA set, evaluated with the UCR protocol.

    contrastkit timeseries --data GunPoint --seed 42 --out runs/ts2vec-gunpoint                 # dev
    contrastkit timeseries --data GunPoint --seed 42 --eval-split test --out runs/gunpoint-test  # once
    contrastkit timeseries --data train.ts --test-data test.ts --eval-split test --iters 600 --out runs/mine

The UCR archive has a training and a test split and no development split, so the default
(``--eval-split dev``) carves one from the training split: a fixed, stratified 30% of each class
(:func:`carve_dev_split`, the same for every ``--seed``). The encoder trains on the other 70% and
is scored on the carve; nothing of the test split is read. ``--eval-split test`` is the official
protocol: train on the whole training split, score the test split (once the settings are chosen).

Either way the encoder trains on its training series only (standardised with their own mean and
std, which the scored series reuse), both sets are encoded, and the representations are scored
with the SVM protocol (RBF, C chosen by cross-validation on the training series only) next to the
1-NN Euclidean floor on the raw series. Writes ``model.pt``, ``train_embeddings.npy`` and
``dev_embeddings.npy`` or ``test_embeddings.npy`` (+ labels; with dev, ``dev_indices.npy``: the
carve's positions in the training split) and ``summary.json`` into ``--out``; an existing
``summary.json`` there is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from contrastkit.errors import ConfigError

EVAL_SPLITS = ("dev", "test")
DEV_FRACTION = 0.3
DEV_SEED = 0  # fixed, not --seed: every run of a set is scored on the same carve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="a set bundled with aeon (GunPoint, ItalyPowerDemand, ...), a UCR folder, "
                             "or a .ts/.npy/.npz file (its training split)")
    parser.add_argument("--eval-split", choices=EVAL_SPLITS, default="dev",
                        help="dev (default): train on 70%% of the training split, score a fixed stratified "
                             "30%% carve of it; test: the UCR protocol (train on all of it, score the test "
                             "split), once settings are chosen on dev")
    parser.add_argument("--test-data", help="the test split's file, when --data is a single file "
                                            "(with --eval-split test)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--iters", type=int, help="training iterations (default: the official rule, 200 or 600)")
    parser.add_argument("--batch-size", type=int, default=8, help="series per step (official UCR script: 8)")
    parser.add_argument("--output-dims", type=int, default=320)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)


def carve_dev_split(n_series: int, labels=None, fraction: float = DEV_FRACTION, seed: int = DEV_SEED):
    """``(training positions, dev positions)``, sorted, of a training split of ``n_series``.

    With labels the carve is stratified: from each class of n series (classes in sorted order) it
    takes round(fraction * n) (halves round up), at most n - 1 so every class still trains, the
    positions drawn by one ``numpy.random.default_rng(seed)`` permutation per class. Without
    labels it takes round(fraction * n_series) positions of one permutation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    groups = [np.arange(n_series)] if labels is None else [
        np.flatnonzero(labels == label) for label in np.unique(labels)]
    dev = []
    for group in groups:
        take = min(int(np.floor(fraction * len(group) + 0.5)), len(group) - 1)
        dev.extend(rng.permutation(group)[:take].tolist())
    dev_positions = np.sort(np.asarray(dev, dtype=np.int64))
    return np.setdiff1d(np.arange(n_series), dev_positions), dev_positions


def open_splits(args: argparse.Namespace):
    """``(training source, scored source, dev positions or None)`` for ``--eval-split``."""
    from contrastkit.sources.timeseries import TimeSeriesSource, open_timeseries_source

    if args.test_data and args.eval_split != "test":
        raise ConfigError("--test-data is the test split, scored only with --eval-split test; the default "
                          "(--eval-split dev) scores a carve of --data's training split.")
    train = open_timeseries_source(args.data, split="train")
    if args.eval_split == "test":
        print("scoring the test split: choose settings on dev first", file=sys.stderr)
        return train, open_timeseries_source(args.test_data or args.data, split="test"), None
    kept, dev = carve_dev_split(len(train), train.y)
    if len(dev) == 0:
        raise ConfigError(f"'{args.data}' has too few training series ({len(train)}) to carve a dev split; "
                          "choose settings another way and score it with --eval-split test.")

    def part(positions, suffix):
        return TimeSeriesSource(train.x[positions], None if train.y is None else train.y[positions],
                                train.class_names, f"{train.name}-{suffix}")

    return part(kept, "train70"), part(dev, "dev30"), dev


def run(args: argparse.Namespace) -> dict:
    # Imported here: the parser (add_arguments) is built for every command and must stay light.
    import numpy as np

    from contrastkit.evaluation.ucr import one_nn_euclidean, svm_protocol_result
    from contrastkit.sources.timeseries import standardize_with_train_statistics
    from contrastkit.timeseries import TS2Vec, default_n_iters

    out = Path(args.out)
    if (out / "summary.json").exists():
        raise ConfigError(f"'{out}' already holds a time-series run (summary.json); choose another --out.")
    split = args.eval_split
    train, scored, dev_positions = open_splits(args)
    if train.x.shape[1:2] != scored.x.shape[1:2]:
        raise ConfigError(f"The training series have {train.x.shape[1]} channels and the {split} series "
                          f"{scored.x.shape[1]}; both splits must come from the same set.")
    x_train, x_scored = standardize_with_train_statistics(train.x, scored.x)
    iters = args.iters or default_n_iters(x_train.size)
    model = TS2Vec(input_dims=x_train.shape[1], output_dims=args.output_dims, lr=args.lr,
                   batch_size=args.batch_size, seed=args.seed)
    started = time.perf_counter()
    losses = model.fit(x_train, n_iters=iters)
    seconds = time.perf_counter() - started
    train_repr, scored_repr = model.encode(x_train), model.encode(x_scored)

    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.pt")
    np.save(out / "train_embeddings.npy", train_repr)
    np.save(out / f"{split}_embeddings.npy", scored_repr)
    if dev_positions is not None:
        np.save(out / "dev_indices.npy", dev_positions)
    summary = {"method": "ts2vec", "data": args.data, "eval_split": split, "iters": iters, "seed": args.seed,
               "train_series": len(x_train), "eval_series": len(x_scored), "seconds": round(seconds, 2),
               "final_loss": float(losses[-1]) if len(losses) else None}
    if train.y is not None and scored.y is not None:
        np.save(out / "train_labels.npy", train.y)
        np.save(out / f"{split}_labels.npy", scored.y)
        result = svm_protocol_result(train_repr, train.y, scored_repr, scored.y)
        summary.update(svm_accuracy=result.accuracy, svm_C=result.C if np.isfinite(result.C) else "inf",
                       one_nn_euclidean=one_nn_euclidean(train.x, train.y, scored.x, scored.y))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"TS2Vec on {summary['data']}: {summary['train_series']} training / {summary['eval_series']} "
             f"{summary['eval_split']} series, {summary['iters']} iterations in {summary['seconds']:.0f} s"]
    if "svm_accuracy" in summary:
        lines.append(f"  SVM protocol accuracy   {summary['svm_accuracy']:.3f}  (C = {summary['svm_C']})")
        lines.append(f"  1-NN Euclidean (floor)  {summary['one_nn_euclidean']:.3f}")
    return "\n".join(lines)
