"""One evaluation runner over a folder of text task descriptions, writing one table (in the spirit of
MTEB, Muennighoff et al. 2023, for a user's own local tasks).

Each task is a small YAML or JSON file (:mod:`contrastkit.modalities.text.task_files`) naming its type,
its data per split, the columns and the metric of the table. Every file of the folder is checked, and
its data found on disk, before the model is loaded. The tasks run in the order sts, retrieval,
pair-classification, clustering, reranking (then by name), each scored by cosine similarity of the
model's embeddings:

=======================  ===================================================================  ======================
type                     score                                                                computed by
=======================  ===================================================================  ======================
``sts``                  Spearman x100 of cos(a, b) against the gold scores                   ``sts_spearman``
``retrieval``            nDCG@10 (+ Recall@100, MRR@10): exact cosine search of the whole     ``evaluate_retrieval``
                         corpus, BEIR conventions, the corpus's embeddings cached on disk
``pair-classification``  AP (+ accuracy and F1 at their best thresholds, chosen on the         ``task_metrics``
                         scored pairs themselves, as MTEB does)
``clustering``           V-measure of MiniBatch k-means (k = number of labels), mean of 5     ``task_metrics``
                         seeds
``reranking``            MAP (+ MRR@10) of each query's own candidates                        ``task_metrics``
=======================  ===================================================================  ======================

(:mod:`contrastkit.modalities.text.evaluation` and :mod:`contrastkit.modalities.text.task_metrics`.)
Every score is x100. The split is ``dev`` unless another is asked for; scoring ``test`` prints a
warning, as ``contrastkit evaluate --split test`` does. A task without data for the split is skipped
and listed under the table.

Python: ``evaluate_tasks("minilm", "benchmarks/text_tasks")`` returns a :class:`TaskTable`
(``.to_markdown()``, ``.write("table.md" | ".csv" | ".json")``). Command line (:func:`add_tasks_parser` /
:func:`run_tasks`)::

    contrastkit benchmark --model minilm --tasks benchmarks/text_tasks [--split dev] [--only stsb,mrpc] \\
        [--out table.md]

A command of its own rather than ``evaluate --task-folder``: ``evaluate`` scores one data set per call
with options that each belong to some of its tasks (``--data``, ``--dims``, ``--hybrid-weight``, ...) and
prints JSON; a folder run takes none of those, has options of its own (``--only``, ``--out``) and
writes a table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.task_files import DEV_SPLIT, METRICS, TaskSpec, check_data_exists, read_task_folder

TEST_SPLIT_WARNING = "scoring the test split: choose settings on dev first"
SCALE = 100.0  # every score of the table is x100 (STS Spearman x100, as MTEB's leaderboard shows them all)
RERANKING_CUT = 10  # MRR@10
TABLE_SUFFIXES = (".md", ".csv", ".json")
SHOWN = {**METRICS, "clustering": ("v_measure", "v_measure_std")}  # the Markdown table's figures; all in .json/.csv


@dataclass
class TaskResult:
    """One row of the table: ``metrics`` holds every figure of the task (x100, thresholds as cosines)."""

    name: str
    type: str
    split: str
    metric: str
    score: float
    metrics: dict[str, float]
    size: str
    seconds: float
    file: str


@dataclass
class TaskTable:
    """The runner's result: one row per task; ``skipped``: ``(task, why)``."""

    model: str
    split: str
    rows: list[TaskResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __getitem__(self, name: str) -> TaskResult:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"No task '{name}' in the table (tasks: {', '.join(r.name for r in self.rows)}).")

    def to_markdown(self) -> str:
        lines = [f"Model `{self.model}`, split `{self.split}`; every score x100.", "",
                 "| task | type | split | size | metric | score | other metrics |", "|---|---|---|---|---|---:|---|"]
        for row in self.rows:
            others = ", ".join(f"{name} {row.metrics[name]:.2f}" for name in SHOWN[row.type]
                               if name != row.metric and name in row.metrics)
            lines.append(f"| {row.name} | {row.type} | {row.split} | {row.size} | {row.metric} | {row.score:.2f} | "
                         f"{others} |")
        lines += [f"\nSkipped: {name} ({why})." for name, why in self.skipped]
        return "\n".join(lines) + "\n"

    def to_records(self) -> list[dict]:
        return [asdict(row) for row in self.rows]

    def to_csv(self) -> str:
        names = sorted({name for row in self.rows for name in row.metrics})
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["task", "type", "split", "size", "metric", "score", *names, "seconds", "file"])
        for row in self.rows:
            writer.writerow([row.name, row.type, row.split, row.size, row.metric, f"{row.score:.4f}",
                             *(f"{row.metrics[n]:.4f}" if n in row.metrics else "" for n in names),
                             f"{row.seconds:.1f}", row.file])
        return buffer.getvalue()

    def write(self, path: str | os.PathLike) -> Path:
        """The table as Markdown (``.md``), CSV (``.csv``) or JSON (``.json``), by suffix."""
        path = Path(path)
        writers = {".md": self.to_markdown, ".csv": self.to_csv,
                   ".json": lambda: json.dumps({"model": self.model, "split": self.split, "tasks": self.to_records(),
                                                "skipped": [list(s) for s in self.skipped]}, indent=2) + "\n"}
        if path.suffix not in writers:
            raise ConfigError(f"Write the task table as .md, .csv or .json, not '{path.name}'.")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(writers[path.suffix](), encoding="utf-8")
        return path


