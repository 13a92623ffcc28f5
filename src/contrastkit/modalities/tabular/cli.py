"""Tabular options of ``contrastkit fit`` (SCARF, CLAN) and the run they start.

    contrastkit fit --method scarf --data flows.csv --label-column family --out runs/scarf-flows
    contrastkit fit --method clan --data nsl-kdd --out runs/clan-nsl-kdd          # benign rows: 'normal'
    contrastkit fit --out runs/scarf-flows --resume
    contrastkit fit --method scarf --data flows.csv --batch-size 128 --devices 2 --strategy ddp

``--data`` is a CSV or parquet file with a header (every column is a feature, except
``--label-column`` and ``--drop-columns``), or ``nsl-kdd`` (KDDTrain+_20Percent under the data
root; its test files are never read here). Columns named by ``--categorical`` are one-hot encoded,
the others parsed as numbers and robust-scaled (:class:`~contrastkit.modalities.tabular.sources.
TabularEncoder`); without ``--categorical``, a column is categorical when one of its values is not a
number.

With labels, a fixed stratified 30% of the rows (the same for every ``--seed``) is held out as the
development split: the encoder, the feature scaling and the probes see only the other 70%, and the
run is scored on the carve: SCARF by a logistic-regression probe (standardised inputs, C = 1) on the
embeddings next to the same probe on the scaled features; CLAN (trained on the benign rows of the 70%: those whose label is
``--benign-label``) by the AUROC of its anomaly score on the carve. Without labels every row trains
and nothing is scored.

The run folder (``--out``) is the engine's (:meth:`~contrastkit.modalities.tabular.estimators.
TabularContrastive.fit`): config.yaml, checkpoints/last.ckpt, metrics.csv, model.safetensors,
reference_rows.safetensors (the rows it trained on: a reloaded estimator's ``score`` compares with them),
summary.json (with ``evaluation``), report.md (with plots/), plus command.yaml (these options; ``--resume`` reads them back),
feature_encoder.json (the feature scaling fitted on the training rows), embeddings.npy of every row (and, with
labels, labels.npy and split.json: which rows trained and which form the development carve, for ``contrastkit
select --run`` and ``evaluate --task semi-supervised --run``).
``contrastkit.load(RUN)`` gives the trained estimator back with that scaling
(:mod:`contrastkit.modalities.tabular.run_folder`): ``load(RUN).encode_table(table)``.

``--devices N --strategy ddp`` trains in N processes, each on ``--batch-size`` rows of every global
batch of N x ``--batch-size``; the loss is computed on the global batch (negatives and positives
gathered from every process) and each row is corrupted as one process holding the whole global
batch would corrupt it, so the run equals one process with ``--batch-size`` N x b
(:class:`~contrastkit.modalities.tabular.estimators.TabularContrastive`'s ``fit``). The first
process encodes, scores and writes the folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from contrastkit.core.errors import ConfigError, DataError

DEFAULTS = {"method": None, "data": None, "label_column": None, "benign_label": "normal", "categorical": None,
            "drop_columns": None, "max_epochs": 20, "max_steps": None, "batch_size": 256, "lr": 1e-3, "seed": 0,
            "hidden_dims": 256, "depth": 4, "corruption_rate": 0.6, "temperature": None, "output_dims": 128,
            "checkpoint_every_steps": None, "device": "cpu", "devices": 1, "strategy": "auto"}
DEV_FRACTION = 0.3
DEV_SEED = 0  # fixed: every run of a table is scored on the same carve
COMMAND_FILE = "command.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tabular options; unset ones are None and take :data:`DEFAULTS` (or, with ``--resume``,
    the run's command.yaml)."""
    def default(name: str) -> str:
        return f" (default: {DEFAULTS[name]})"

    parser.add_argument("--method", choices=("scarf", "clan"), help="scarf or clan")
    parser.add_argument("--data", help="a CSV or parquet file with a header, or nsl-kdd")
    parser.add_argument("--label-column", help="the column of labels (not a feature); nsl-kdd: its label")
    parser.add_argument("--benign-label", help="clan: the label of benign rows" + default("benign_label"))
    parser.add_argument("--categorical", help="comma-separated categorical columns (default: the non-numeric ones)")
    parser.add_argument("--drop-columns", help="comma-separated columns that are not features (ids, timestamps)")
    parser.add_argument("--out", help="run folder (default runs/<method>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out with its saved options")
    parser.add_argument("--max-epochs", "--epochs", dest="max_epochs", type=int,
                        help="passes over the rows" + default("max_epochs"))
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--batch-size", type=int, help="rows per step and process" + default("batch_size"))
    parser.add_argument("--lr", type=float, help="Adam learning rate" + default("lr"))
    parser.add_argument("--seed", type=int, help="initialisation and batch order" + default("seed"))
    parser.add_argument("--hidden-dims", type=int, help="encoder width" + default("hidden_dims"))
    parser.add_argument("--depth", type=int, help="encoder layers" + default("depth"))
    parser.add_argument("--corruption-rate", type=float, help="share of features replaced" + default("corruption_rate"))
    parser.add_argument("--temperature", type=float, help="loss temperature (default: scarf 1.0, clan 0.1)")
    parser.add_argument("--output-dims", type=int, help="scarf: projection size" + default("output_dims"))
    parser.add_argument("--checkpoint-every-steps", type=int, help="also checkpoint every N optimiser steps")
    parser.add_argument("--device", help="cpu or cuda" + default("device"))
    parser.add_argument("--devices", type=int, help="processes (devices) that train together" + default("devices"))
    parser.add_argument("--strategy", help="Lightning's strategy, e.g. ddp (with --devices N)" + default("strategy"))


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """defaults < the run's command.yaml (with --resume) < the options given."""
    values = dict(DEFAULTS)
    if args.resume:
        if args.out is None or not (Path(args.out) / COMMAND_FILE).is_file():
            raise ConfigError(f"--resume needs --out pointing to a tabular run folder with {COMMAND_FILE}; "
                              f"'{args.out}' has none.")
        values.update(yaml.safe_load((Path(args.out) / COMMAND_FILE).read_text()))
    values.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    for required in ("method", "data"):
        if values[required] is None:
            raise ConfigError(f"--{required} is required (or --resume, to continue a run with its saved options).")
    return argparse.Namespace(**values, out=args.out, resume=args.resume)


