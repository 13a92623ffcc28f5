"""``contrastkit report RUN`` (render a run folder's report.md and report.html again) and
``contrastkit compare RUN RUN ...`` (runs side by side: a printed table and an HTML page).

:mod:`contrastkit.cli` builds the parser and dispatches here; the pages are made by
:mod:`contrastkit.report.html`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastkit.core.errors import ConfigError

MAP_CHOICES = ("auto", "umap", "pca")


def add_report_commands(commands) -> None:
    report = commands.add_parser("report", help="render a run folder's report.md and report.html again "
                                 "(the page's map by UMAP where umap-learn is installed)")
    report.add_argument("run", help="a run folder written by contrastkit fit")
    report.add_argument("--map", choices=MAP_CHOICES, default="auto",
                        help="the embedding map: umap, pca, or auto (UMAP when umap-learn is installed; default)")
    report.add_argument("--max-points", type=int, default=2000, help="samples on the map (default 2000)")
    report.add_argument("--seed", type=int, default=0, help="which samples are mapped and queried (default 0)")
    report.add_argument("--no-markdown", action="store_true", help="write report.html only")

    compare = commands.add_parser("compare", help="runs side by side: their accuracies and facts in one table, "
                                  "their curves overlaid (an HTML page)")
    compare.add_argument("runs", nargs="+", help="two or more run folders")
    compare.add_argument("--out", default="compare.html", help="the HTML page to write (default compare.html)")


def run_report(args: argparse.Namespace) -> int:
    from contrastkit.report.html import write_html_report
    from contrastkit.report.markdown import write_report

    if args.max_points < 3:
        raise ConfigError(f"--max-points {args.max_points}: the map needs at least 3 points.")
    if not args.no_markdown:
        write_report(args.run, seed=args.seed, html=False)
    page = write_html_report(args.run, map_method=args.map, max_points=args.max_points, seed=args.seed)
    print(f"Wrote {page}" + ("" if args.no_markdown else f" and {Path(args.run) / 'report.md'}"))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from contrastkit.report.html import comparison_table, write_comparison_page

    if len(args.runs) < 2:
        raise ConfigError("contrastkit compare needs two or more run folders.")
    header, rows = comparison_table([Path(run) for run in args.runs])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    page = write_comparison_page(args.runs, args.out)
    print(f"\nWrote {page}")
    return 0
