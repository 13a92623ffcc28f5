"""``write_report(run_dir)``: turn a run directory into ``report.md`` with PNG plots.

Reads, from ``run_dir`` (each optional):

- ``summary.json``   -- accuracies of the learned embeddings and baselines, run facts, and the
                        collapse diagnostics (layout in :mod:`contrastkit.report.tables`);
- ``metrics.csv``    -- Lightning CSVLogger log: ``train/loss`` per step, ``probe/*`` and
                        ``diag/*`` per epoch;
- ``embeddings.npy`` -- (n, d) final embeddings, with ``labels.npy`` (n,) to colour them;
- ``fine_tune.json`` -- the figures of ``contrastkit evaluate --fine-tune`` (:mod:`contrastkit.report.fine_tuning`).

Writes ``run_dir/plots/*.png`` and ``run_dir/report.md`` (images referenced by relative path).
Whatever is absent is skipped, with a line in the report saying what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.errors import DataError
from contrastkit.evaluation.diagnostics import (
    effective_rank_from_singular_values,
    singular_values,
)
from contrastkit.report import plots
from contrastkit.report.run_files import (
    EMBEDDINGS_FILE,
    LABELS_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsLog,
    read_array,
    read_metrics_csv,
    read_summary,
)
from contrastkit.report.tables import (
    COLLAPSE,
    COLLAPSE_WARNINGS,
    comparison_rows,
    format_value,
    markdown_table,
    run_fact_rows,
)

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
LOSS_COLUMNS = ("train/loss", "train/loss_step")
MAP_MAX_POINTS = 5000
TSNE_MAX_POINTS = 2000
MAX_EPOCH_WARNINGS = 3  # collapse warnings logged during training, shown in the report


def write_report(run_dir: str | Path, tsne: bool = False, seed: int = 0, html: bool = True) -> Path:
    """Write ``run_dir/report.md`` (and its plots) and return its path; with ``html`` also the
    self-contained ``report.html`` (:mod:`contrastkit.report.html`, its map by PCA).

    ``tsne=True`` adds a t-SNE map of at most 2,000 embeddings (seeded subsample); the PCA map
    uses at most 5,000.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(
            f"the run directory {run_dir} does not exist; pass the folder that `contrastkit fit` "
            f"wrote (it holds summary.json and metrics.csv)."
        )
    summary = read_summary(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).is_file() else None
    plots_dir = run_dir / PLOTS_DIR

    sections = [_title(summary, run_dir)]
    sections += _summary_sections(summary)
    sections += _fine_tune_sections(run_dir)
    sections += _curve_sections(run_dir, plots_dir)
    sections += _embedding_sections(run_dir, plots_dir, tsne, seed)

    path = run_dir / REPORT_FILE
    path.write_text("\n\n".join(sections) + "\n")
    if html:
        from contrastkit.report.html import write_html_report

        write_html_report(run_dir, seed=seed)
    return path


def _title(summary: dict[str, Any] | None, run_dir: Path) -> str:
    if summary and summary.get("method") and summary.get("data"):
        return f"# Run report: {summary['method']} on {summary['data']}"
    return f"# Run report: {run_dir.name}"