def _columns(text: str | None) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def read_rows(options: argparse.Namespace):
    """(table of feature columns, labels or None, categorical column names)."""
    import numpy as np

    from contrastkit.core.paths import data_root
    from contrastkit.modalities.tabular.sources import NSL_KDD_CATEGORICAL, load_nsl_kdd, read_table

    if options.data == "nsl-kdd":
        data = load_nsl_kdd(data_root() / "nsl-kdd", "train20")
        return data.table, np.asarray(data.label), list(NSL_KDD_CATEGORICAL)
    path = Path(options.data)
    if not path.is_file():
        raise DataError(f"--data '{path}' does not exist: pass a CSV or parquet file with a header, or nsl-kdd.")
    table = read_table(path)
    labels = None
    if options.label_column is not None:
        if options.label_column not in table:
            raise ConfigError(f"--label-column '{options.label_column}' is not a column of '{path}'; its columns: "
                              f"{', '.join(table)}.")
        labels = np.asarray(table.pop(options.label_column))
    for name in _columns(options.drop_columns):
        if name not in table:
            raise ConfigError(f"--drop-columns: '{name}' is not a column of '{path}'.")
        table.pop(name)
    categorical = _columns(options.categorical)
    if options.categorical is None:
        categorical = [name for name, values in table.items() if not _all_numbers(values)]
    unknown = [name for name in categorical if name not in table]
    if unknown:
        raise ConfigError(f"--categorical: {', '.join(unknown)} not among the columns ({', '.join(table)}).")
    return table, labels, categorical


def _all_numbers(values) -> bool:
    try:
        values.astype(float)
    except ValueError:
        return False
    return True


def dev_carve(labels, fraction: float = DEV_FRACTION, seed: int = DEV_SEED):
    """(training rows, development rows): a fixed stratified ``fraction`` of each label."""
    from contrastkit.modalities.timeseries.cli import carve_dev_split

    return carve_dev_split(len(labels), labels, fraction=fraction, seed=seed)


def build_estimator(options: argparse.Namespace, input_dims: int):
    from contrastkit.core.registry import METHODS
    from contrastkit.modalities.tabular import plugin  # noqa: F401  (registers the tabular methods)

    estimator = METHODS.load("tabular", options.method)
    kwargs = {"hidden_dims": options.hidden_dims, "depth": options.depth, "corruption_rate": options.corruption_rate,
              "lr": options.lr, "batch_size": options.batch_size, "device": options.device, "seed": options.seed}
    if options.temperature is not None:
        kwargs["temperature"] = options.temperature
    if options.method == "scarf":
        kwargs["output_dims"] = options.output_dims
    return estimator(input_dims, **kwargs)


