"""``report.html``: a run folder as one self-contained page, and several runs side by side.

``write_html_report(run_dir)`` reads the same files as ``report.md`` (:mod:`contrastkit.report.markdown`)
and writes one HTML file that needs nothing else at view time (no network, no other file): the
accuracy table against the baselines, the run facts and diagnostics, the training curves as inline
SVG, an interactive 2-D map of the embeddings where hovering a point shows the sample itself (an
image's thumbnail, a series' curve, or its row and label; :mod:`contrastkit.report.previews`), and a
gallery of nearest neighbours for a few queries.

The map is UMAP (``map_method="umap"``; umap-learn, the ``report`` extra) or PCA. ``"auto"`` takes
UMAP when umap-learn is installed; the page written at the end of every ``fit`` uses PCA, because
UMAP costs tens of seconds per run (importing numba alone ~20 s); ``contrastkit report RUN`` renders
the page again with UMAP. At most ``max_points`` (2,000) samples are mapped (a seeded draw), so the
page stays under 10 MB with image thumbnails.

``write_comparison_page(runs, out)`` is ``contrastkit compare``: the runs' accuracy and facts in one
table and their curves overlaid.

Checking in a browser: the page's first script records every error (``window.onerror``,
``console.error``) and the last one writes their count to ``<body data-errors>``, and the number
of points drawn to ``<svg id="map" data-points>``, so that a headless browser's DOM dump tells
whether the page ran cleanly (``tests/report/test_html_report.py``).
"""

from __future__ import annotations

import contextlib
import html
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.engine.run_folder import read_split
from contrastkit.evaluation.arrays import l2_normalize_rows
from contrastkit.report.previews import sample_previews
from contrastkit.report.run_files import (
    LABELS_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsLog,
    read_array,
    read_metrics_csv,
    read_summary,
)
from contrastkit.report.svg import PALETTE, line_chart
from contrastkit.report.tables import COLLAPSE, COLLAPSE_WARNINGS, comparison_rows, format_value, percent, run_fact_rows

HTML_FILE = "report.html"
EMBEDDING_FILES = ("embeddings.npy", "train_embeddings.npy")  # image/graph/tabular runs; time series
MAP_METHODS = ("auto", "umap", "pca")
MAX_POINTS = 2000
GALLERY_QUERIES = 5
GALLERY_NEIGHBOURS = 8
LOSS_COLUMNS = ("train/loss", "train/loss_step")


def write_html_report(run_dir: str | Path, *, map_method: str = "pca", max_points: int = MAX_POINTS,
                      seed: int = 0, queries: int = GALLERY_QUERIES, neighbours: int = GALLERY_NEIGHBOURS,
                      out: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"the run folder {run_dir} does not exist; pass a folder that `contrastkit fit` wrote.")
    if map_method not in MAP_METHODS:
        raise ConfigError(f"map method '{map_method}': choose one of {', '.join(MAP_METHODS)}.")
    summary = read_summary(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).is_file() else None
    metrics = read_metrics_csv(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).is_file() else None
    title = _title(summary, run_dir)
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += _result_sections(summary)
    body += _fine_tune_sections(run_dir)
    body += _curve_sections(metrics)
    page_data: dict[str, Any] = {"points": [], "previews": [], "labels": []}
    body += _embedding_sections(run_dir, page_data, map_method, max_points, seed, queries, neighbours)
    body += _fact_sections(summary)
    path = Path(out) if out is not None else run_dir / HTML_FILE
    path.write_text(_page(title, "\n".join(body), page_data))
    return path