# ------------------------------------------------------------------------------------ scoring


def _cache(encoder, cache_dir):
    """The corpus cache keys on a TextEncoder's weights; any other encoder is not cached."""
    from contrastkit.modalities.text.encoders import TextEncoder

    return cache_dir if isinstance(encoder, TextEncoder) else False


def _embed_unique(encoder, texts: Sequence[str], batch_size: int, precision: str) -> tuple[np.ndarray, dict[str, int]]:
    """Unit-length embeddings of the distinct texts, and each text's row."""
    from contrastkit.modalities.text.evaluation import encode_texts

    unique = list(dict.fromkeys(texts))
    return _unit(encode_texts(encoder, unique, batch_size, precision)), {t: i for i, t in enumerate(unique)}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _scaled(metrics: dict[str, float], keep: Sequence[str] = ()) -> dict[str, float]:
    return {k: float(v) if k in keep else SCALE * float(v) for k, v in metrics.items()}


def _sts(encoder, spec, split, batch_size, precision, cache_dir) -> tuple[dict, str]:
    from contrastkit.modalities.text.evaluation import sts_spearman
    from contrastkit.modalities.text.task_data import read_sts_task

    pairs = read_sts_task(spec, split)
    return {"spearman": sts_spearman(encoder, pairs, batch_size, precision)}, f"{len(pairs):,} pairs"


def _retrieval(encoder, spec, split, batch_size, precision, cache_dir) -> tuple[dict, str]:
    from contrastkit.modalities.text.evaluation import evaluate_retrieval
    from contrastkit.modalities.text.sources import read_beir

    retrieval_set = read_beir(spec.entry(split).path, split)
    result = evaluate_retrieval(encoder, retrieval_set, cache_dir=_cache(encoder, cache_dir), precision=precision,
                                batch_size=batch_size)
    queries, documents = result.pop("queries"), result.pop("documents")
    return _scaled(result), f"{queries:,} queries, {documents:,} docs"


def _pair_classification(encoder, spec, split, batch_size, precision, cache_dir) -> tuple[dict, str]:
    from contrastkit.modalities.text.task_data import read_pair_classification_task
    from contrastkit.modalities.text.task_metrics import pair_classification_metrics

    pairs = read_pair_classification_task(spec, split)
    embeddings, row = _embed_unique(encoder, [*pairs.first, *pairs.second], batch_size, precision)
    cosines = (embeddings[[row[t] for t in pairs.first]] * embeddings[[row[t] for t in pairs.second]]).sum(1)
    metrics = _scaled(pair_classification_metrics(cosines, pairs.labels), keep=("accuracy_threshold", "f1_threshold"))
    return metrics, f"{len(pairs):,} pairs ({int(np.sum(pairs.labels)):,} positive)"


