"""``contrastkit timeseries``: TS2Vec on a UCR/UEA set, evaluated with the UCR protocol.

    contrastkit timeseries --data GunPoint --seed 42 --out runs/ts2vec-gunpoint
    contrastkit timeseries --data train.ts --test-data test.ts --iters 600 --out runs/mine

Trains on the training split only (standardised with its own mean and std, which the test split
reuses), encodes both splits, and scores the representations with the SVM protocol (RBF, C chosen
by cross-validation on the training split only) next to the 1-NN Euclidean floor on the raw series.
Writes ``model.pt``, ``train_embeddings.npy`` / ``test_embeddings.npy`` (+ labels) and
``summary.json`` into ``--out``; an existing ``summary.json`` there is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from contrastkit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="a set bundled with aeon (GunPoint, ItalyPowerDemand, ...), a UCR folder, "
                             "or a .ts/.npy/.npz file (its training split)")
    parser.add_argument("--test-data", help="the test split's file, when --data is a single file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--iters", type=int, help="training iterations (default: the official rule, 200 or 600)")
    parser.add_argument("--batch-size", type=int, default=8, help="series per step (official UCR script: 8)")
    parser.add_argument("--output-dims", type=int, default=320)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    # Imported here: the parser (add_arguments) is built for every command and must stay light.
    import numpy as np

    from contrastkit.evaluation.ucr import one_nn_euclidean, svm_protocol_result
    from contrastkit.sources.timeseries import (
        open_timeseries_source,
        standardize_with_train_statistics,
    )
    from contrastkit.timeseries import TS2Vec, default_n_iters

    out = Path(args.out)
    if (out / "summary.json").exists():
        raise ConfigError(f"'{out}' already holds a time-series run (summary.json); choose another --out.")
    train = open_timeseries_source(args.data, split="train")
    test = open_timeseries_source(args.test_data or args.data, split="test")
    if train.x.shape[1:2] != test.x.shape[1:2]:
        raise ConfigError(f"The training series have {train.x.shape[1]} channels and the test series "
                          f"{test.x.shape[1]}; both splits must come from the same set.")
    x_train, x_test = standardize_with_train_statistics(train.x, test.x)
    iters = args.iters or default_n_iters(x_train.size)
    model = TS2Vec(input_dims=x_train.shape[1], output_dims=args.output_dims, lr=args.lr,
                   batch_size=args.batch_size, seed=args.seed)
    started = time.perf_counter()
    losses = model.fit(x_train, n_iters=iters)
    seconds = time.perf_counter() - started
    train_repr, test_repr = model.encode(x_train), model.encode(x_test)

    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.pt")
    np.save(out / "train_embeddings.npy", train_repr)
    np.save(out / "test_embeddings.npy", test_repr)
    summary = {"method": "ts2vec", "data": args.data, "iters": iters, "seed": args.seed,
               "train_series": len(x_train), "test_series": len(x_test), "seconds": round(seconds, 2),
               "final_loss": float(losses[-1]) if len(losses) else None}
    if train.y is not None and test.y is not None:
        np.save(out / "train_labels.npy", train.y)
        np.save(out / "test_labels.npy", test.y)
        result = svm_protocol_result(train_repr, train.y, test_repr, test.y)
        summary.update(svm_accuracy=result.accuracy, svm_C=result.C if np.isfinite(result.C) else "inf",
                       one_nn_euclidean=one_nn_euclidean(train.x, train.y, test.x, test.y))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"TS2Vec on {summary['data']}: {summary['train_series']} training / {summary['test_series']} test "
             f"series, {summary['iters']} iterations in {summary['seconds']:.0f} s"]
    if "svm_accuracy" in summary:
        lines.append(f"  SVM protocol accuracy   {summary['svm_accuracy']:.3f}  (C = {summary['svm_C']})")
        lines.append(f"  1-NN Euclidean (floor)  {summary['one_nn_euclidean']:.3f}")
    return "\n".join(lines)
