"""``contrastkit timeseries``: TS2Vec on a UCR/UEA set, evaluated with the UCR protocol.

    contrastkit timeseries --data GunPoint --seed 42 --out runs/ts2vec-gunpoint                 # dev
    contrastkit timeseries --data GunPoint --seed 42 --eval-split test --out runs/gunpoint-test  # once
    contrastkit timeseries --data train.ts --test-data test.ts --eval-split test --max-steps 600 --out runs/mine
    contrastkit timeseries --out runs/ts2vec-gunpoint --resume      # continue a run that was stopped

The UCR archive has a training and a test split and no development split, so the default
(``--eval-split dev``) carves one from the training split: a fixed, stratified 30% of each class
(:func:`carve_dev_split`, the same for every ``--seed``). The encoder trains on the other 70% and
is scored on the carve; nothing of the test split is read. ``--eval-split test`` is the official
protocol: train on the whole training split, score the test split (once the settings are chosen).

Either way the encoder trains on its training series only (standardised with their own mean and
std, which the scored series reuse), both sets are encoded, and the representations are scored
with the SVM protocol (RBF, C chosen by cross-validation on the training series only) next to the
1-NN Euclidean floor on the raw series.

Training runs on the engine (:meth:`contrastkit.modalities.timeseries.ts2vec.TS2Vec.fit`), and ``--out`` is a run
folder: ``config.yaml`` (the options; ``--resume`` reads them back, so ``--out D --resume`` is
enough), ``checkpoints/last.ckpt`` (every epoch and every ``--checkpoint-every-steps`` steps),
``metrics.csv``, ``model.pt`` (``TS2Vec.load``), ``train_embeddings.npy`` and
``dev_embeddings.npy`` or ``test_embeddings.npy`` (+ labels; with dev, ``dev_indices.npy``: the
carve's positions in the training split), ``summary.json`` and ``report.md`` with the loss curve.
An existing run is never overwritten; ``--resume`` continues it exactly (the same weights, weight
average and optimiser state as an uninterrupted run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from contrastkit.core.errors import ConfigError

EVAL_SPLITS = ("dev", "test")
DEV_FRACTION = 0.3
DEV_SEED = 0  # fixed, not --seed: every run of a set is scored on the same carve
# Options that define a run: --resume takes them from config.yaml and refuses different values.
RUN_DEFAULTS = {"data": None, "eval_split": "dev", "test_data": None, "max_steps": None, "batch_size": 8,
                "output_dims": 320, "lr": 0.001, "seed": 0}
# Options of the machine: --resume takes them from config.yaml unless given again.
MACHINE_DEFAULTS = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "checkpoint_every_steps": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("ts2vec",), default="ts2vec", help="ts2vec (the only one)")
    parser.add_argument("--data",
                        help="a set bundled with aeon (GunPoint, ItalyPowerDemand, ...), a UCR folder, "
                             "or a .ts/.npy/.npz file (its training split); required unless --resume")
    parser.add_argument("--eval-split", choices=EVAL_SPLITS,
                        help="dev (default): train on 70%% of the training split, score a fixed stratified "
                             "30%% carve of it; test: the UCR protocol (train on all of it, score the test "
                             "split), once settings are chosen on dev")
    parser.add_argument("--test-data", help="the test split's file, when --data is a single file "
                                            "(with --eval-split test)")
    parser.add_argument("--out", help="run folder (default runs/ts2vec-<data>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint, with its saved options")
    parser.add_argument("--max-steps", "--iters", dest="max_steps", type=int,
                        help="training iterations (default: the official rule, 200 or 600)")
    parser.add_argument("--checkpoint-every-steps", type=int,
                        help="also write checkpoints/last.ckpt every N steps (always at every epoch's end)")
    parser.add_argument("--batch-size", type=int, help="series per step and process (official UCR script: 8)")
    parser.add_argument("--output-dims", type=int, help="representation size (default 320)")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default 0.001)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), help="default cpu")
    parser.add_argument("--devices", type=int, help="processes (devices) per node (default 1)")
    parser.add_argument("--strategy", help="Lightning strategy: auto (default), ddp, ...")


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every option set: the defaults, or with ``--resume`` the run's saved options
    (config.yaml), which a run-defining option given again must equal."""
    import yaml

    options = argparse.Namespace(**vars(args))
    saved = {}
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out: the run folder to continue.")
        config = Path(args.out) / "config.yaml"
        if not config.is_file():
            raise ConfigError(f"--resume: no config.yaml in '{args.out}'; it is not a run folder of "
                              f"`contrastkit timeseries` (or its run ended before training started).")
        saved = (yaml.safe_load(config.read_text()) or {}).get("command", {})
    for name, default in {**RUN_DEFAULTS, **MACHINE_DEFAULTS}.items():
        given = getattr(args, name)
        if given is not None and name in RUN_DEFAULTS and name in saved and given != saved[name]:
            raise ConfigError(f"--resume continues the run in '{args.out}' as it was started, with "
                              f"--{name.replace('_', '-')} {saved[name]}, not {given}. Drop the option, or start "
                              f"a new run in another --out.")
        setattr(options, name, given if given is not None else saved.get(name, default))
    if options.data is None:
        raise ConfigError("--data is required: a bundled UCR set (e.g. GunPoint), a UCR folder or a file.")
    return options


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
    from contrastkit.modalities.timeseries.sources import TimeSeriesSource, open_timeseries_source

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


