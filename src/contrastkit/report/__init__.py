"""Turn a run directory into ``report.md`` with PNG plots, and print the accuracy table."""

from __future__ import annotations

from contrastkit.report.markdown import write_report
from contrastkit.report.tables import format_comparison_table

__all__ = ["format_comparison_table", "write_report"]
