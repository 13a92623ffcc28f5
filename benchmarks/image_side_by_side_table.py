"""The tables of ``image_side_by_side.py``, from its JSON-lines file of runs (one row per run).

Rows are grouped by their settings (epochs, images, batch, width, threads, versions, ...): runs made
with other settings are never mixed into one median. Within a group, per (method, memory format):
the median images/s of each library with min–max over repeats, the contrastkit / LightlySSL ratio
of each repeat (the two runs of one repeat ran one after the other) as median and min–max, and
medians of kNN top-1, overhead share and peak PSS / USS of the process tree. Plain Python: it
imports no torch, so ``--table-only`` prints at once.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

LIBRARIES = ("contrastkit", "lightly")
FORMAT_LABELS = {
    "both-nchw": "equal: both NCHW",
    "both-channels-last": "equal: both channels-last",
    "library-default": "*different setting*: contrastkit channels-last, LightlySSL NCHW",
}


def settings_id(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def load_rows(path: Path) -> list[dict]:
    """The runs stored in ``path`` (none if it does not exist); a half-written last line (a run
    killed while appending) is skipped with a note."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"{path}:{number}: not a complete JSON row, skipped")
    return rows


def run_key(row: dict) -> tuple:
    return settings_id(row["settings"]), row["method"], row["memory_format"], row["repeat"], row["library"]


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """``median (min–max)``; one value alone; ``–`` for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def median_pair(values: dict[str, list[float]], fmt: str) -> str:
    return " / ".join(fmt.format(statistics.median(values[lib])) if values[lib] else "–" for lib in LIBRARIES)


def total_peak(row: dict, kind: int) -> float:
    """Peak PSS (kind 0) or USS (kind 1) in MiB of the run's process tree at one instant."""
    return row["peak_pss_uss_mib"]["total"][kind]


def print_settings(rows: list[dict]) -> None:
    """The group's settings, and each method's settings that both libraries ran with."""
    shown = ", ".join(f"{key} {value}" for key, value in rows[0]["settings"].items())
    print(f"\nSettings: {shown}")
    methods = {}
    for row in rows:
        methods.setdefault(row["method"], set()).add(json.dumps(row["method_settings"], sort_keys=True))
    for method, variants in methods.items():
        for variant in sorted(variants):
            print(f"  {method}, both libraries: " + ", ".join(f"{k} {v}" for k, v in json.loads(variant).items()))


def print_runs(rows: list[dict]) -> None:
    print("\n| method | memory format | repeat | seed | library | images/s | peak PSS / USS MiB, total | data wait "
          "| overhead share | step s | floor s | kNN top-1 |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["method"], r["memory_format"], r["repeat"], r["order"])):
        print(f"| {r['method']} | {r['memory_format']} | {r['repeat']} | {r['seed']} | {r['library']} | "
              f"{r['images_per_s']:.1f} | {total_peak(r, 0):.0f} / {total_peak(r, 1):.0f} | "
              f"{r['data_wait_share']:.1%} | {r['overhead_share']:.1%} | {r['step_s']:.3f} | {r['floor_s']:.3f} | "
              f"{r['knn_top1']:.2f} |")


def print_summary(rows: list[dict]) -> None:
    """The aggregated table of one settings group."""
    epochs = rows[0]["settings"]["epochs"]
    print(f"\n| method | memory format | repeats | images/s contrastkit | images/s LightlySSL | ratio contrastkit / "
          f"LightlySSL (paired) | kNN top-1 after {epochs} ep., contrastkit / LightlySSL | overhead share "
          f"contrastkit / LightlySSL | peak PSS total MiB contrastkit / LightlySSL | peak USS total MiB "
          f"contrastkit / LightlySSL |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    groups: dict[tuple, dict] = {}
    for row in rows:
        groups.setdefault((row["method"], row["memory_format"]), {}).setdefault(row["repeat"], {})[row["library"]] = row
    for (method, memory_format), repeats in groups.items():
        by_library = {lib: [runs[lib] for runs in repeats.values() if lib in runs] for lib in LIBRARIES}
        ratios = [runs["contrastkit"]["images_per_s"] / runs["lightly"]["images_per_s"]
                  for runs in repeats.values() if set(runs) == set(LIBRARIES)]

        def values(field, lib, by_library=by_library):
            return [field(r) if callable(field) else r[field] for r in by_library[lib]]

        def pair(field, fmt):
            return median_pair({lib: values(field, lib) for lib in LIBRARIES}, fmt)

        print(f"| {method} | {FORMAT_LABELS.get(memory_format, memory_format)} | {len(ratios)} paired | "
              f"{spread(values('images_per_s', 'contrastkit'))} | {spread(values('images_per_s', 'lightly'))} | "
              f"**{spread(ratios, '{:.2f}x')}** | {pair('knn_top1', '{:.2f}')} | {pair('overhead_share', '{:.1%}')} | "
              f"{pair(lambda r: total_peak(r, 0), '{:.0f}')} | {pair(lambda r: total_peak(r, 1), '{:.0f}')} |")
    unequal = {(row["method"], row["library"], row["head_parameters"]) for row in rows}
    for method in {row["method"] for row in rows}:
        counts = {count for m, _, count in unequal if m == method}
        if len(counts) > 1:
            print(f"\nNOT EQUAL: {method}'s heads have {sorted(counts)} trainable parameters in the two libraries.")


def print_tables(rows: list[dict], only_settings: dict | None = None, runs: bool = True) -> None:
    """Per settings group (or only ``only_settings``'s): the settings, the runs, the summary."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(settings_id(row["settings"]), []).append(row)
    if only_settings is not None:
        grouped = {k: v for k, v in grouped.items() if k == settings_id(only_settings)}
    if not grouped:
        print("\nNo runs to show.")
    for group in grouped.values():
        print_settings(group)
        if runs:
            print_runs(group)
        print_summary(group)
    print("\nimages/s: training images / wall time of the training epochs. Ratio: per repeat, the two libraries' "
          "runs of that repeat (one after the other, the order alternating between repeats); median (min–max). "
          "Overhead share: 1 - floor / step, floor = the backbone's own work on the step's batch (forward + "
          "backward of the views that train it, plus the forward of the views a momentum encoder embeds). Peak "
          "PSS / USS: the run's process tree (main + DataLoader workers) at one instant.")