def _clustering(encoder, spec, split, batch_size, precision, cache_dir) -> tuple[dict, str]:
    from contrastkit.modalities.text.evaluation import encode_texts
    from contrastkit.modalities.text.task_data import read_clustering_task
    from contrastkit.modalities.text.task_metrics import kmeans_v_measure

    texts, labels = read_clustering_task(spec, split)
    unique = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(unique)}
    embeddings = encode_texts(encoder, unique, batch_size, precision)[[row[t] for t in texts]]
    seeds = {"seeds": spec.kmeans_seeds} if spec.kmeans_seeds else {}
    result = kmeans_v_measure(embeddings, labels, **seeds)  # k-means on the embeddings as given, as MTEB
    clusters = result.pop("clusters")
    return _scaled(result), f"{len(texts):,} texts, {clusters} labels"


def _reranking(encoder, spec, split, batch_size, precision, cache_dir) -> tuple[dict, str]:
    from contrastkit.modalities.text.evaluation import DOCUMENT_SEPARATOR, encode_corpus
    from contrastkit.modalities.text.task_data import read_reranking_task
    from contrastkit.modalities.text.task_metrics import reranking_metrics

    data = read_reranking_task(spec, split)
    queries, query_row = _embed_unique(encoder, data.queries, batch_size, precision)
    cache = _cache(encoder, cache_dir)
    if data.corpus is not None and cache is not False:
        # Candidates of a BEIR corpus: its cached embeddings (free after the retrieval task of the same corpus).
        documents = _unit(encode_corpus(encoder, data.corpus, cache, batch_size, precision))
        document_row = {}
        for i, text in enumerate(data.corpus.documents(DOCUMENT_SEPARATOR)):
            document_row.setdefault(text, i)
    else:
        documents, document_row = _embed_unique(encoder, [d for c in (*data.positives, *data.negatives) for d in c],
                                                batch_size, precision)
    relevance, scores = [], []
    for query, positives, negatives in zip(data.queries, data.positives, data.negatives):
        candidates = documents[[document_row[d] for d in (*positives, *negatives)]]
        scores.append(candidates @ queries[query_row[query]])
        relevance.append([1] * len(positives) + [0] * len(negatives))
    result = reranking_metrics(relevance, scores, k=RERANKING_CUT)
    counted = result.pop("queries")
    per_query = np.mean([len(r) for r in relevance])
    return _scaled(result), f"{counted:,} queries, {per_query:.1f} candidates each"


SCORERS = {"sts": _sts, "retrieval": _retrieval, "pair-classification": _pair_classification,
           "clustering": _clustering, "reranking": _reranking}


def evaluate_task(encoder, spec: TaskSpec, split: str = DEV_SPLIT, batch_size: int = 64,
                  cache_dir: str | os.PathLike | bool | None = None, precision: str = "fp32") -> TaskResult:
    """One task's row: ``encoder`` (a :class:`~contrastkit.modalities.text.encoders.TextEncoder` or any
    object with ``encode(texts, batch_size) -> (N, D)``) scored on the task's ``split``."""
    start = time.perf_counter()
    metrics, size = SCORERS[spec.type](encoder, spec, split, batch_size, precision, cache_dir)
    return TaskResult(name=spec.name, type=spec.type, split=split, metric=spec.metric, score=metrics[spec.metric],
                      metrics=metrics, size=size, seconds=time.perf_counter() - start, file=str(spec.file))