def evaluate(options, model, x_train, y_train, x_dev, y_dev) -> dict:
    """SCARF: logistic-regression probe on embeddings vs scaled features; CLAN: anomaly AUROC."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from contrastkit.evaluation.linear import make_probe_pipeline

    if options.method == "clan":
        anomalous = y_dev != options.benign_label
        if anomalous.all() or not anomalous.any():
            return {"note": "the development rows are all of one kind (benign or not): no AUROC"}
        return {"split": "dev", "dev_rows": int(len(y_dev)), "auroc": round(float(roc_auc_score(anomalous, model.score(x_dev))), 4)}

    def probe(train, dev) -> float:
        classifier = make_probe_pipeline(C=1.0).fit(train, y_train)  # standardised, then logistic regression
        return round(float(np.mean(classifier.predict(dev) == y_dev)), 4)

    return {"split": "dev", "dev_rows": int(len(y_dev)), "probe_accuracy": probe(model.encode(x_train), model.encode(x_dev)),
            "features_probe_accuracy": probe(x_train, x_dev)}


def command(args: argparse.Namespace) -> int:
    import numpy as np

    from contrastkit.engine.run_folder import is_first_process, resolve_run_dir, write_split, write_summary
    from contrastkit.modalities.tabular.run_folder import write_feature_encoder
    from contrastkit.modalities.tabular.sources import TabularEncoder, table_rows

    options = resolve_options(args)
    table, labels, categorical = read_rows(options)
    rows = len(next(iter(table.values())))
    train_rows, dev_rows = (np.arange(rows), np.array([], dtype=np.int64)) if labels is None else dev_carve(labels)
    numeric = [name for name in table if name not in categorical]
    scaler = TabularEncoder(categorical=categorical, numeric=numeric).fit(table_rows(table, train_rows))
    x = scaler.transform(table)
    fit_rows = train_rows
    if options.method == "clan":
        if labels is None:
            raise ConfigError("clan trains on benign rows: give --label-column and --benign-label.")
        fit_rows = train_rows[labels[train_rows] == options.benign_label]
        if len(fit_rows) < 2:
            raise DataError(f"clan: fewer than 2 training rows have the label '{options.benign_label}' "
                            f"(--benign-label); the labels are {', '.join(map(str, np.unique(labels)[:10]))}.")
    run_dir = resolve_run_dir(options.out, options.resume, f"{options.method}-{Path(str(options.data)).stem}")
    model = build_estimator(options, x.shape[1])
    if is_first_process():  # the options first: a run killed in training resumes with them
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / COMMAND_FILE).write_text(yaml.safe_dump({k: getattr(options, k) for k in DEFAULTS},
                                                                 sort_keys=False))
        write_feature_encoder(run_dir, scaler)  # the scaling the encoder reads through: a reload needs it
    losses = model.fit(x[fit_rows], n_epochs=options.max_epochs, out=run_dir, resume=options.resume,
                       checkpoint_every_steps=options.checkpoint_every_steps, max_steps=options.max_steps,
                       devices=options.devices, strategy=options.strategy)
    if not is_first_process():
        raise SystemExit(0)  # a DDP child process: the first one encodes, scores and writes
    np.save(Path(run_dir) / "embeddings.npy", model.encode(x))
    if labels is not None:
        np.save(Path(run_dir) / "labels.npy", labels.astype(str))
        write_split(Path(run_dir), train_rows, dev_rows, held_out=f"a stratified {DEV_FRACTION:.0%} development carve")
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["evaluation"] = (evaluate(options, model, x[train_rows], labels[train_rows], x[dev_rows], labels[dev_rows])
                             if labels is not None else None)
    write_summary(Path(run_dir), summary)
    from contrastkit.report import write_report

    write_report(run_dir)  # report.md: facts, evaluation, loss curve, a map of the embeddings
    print(f"{options.method}: {len(losses)} epochs, final loss {losses[-1]:.4f}" if losses else f"{options.method}: no epoch")
    if summary["evaluation"]:
        print("evaluation on the development carve: " + json.dumps(summary["evaluation"]))
    print(f"\nRun directory: {run_dir}")
    return 0