def _summary_sections(summary: dict[str, Any] | None) -> list[str]:
    if summary is None:
        return [
            f"_No {SUMMARY_FILE} in the run directory: accuracies and run facts are not shown._"
        ]
    header, rows = comparison_rows(summary)
    sections = []
    if any(cell != "-" for row in rows for cell in row[1:]):  # runs without these probes leave it out
        sections += [
            "## Accuracy",
            "Top-1 accuracy (%) on a held-out part: weighted kNN, and a logistic-regression probe "
            "on all training labels or on a few labels per class. *learned* = the trained encoder, "
            "*untrained* = the same encoder at initialisation, *raw* = the input itself.",
            markdown_table(header, rows),
        ]
    evaluation = summary.get("evaluation")
    if isinstance(evaluation, dict) and evaluation:
        sections += ["## Evaluation", "As the run's command scored it (see its split).",
                     markdown_table(["measure", "value"], [[k, format_value(v)] for k, v in evaluation.items()],
                                    numeric=False)]
    collapse = summary.get(COLLAPSE) or {}
    warnings = list(collapse.get("reasons", [])) if collapse.get("collapsed") else []
    during_training = list(summary.get(COLLAPSE_WARNINGS) or [])
    warnings += during_training[:MAX_EPOCH_WARNINGS]
    if len(during_training) > MAX_EPOCH_WARNINGS:
        warnings.append(
            f"... and {len(during_training) - MAX_EPOCH_WARNINGS} more epochs with a warning "
            f"(`{COLLAPSE_WARNINGS}` in {SUMMARY_FILE})"
        )
    if warnings:
        lines = "\n".join(f"> - {warning}" for warning in warnings)
        sections.append("> **Warning: the embeddings look collapsed.**\n>\n" + lines)
    facts = run_fact_rows(summary)
    if facts:
        sections += ["## Run", markdown_table(["fact", "value"], facts, numeric=False)]
    measures = [
        [k, format_value(v)]
        for k, v in collapse.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if measures:
        sections += [
            "## Representation diagnostics",
            "Of the final embeddings (see `contrastkit.evaluation.diagnostics`).",
            markdown_table(["measure", "value"], measures),
        ]
    return sections


def _fine_tune_sections(run_dir: Path) -> list[str]:
    """The figures of ``contrastkit evaluate --fine-tune`` (``fine_tune.json``), when it ran on this run."""
    from contrastkit.report.fine_tuning import DESCRIPTION, fine_tune_rows, read_fine_tune

    results = read_fine_tune(run_dir)
    if not results:
        return []
    return ["## Fine-tuning", DESCRIPTION, markdown_table(*fine_tune_rows(results))]


def _curve_sections(run_dir: Path, plots_dir: Path) -> list[str]:
    if not (run_dir / METRICS_FILE).is_file():
        return [f"_No {METRICS_FILE} in the run directory: training curves are not shown._"]
    metrics = read_metrics_csv(run_dir / METRICS_FILE)
    sections = ["## Training curves"]
    sections.append(_loss_section(metrics, run_dir, plots_dir))
    probe = _epoch_series(metrics, "probe/")
    if probe:
        path = plots.plot_epoch_series(
            probe, plots_dir / "probe_accuracy.png", "Online probe accuracy", as_percent=True
        )
        sections.append(_image("Probe accuracy per epoch", path, run_dir))
    else:
        sections.append(f"_{METRICS_FILE} has no probe/ columns: no probe accuracy plot._")
    diagnostics = _epoch_series(metrics, "diag/")
    if diagnostics:
        path = plots.plot_epoch_panels(
            diagnostics, plots_dir / "diagnostics.png", "Representation diagnostics per epoch"
        )
        sections.append(_image("Diagnostics per epoch", path, run_dir))
    else:
        sections.append(f"_{METRICS_FILE} has no diag/ columns: no diagnostics plot._")
    return sections


def _loss_section(metrics: MetricsLog, run_dir: Path, plots_dir: Path) -> str:
    for column in LOSS_COLUMNS:
        steps, losses = metrics.series(column, x="step")
        if len(losses):
            path = plots.plot_loss_curve(steps, losses, plots_dir / "loss_curve.png", column)
            return _image("Training loss", path, run_dir)
    return f"_{METRICS_FILE} has no {' or '.join(LOSS_COLUMNS)} values: no loss curve._"


def _epoch_series(metrics: MetricsLog, prefix: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    series = {column: metrics.per_epoch(column) for column in metrics.columns_with_prefix(prefix)}
    return {column: values for column, values in series.items() if len(values[0])}


def _embedding_sections(run_dir: Path, plots_dir: Path, tsne: bool, seed: int) -> list[str]:
    if not (run_dir / EMBEDDINGS_FILE).is_file():
        return [f"_No {EMBEDDINGS_FILE} in the run directory: no embedding map or spectrum._"]
    embeddings = read_array(run_dir / EMBEDDINGS_FILE)
    if embeddings.ndim != 2 or len(embeddings) < 2:
        return [f"_{EMBEDDINGS_FILE} has shape {embeddings.shape}, not (n >= 2, d): skipped._"]
    embeddings = embeddings.astype(np.float32)
    sections = ["## Embeddings"]

    sigma = singular_values(embeddings)
    path = plots.plot_singular_values(
        sigma, plots_dir / "singular_values.png", effective_rank_from_singular_values(sigma)
    )
    sections.append(_image("Singular value spectrum", path, run_dir))

    labels, note = _labels_for(run_dir, len(embeddings))
    if note:
        sections.append(note)
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.permutation(len(embeddings))[:MAP_MAX_POINTS])
    path = plots.plot_embedding_map(
        plots.pca_2d(embeddings[shown]),
        None if labels is None else labels[shown],
        plots_dir / "embedding_pca.png",
        f"PCA of {len(shown)} embeddings",
    )
    sections.append(_image("PCA map of the embeddings", path, run_dir))
    if tsne:
        shown = np.sort(rng.permutation(len(embeddings))[:TSNE_MAX_POINTS])
        path = plots.plot_embedding_map(
            plots.tsne_2d(embeddings[shown], seed),
            None if labels is None else labels[shown],
            plots_dir / "embedding_tsne.png",
            f"t-SNE of {len(shown)} embeddings",
        )
        sections.append(_image("t-SNE map of the embeddings", path, run_dir))
    return sections


def _labels_for(run_dir: Path, n_rows: int) -> tuple[np.ndarray | None, str | None]:
    if not (run_dir / LABELS_FILE).is_file():
        return None, f"_No {LABELS_FILE} in the run directory: the maps are not coloured by class._"
    labels = read_array(run_dir / LABELS_FILE)
    if labels.shape != (n_rows,):
        return None, (
            f"_{LABELS_FILE} has shape {labels.shape} but there are {n_rows} embeddings: "
            f"the maps are not coloured by class._"
        )
    return labels, None


def _image(caption: str, path: Path, run_dir: Path) -> str:
    return f"![{caption}]({path.relative_to(run_dir).as_posix()})"