def evaluate_tasks(model, tasks: str | os.PathLike, split: str = DEV_SPLIT, names: Sequence[str] | None = None,
                   batch_size: int = 64, cache_dir: str | os.PathLike | bool | None = None, precision: str = "fp32",
                   verbose: bool = True) -> TaskTable:
    """Score ``model`` on every task of the folder ``tasks`` (or one task file) and return the table.

    ``model``: ``'minilm'``, a text model folder, or an encoder object (see :func:`evaluate_task`).
    ``split``: ``dev`` unless asked (``test`` prints a warning). ``names``: only these tasks.
    ``cache_dir``: the corpus-embedding cache (:func:`~contrastkit.modalities.text.evaluation.encode_corpus`;
    False: none). ``verbose``: a line per task on stderr. Every task file is checked, and its data found,
    before the model is loaded.
    """
    from contrastkit.modalities.text.evaluation import check_precision
    from contrastkit.modalities.text.query_tower import warn_general_use

    check_precision(precision)
    specs = read_task_folder(tasks, names)
    table = TaskTable(model=str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
                      split=split)
    runnable = []
    for spec in specs:
        if spec.entry(split) is None:
            table.skipped.append((spec.name, f"no '{split}' data in {spec.file.name}"))
        else:
            check_data_exists(spec, split)
            runnable.append(spec)
    if split == "test":
        print(TEST_SPLIT_WARNING, file=sys.stderr)
    if runnable:
        encoder = model
        if isinstance(model, (str, os.PathLike)):
            from contrastkit.modalities.text.encoders import load_text_encoder

            encoder = load_text_encoder(model)
            # The tasks are general text; a query tower scored here measures what its adaptation costs.
            warn_general_use(encoder, model, "the tasks of " + ", ".join(spec.name for spec in runnable))
        for number, spec in enumerate(runnable, start=1):
            row = evaluate_task(encoder, spec, split, batch_size, cache_dir, precision)
            table.rows.append(row)
            if verbose:
                print(f"[{number}/{len(runnable)}] {row.name} ({row.type}, {split}, {row.size}): {row.metric} "
                      f"{row.score:.2f} in {row.seconds:.0f} s", file=sys.stderr)
    for name, why in table.skipped:
        print(f"skipped {name}: {why}", file=sys.stderr)
    return table


# --------------------------------------------------------------------------------- command line


def add_tasks_parser(subparsers) -> argparse.ArgumentParser:
    """``contrastkit benchmark``: the subcommand's parser, added to ``subparsers`` (argparse's)."""
    parser = subparsers.add_parser("benchmark", help="score a text model on a folder of task files (sts, retrieval, "
                                   "pair-classification, clustering, reranking) and print one table")
    parser.add_argument("--model", required=True, help="'minilm', a folder written by 'contrastkit text' (or "
                        "TextEncoder.save), or any local Hugging Face / sentence-transformers folder")
    parser.add_argument("--tasks", required=True, help="a folder of task files (*.yaml, *.yml, *.json) or one task "
                        "file, e.g. benchmarks/text_tasks")
    parser.add_argument("--split", default=DEV_SPLIT, help="the split of every task: dev (default), or test (only "
                        "once settings are chosen on dev)")
    parser.add_argument("--only", help="comma-separated task names (default: every task of the folder)")
    parser.add_argument("--out", help="also write the table: .md, .csv or .json")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoding batch (default 64)")
    parser.add_argument("--cache-dir", help="corpus embedding cache (default $CONTRASTKIT_CACHE or ~/.cache/contrastkit)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="encoding precision (bf16: CPU autocast)")
    return parser


def run_tasks(args: argparse.Namespace) -> int:
    if args.out and Path(args.out).suffix not in TABLE_SUFFIXES:  # before the run, not after it
        raise ConfigError(f"--out writes the table as {', '.join(TABLE_SUFFIXES)}; got '{args.out}'.")
    names = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    table = evaluate_tasks(args.model, args.tasks, split=args.split, names=names, batch_size=args.batch_size,
                           cache_dir=False if args.no_cache else args.cache_dir, precision=args.precision)
    print(table.to_markdown(), end="")
    if args.out:
        print(f"Wrote {table.write(args.out)}", file=sys.stderr)
    return 0