def command(args: argparse.Namespace) -> int:
    """Train, score and print (``contrastkit fit --method ts2vec``)."""
    summary = run(args)
    print(format_summary(summary))
    print(f"\nRun directory: {args.out}")
    return 0


def run(args: argparse.Namespace) -> dict:
    # Imported here: the parser (add_arguments) is built for every command and must stay light.
    import numpy as np
    import torch

    from contrastkit.engine.run_folder import is_first_process, resolve_run_dir, write_summary
    from contrastkit.evaluation.ucr import one_nn_euclidean, svm_protocol_result
    from contrastkit.modalities.timeseries.sources import standardize_with_train_statistics
    from contrastkit.modalities.timeseries.ts2vec import TS2Vec, default_n_iters

    options = resolve_options(args)
    run_dir = resolve_run_dir(options.out, args.resume, f"ts2vec-{Path(options.data).stem}")
    args.out = options.out = str(run_dir)
    split = options.eval_split
    train, scored, dev_positions = open_splits(options)
    if train.x.shape[1:2] != scored.x.shape[1:2]:
        raise ConfigError(f"The training series have {train.x.shape[1]} channels and the {split} series "
                          f"{scored.x.shape[1]}; both splits must come from the same set.")
    x_train, x_scored = standardize_with_train_statistics(train.x, scored.x)
    options.max_steps = options.max_steps or default_n_iters(x_train.size)
    gpu = options.accelerator == "gpu" or options.accelerator == "auto" and torch.cuda.is_available()
    model = TS2Vec(input_dims=x_train.shape[1], output_dims=options.output_dims, lr=options.lr,
                   batch_size=options.batch_size, seed=options.seed, device="cuda" if gpu else "cpu")
    started = time.perf_counter()
    losses = model.fit(x_train, n_iters=options.max_steps, verbose=True, out=run_dir, resume=args.resume,
                       checkpoint_every_steps=options.checkpoint_every_steps, devices=options.devices,
                       strategy=options.strategy,
                       run_config={name: getattr(options, name) for name in {**RUN_DEFAULTS, **MACHINE_DEFAULTS}})
    seconds = time.perf_counter() - started
    if not is_first_process():
        raise SystemExit(0)  # a DDP child process: rank 0 encodes, scores and writes
    train_repr, scored_repr = model.encode(x_train), model.encode(x_scored)

    np.save(run_dir / "train_embeddings.npy", train_repr)
    np.save(run_dir / f"{split}_embeddings.npy", scored_repr)
    if dev_positions is not None:
        np.save(run_dir / "dev_indices.npy", dev_positions)
    trained = _read_json(run_dir / "summary.json")  # TS2Vec.fit's figures of the whole run
    summary = {"method": "ts2vec", "data": options.data, "eval_split": split, "iters": options.max_steps,
               "seed": options.seed, "train_series": len(x_train), "eval_series": len(x_scored),
               "seconds": round(seconds, 2), "final_loss": float(losses[-1]) if len(losses) else None,
               "train_seconds": trained.get("train_seconds"), "world_size": trained.get("world_size"),
               "epoch_losses": losses}
    if train.y is not None and scored.y is not None:
        np.save(run_dir / "train_labels.npy", train.y)
        np.save(run_dir / f"{split}_labels.npy", scored.y)
        result = svm_protocol_result(train_repr, train.y, scored_repr, scored.y)
        summary.update(svm_accuracy=result.accuracy, svm_C=result.C if np.isfinite(result.C) else "inf",
                       one_nn_euclidean=one_nn_euclidean(train.x, train.y, scored.x, scored.y))
    write_summary(run_dir, summary)
    write_report(run_dir, summary)
    return summary


def write_report(run_dir: Path, summary: dict) -> Path:
    """``report.md``: the run's figures and its loss curve (``plots/loss_curve.png``)."""
    from contrastkit.report.html import write_html_report
    from contrastkit.report.plots import plot_loss_curve
    from contrastkit.report.run_files import read_metrics_csv
    from contrastkit.report.tables import format_value, markdown_table

    facts = [[key, format_value(value)] for key, value in summary.items() if not isinstance(value, list)]
    sections = [f"# Run report: TS2Vec on {summary['data']}", markdown_table(["fact", "value"], facts, numeric=False)]
    steps, losses = read_metrics_csv(run_dir / "metrics.csv").series("train/loss")
    if len(losses):
        plot_loss_curve(steps, losses, run_dir / "plots" / "loss_curve.png")
        sections.append("![Training loss](plots/loss_curve.png)")
    path = run_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    write_html_report(run_dir)  # report.html: the same figures, the curve, the map of train_embeddings.npy
    return path


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def format_summary(summary: dict) -> str:
    lines = [f"TS2Vec on {summary['data']}: {summary['train_series']} training / {summary['eval_series']} "
             f"{summary['eval_split']} series, {summary['iters']} iterations in {summary['seconds']:.0f} s"]
    if "svm_accuracy" in summary:
        lines.append(f"  SVM protocol accuracy   {summary['svm_accuracy']:.3f}  (C = {summary['svm_C']})")
        lines.append(f"  1-NN Euclidean (floor)  {summary['one_nn_euclidean']:.3f}")
    return "\n".join(lines)
