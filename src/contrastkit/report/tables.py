"""Tables of a run summary: learned embeddings against the baselines, and the run facts.

The summary (``summary.json``, written by ``contrastkit.modalities.image.training.run``) is read with this layout;
every part is optional and a missing value shows as ``-``:

    {
      "method": "simclr", "data": "digits", "epochs": 20, "seconds": 63.2,
      "samples_per_second": 540.1,            # ... and any other scalar run facts
      "knn_top1": 0.936, "linear_top1": 0.955, "linear_top1_10_per_class": 0.897,   # learned
      "n_train": 1438, "n_test": 359,
      "baselines": {"untrained": {"knn_top1": ..., ...}, "raw": {"knn_top1": ..., ...}},
      "collapse": {...contrastkit.evaluation.collapse_report(...)...},
      "collapse_warnings": ["epoch 3: representations look collapsed (...)", ...]
    }

The learned embeddings' accuracies are top-level entries; each baseline has the same keys.
Accuracies are fractions in [0, 1] in the summary and percentages with one decimal in tables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

LEARNED = "learned"
BASELINES = "baselines"
COLLAPSE = "collapse"
COLLAPSE_WARNINGS = "collapse_warnings"
STANDARD_BASELINES = ("untrained", "raw")
ACCURACY_METRICS = ("knn_top1", "linear_top1")
DEFAULT_FEW_LABEL_METRIC = "linear_top1_10_per_class"
FEW_LABEL_METRIC = re.compile(r"^linear_top1_(\d+)_per_class$")
RUN_FACTS = ("method", "data", "epochs", "seconds", "samples_per_second")
MISSING = "-"


def percent(value: Any) -> str:
    """0.9361 -> '93.6'; anything that is not a number -> '-'."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING
    return f"{100.0 * value:.1f}"


def comparison_columns(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """[(column name, metrics)]: learned, untrained, raw, then any other baseline in file order."""
    baselines = summary.get(BASELINES) or {}
    names = list(STANDARD_BASELINES) + [b for b in baselines if b not in STANDARD_BASELINES]
    columns = [(LEARNED, summary)]
    columns += [(name, baselines.get(name) or {}) for name in names]
    return columns


def comparison_metrics(columns: list[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """knn_top1, linear_top1 and every few-label key present (by n), else the 10-per-class one."""
    few = {key for _, metrics in columns for key in metrics if FEW_LABEL_METRIC.match(key)}
    few_sorted = sorted(few, key=lambda key: int(FEW_LABEL_METRIC.match(key).group(1)))
    return list(ACCURACY_METRICS) + (few_sorted or [DEFAULT_FEW_LABEL_METRIC])


def comparison_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the accuracy table (values in percent, one decimal)."""
    columns = comparison_columns(summary)
    header = ["metric (%)"] + [name for name, _ in columns]
    rows = [
        [metric] + [percent(metrics.get(metric)) for _, metrics in columns]
        for metric in comparison_metrics(columns)
    ]
    return header, rows


def format_comparison_table(summary: Mapping[str, Any]) -> str:
    """The accuracy table as aligned plain text (printed by the CLI at the end of ``fit``)."""
    header, rows = comparison_rows(summary)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def is_accuracy_metric(key: str) -> bool:
    return key in ACCURACY_METRICS or FEW_LABEL_METRIC.match(key) is not None


def run_fact_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """[[fact, value]]: the standard run facts present, then every other scalar top-level entry
    that is not an accuracy (those are in the comparison table)."""
    scalar = {
        k: v
        for k, v in summary.items()
        if (isinstance(v, (str, int, float, bool)) or v is None) and not is_accuracy_metric(k)
    }
    ordered = [k for k in RUN_FACTS if k in scalar] + [k for k in scalar if k not in RUN_FACTS]
    return [[key, format_value(scalar[key])] for key in ordered]


def format_value(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """A GitHub-flavoured markdown table; all but the first column right-aligned when numeric."""
    align = ["---"] + (["---:"] if numeric else ["---"]) * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(_escape(cell) for cell in line) + " |" for line in lines)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")