def write_comparison_page(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """One page with the runs' accuracies and facts in a table and their curves overlaid."""
    runs = [Path(run) for run in run_dirs]
    for run in runs:
        if not run.is_dir():
            raise DataError(f"the run folder {run} does not exist.")
    header, rows = comparison_table(runs)
    body = ["<h1>Runs side by side</h1>", _table(header, rows)]
    names = _run_names(runs)
    logs = {name: read_metrics_csv(run / METRICS_FILE) for name, run in zip(names, runs, strict=True)
            if (run / METRICS_FILE).is_file()}
    loss = [(name, *_loss_series(log)) for name, log in logs.items()]
    body.append("<h2>Training curves</h2>")
    body.append(line_chart(loss, "training loss", "step"))
    epoch_columns = sorted({c for log in logs.values() for c in log.columns_with_prefix("probe/")})
    for column in epoch_columns:
        body.append(line_chart([(name, *log.per_epoch(column)) for name, log in logs.items()], column, "epoch"))
    path = Path(out)
    path.write_text(_page("Runs side by side", "\n".join(body), {"points": [], "previews": [], "labels": []}))
    return path


def comparison_table(runs: Sequence[Path]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per run): method, data, the learned embeddings' accuracies (%), the
    run's evaluation figures, seconds."""
    summaries = [read_summary(run / SUMMARY_FILE) if (run / SUMMARY_FILE).is_file() else {} for run in runs]
    accuracy_names: list[str] = []
    evaluation_names: list[str] = []
    for summary in summaries:
        _, rows = comparison_rows(summary)
        for row in rows:
            if row[0] not in accuracy_names and row[1] != "-":
                accuracy_names.append(row[0])
        for key, value in (summary.get("evaluation") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in evaluation_names:
                evaluation_names.append(key)
    header = ["run", "method", "data"] + [f"{name} (%)" for name in accuracy_names] + evaluation_names + ["seconds"]
    rows = []
    for name, summary in zip(_run_names(runs), summaries, strict=True):
        row = [name, str(summary.get("method", "-")), str(summary.get("data", "-"))]
        row += [percent(summary.get(metric)) for metric in accuracy_names]
        row += [format_value((summary.get("evaluation") or {}).get(key)) for key in evaluation_names]
        row.append(format_value(summary.get("seconds")))
        rows.append(row)
    return header, rows


def _run_names(runs: Sequence[Path]) -> list[str]:
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # two runs of one name: their paths tell them apart
        names = [str(run) for run in runs]
    return names


def _title(summary: dict | None, run_dir: Path) -> str:
    if summary and summary.get("method") and summary.get("data"):
        return f"Run report: {summary['method']} on {summary['data']}"
    return f"Run report: {run_dir.name}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _result_sections(summary: dict | None) -> list[str]:
    """The accuracy table, the run's own evaluation and any collapse warning: the page's top."""
    if summary is None:
        return [f"<p class='note'>No {SUMMARY_FILE} in the run folder: accuracies and run facts are not shown.</p>"]
    sections = []
    header, rows = comparison_rows(summary)
    if any(cell != "-" for row in rows for cell in row[1:]):
        sections += ["<h2>Accuracy</h2>",
                     "<p>Top-1 accuracy (%) on the held-out part: weighted kNN, and a logistic-regression probe on "
                     "all training labels or a few per class. <em>learned</em> = the trained encoder, "
                     "<em>untrained</em> = the same encoder at initialisation, <em>raw</em> = the input itself.</p>",
                     _table(header, rows)]
    evaluation = summary.get("evaluation")
    if isinstance(evaluation, dict) and evaluation:
        sections += ["<h2>Evaluation</h2>",
                     _table(["measure", "value"], [[k, format_value(v)] for k, v in evaluation.items()])]
    collapse = summary.get(COLLAPSE) or {}
    warnings = list(collapse.get("reasons", [])) if collapse.get("collapsed") else []
    warnings += list(summary.get(COLLAPSE_WARNINGS) or [])[:3]
    if warnings:
        items = "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings)
        sections.append(f"<div class='warning'><strong>The embeddings look collapsed.</strong><ul>{items}</ul></div>")
    return sections


def _fine_tune_sections(run_dir: Path) -> list[str]:
    """The figures of ``contrastkit evaluate --fine-tune`` (``fine_tune.json``), when it ran on this run."""
    from contrastkit.report.fine_tuning import DESCRIPTION, fine_tune_rows, read_fine_tune

    results = read_fine_tune(run_dir)
    if not results:
        return []
    return ["<h2>Fine-tuning</h2>", f"<p>{html.escape(DESCRIPTION.replace('`', '').replace('*', ''))}</p>",
            _table(*fine_tune_rows(results))]


def _fact_sections(summary: dict | None) -> list[str]:
    """The run facts and the final embeddings' diagnostics: the page's bottom."""
    if summary is None:
        return []
    sections = []
    measures = [[k, format_value(v)] for k, v in (summary.get(COLLAPSE) or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if measures:
        sections += ["<h2>Representation diagnostics</h2>", _table(["measure", "value"], measures)]
    facts = run_fact_rows(summary)
    if facts:
        sections += ["<h2>Run</h2>", _table(["fact", "value"], facts)]
    return sections


def _loss_series(log: MetricsLog) -> tuple[np.ndarray, np.ndarray]:
    for column in LOSS_COLUMNS:
        steps, values = log.series(column, x="step")
        if len(values):
            return steps, values
    return np.empty(0), np.empty(0)


def _curve_sections(metrics: MetricsLog | None) -> list[str]:
    if metrics is None:
        return [f"<p class='note'>No {METRICS_FILE} in the run folder: no training curves.</p>"]
    charts = [line_chart([("loss", *_loss_series(metrics))], "training loss", "step")]
    probe = [(column, *metrics.per_epoch(column)) for column in metrics.columns_with_prefix("probe/")]
    if probe:
        charts.append(line_chart(probe, "online probe", "epoch"))
    for column in metrics.columns_with_prefix("diag/"):  # one chart each: their scales differ
        charts.append(line_chart([(column, *metrics.per_epoch(column))], column, "epoch", width=340, height=190))
    return ["<h2>Training curves</h2>", "<div class='charts'>" + "".join(charts) + "</div>"]


def _embeddings_file(run_dir: Path) -> Path | None:
    return next((run_dir / name for name in EMBEDDING_FILES if (run_dir / name).is_file()), None)


@contextlib.contextmanager
def _torch_threads_kept():
    """Give torch its intra-op thread count back after the block. UMAP's numba kernels set the OpenMP
    runtime's thread count, which torch shares: after a report, a caller held at 1 thread (one per process,
    or the test suite's one per worker) would run at every core and oversubscribe the machine (measured:
    a test 6x slower in the suite than alone)."""
    torch = sys.modules.get("torch")  # not imported here: a report needs no torch
    threads = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _map_coordinates(embeddings: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") is not None else "pca"
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ConfigError("the UMAP map needs umap-learn (pip install 'contrastkit[report]'); "
                              "--map pca draws a PCA map instead.") from None
        neighbours = min(15, len(embeddings) - 1)
        with _torch_threads_kept():
            return umap.UMAP(n_components=2, n_neighbors=max(neighbours, 2), random_state=seed).fit_transform(
                embeddings), "UMAP"
    from contrastkit.report.plots import pca_2d

    return pca_2d(embeddings), "PCA"


def _embedding_sections(run_dir: Path, page_data: dict, map_method: str, max_points: int, seed: int,
                        queries: int, neighbours: int) -> list[str]:
    file = _embeddings_file(run_dir)
    if file is None:
        return [f"<p class='note'>No embeddings in the run folder ({' or '.join(EMBEDDING_FILES)}): "
                f"no map and no neighbours.</p>"]
    embeddings = read_array(file).astype(np.float32)
    if embeddings.ndim != 2 or len(embeddings) < 3:
        return [f"<p class='note'>{file.name} has shape {embeddings.shape}: no map.</p>"]
    labels = None
    label_file = run_dir / (LABELS_FILE if file.name == "embeddings.npy" else "train_labels.npy")
    if label_file.is_file():
        labels = read_array(label_file)
        if labels.shape != (len(embeddings),):
            labels = None
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.permutation(len(embeddings))[:max_points])
    coordinates, method_name = _map_coordinates(embeddings[shown], map_method, seed)

    query_rows, neighbour_rows, cosines = _gallery_rows(run_dir, embeddings, shown, rng, queries, neighbours)
    previewed = np.unique(np.concatenate([shown, query_rows, neighbour_rows.reshape(-1)])).astype(np.int64)
    previews, note = sample_previews(run_dir, previewed, labels)
    preview_of = {int(row): index for index, row in enumerate(previewed)}
    label_names = [] if labels is None else [str(v) for v in np.unique(labels)]
    label_index = {name: index for index, name in enumerate(label_names)}

    def label_of(row: int) -> int:
        return -1 if labels is None else label_index[str(labels[row])]

    page_data["points"] = [[round(float(x), 4), round(float(y), 4), label_of(int(row)), preview_of[int(row)], int(row)]
                           for (x, y), row in zip(coordinates, shown, strict=True)]
    page_data["previews"] = previews
    page_data["labels"] = label_names
    sections = ["<h2>Embeddings</h2>",
                f"<p>{method_name} of {len(shown)} of the {len(embeddings)} embeddings ({file.name})"
                f"{', coloured by label' if labels is not None else ''}. Hover a point to see its sample.</p>"]
    if note:
        sections.append(f"<p class='note'>{html.escape(note)}</p>")
    sections.append('<div class="map-box"><svg id="map" viewBox="0 0 640 480" width="640" height="480" '
                    'data-points="0"></svg><div id="tooltip" hidden></div><div id="legend"></div></div>')
    sections += _gallery_section(query_rows, neighbour_rows, cosines, labels, previews, preview_of)
    return sections


def _gallery_rows(run_dir: Path, embeddings: np.ndarray, shown: np.ndarray, rng: np.random.Generator,
                  queries: int, neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A few query rows (drawn from the held-out part where split.json names one), each one's
    nearest rows by cosine similarity among all the others, and those similarities."""
    pool = shown
    split = read_split(run_dir)
    if split is not None and len(split[1]):
        pool = split[1]
    queries = min(queries, len(pool))
    neighbours = min(neighbours, len(embeddings) - 1)
    if queries == 0 or neighbours == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.int64), np.empty((0, 0))
    query_rows = np.sort(rng.choice(pool, size=queries, replace=False))
    unit = l2_normalize_rows(embeddings)
    similarity = unit[query_rows] @ unit.T
    similarity[np.arange(queries), query_rows] = -np.inf  # a query is not its own neighbour
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbours]
    return query_rows.astype(np.int64), order.astype(np.int64), np.take_along_axis(similarity, order, axis=1)


def _gallery_section(query_rows: np.ndarray, neighbour_rows: np.ndarray, cosines: np.ndarray,
                     labels: np.ndarray | None, previews: list[dict], preview_of: dict[int, int]) -> list[str]:
    if len(query_rows) == 0:
        return []
    lines = ["<h2>Nearest neighbours</h2>",
             "<p>A few queries (from the held-out part where the run has one) and their nearest embeddings by "
             "cosine similarity; a neighbour with another label than its query is outlined in red.</p>",
             "<table class='gallery'><tbody>"]
    for query, row_neighbours, row_cosines in zip(query_rows, neighbour_rows, cosines, strict=True):
        cells = [_preview_cell(previews[preview_of[int(query)]], int(query), labels, "query")]
        for row, cosine in zip(row_neighbours, row_cosines, strict=True):
            same = labels is None or labels[row] == labels[query]
            cells.append(_preview_cell(previews[preview_of[int(row)]], int(row), labels,
                                       "same" if same else "other", f"cos {cosine:.3f}"))
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return lines


def _preview_cell(preview: dict, row: int, labels: np.ndarray | None, kind: str, extra: str = "") -> str:
    caption = f"row {row}" + ("" if labels is None else f" · {labels[row]}") + (f" · {extra}" if extra else "")
    if preview["kind"] == "image":
        content = f"<img src='{preview['src']}' alt='row {row}'>"
    elif preview["kind"] == "series":
        content = _sparkline(preview["values"])
    else:
        content = f"<span>{html.escape(preview['text'])}</span>"
    return f"<td class='{kind}'>{content}<br><small>{html.escape(caption)}</small></td>"


def _sparkline(values: Sequence[float], width: int = 120, height: int = 40) -> str:
    if len(values) < 2:
        return "<span>-</span>"
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    points = " ".join(f"{i * width / (len(values) - 1):.1f},{height - (v - low) / span * height:.1f}"
                      for i, v in enumerate(values))
    return (f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}'>"
            f"<polyline points='{points}' fill='none' stroke='#4e79a7'/></svg>")


def _page(title: str, body: str, page_data: dict) -> str:
    # The data block is JSON inside a script element: "</" would end the element early.
    data = json.dumps(page_data, separators=(",", ":")).replace("</", "<\\/")
    return PAGE.format(title=html.escape(title), style=STYLE, body=body, data=data,
                       palette=json.dumps(PALETTE), script=SCRIPT)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.note{color:#666;font-style:italic}
.warning{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{border:1px solid #eee;background:#fff}
.chart-title{font-size:13px;font-weight:600}.tick,.legend{font-size:10px;fill:#444}.axis{font-size:11px;fill:#444}
.grid{stroke:#eee}.plot-area{fill:none;stroke:#ccc}
.map-box{position:relative;display:flex;gap:12px;align-items:flex-start}#map{border:1px solid #ccc;background:#fff}
#tooltip{position:absolute;pointer-events:none;background:#fff;border:1px solid #888;padding:6px;font-size:12px;
box-shadow:0 2px 6px rgba(0,0,0,.2);max-width:260px}#legend{font-size:12px;line-height:18px}
img{image-rendering:pixelated;width:64px;height:64px;object-fit:contain}
.gallery td{text-align:center;vertical-align:top;font-size:11px}.gallery td.query{background:#eef3fb}
.gallery td.other{outline:2px solid #e15759}
"""

SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const palette = PALETTE;
  const svg = document.getElementById('map');
  function colourOf(label) {
    if (label < 0) return '#4e79a7';
    return label < palette.length ? palette[label] : 'hsl(' + ((label * 137.508) % 360).toFixed(0) + ',55%,50%)';
  }
  function previewHtml(preview) {
    if (preview.kind === 'image') return '<img src="' + preview.src + '" alt="sample">';
    if (preview.kind === 'series') {
      const v = preview.values, w = 200, h = 60;
      if (v.length < 2) return '';
      const lo = Math.min.apply(null, v), hi = Math.max.apply(null, v), span = (hi - lo) || 1;
      const pts = v.map(function (y, i) { return (i * w / (v.length - 1)).toFixed(1) + ',' + (h - (y - lo) / span * h).toFixed(1); }).join(' ');
      return '<svg width="' + w + '" height="' + h + '"><polyline points="' + pts + '" fill="none" stroke="#4e79a7"/></svg>';
    }
    const span = document.createElement('span');
    span.textContent = preview.text;
    return span.outerHTML;
  }
  if (svg && data.points.length) {
    const ns = 'http://www.w3.org/2000/svg', width = 640, height = 480, pad = 12;
    const xs = data.points.map(function (p) { return p[0]; }), ys = data.points.map(function (p) { return p[1]; });
    const x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    const y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    const sx = (width - 2 * pad) / ((x1 - x0) || 1), sy = (height - 2 * pad) / ((y1 - y0) || 1);
    const tooltip = document.getElementById('tooltip');
    data.points.forEach(function (p) {
      const dot = document.createElementNS(ns, 'circle');
      dot.setAttribute('cx', (pad + (p[0] - x0) * sx).toFixed(1));
      dot.setAttribute('cy', (height - pad - (p[1] - y0) * sy).toFixed(1));
      dot.setAttribute('r', '3');
      dot.setAttribute('fill', colourOf(p[2]));
      dot.setAttribute('fill-opacity', '0.75');
      dot.addEventListener('mouseenter', function (event) {
        const label = p[2] >= 0 ? ' · label ' + data.labels[p[2]] : '';
        tooltip.innerHTML = previewHtml(data.previews[p[3]]) + '<div>row ' + p[4] + label + '</div>';
        tooltip.style.left = (event.offsetX + 16) + 'px';
        tooltip.style.top = (event.offsetY + 16) + 'px';
        tooltip.hidden = false;
      });
      dot.addEventListener('mouseleave', function () { tooltip.hidden = true; });
      svg.appendChild(dot);
    });
    svg.setAttribute('data-points', String(svg.querySelectorAll('circle').length));
    const legend = document.getElementById('legend');
    data.labels.forEach(function (name, i) {
      const row = document.createElement('div');
      row.innerHTML = '<span style="display:inline-block;width:10px;height:10px;background:' + colourOf(i) + '"></span> ';
      row.appendChild(document.createTextNode(name));
      legend.appendChild(row);
    });
  }
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>
window.__reportErrors = [];
window.addEventListener('error', function (event) {{ window.__reportErrors.push(String(event.message)); }});
(function () {{ const original = console.error; console.error = function () {{
  window.__reportErrors.push(Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); }}; }})();
</script>
<style>{style}</style></head>
<body data-errors="unknown">
{body}
<script type="application/json" id="report-data">{data}</script>
<script>const PALETTE = {palette};
{script}</script>
<script>document.body.setAttribute('data-errors', String(window.__reportErrors.length));
document.body.setAttribute('data-error-messages', window.__reportErrors.join(' | '));</script>
</body></html>
"""
