"""Fine-tuning figures in a run folder: ``fine_tune.json``, written by ``contrastkit evaluate
--fine-tune`` (:mod:`contrastkit.fine_tune_command`) and shown by the run report beside the frozen probes.

The file holds ``{"results": [...]}``, one entry per setting (labels, split, seed, encoder rate scale,
layer decay, augmentation and, for text, the labelled data), each the command's printed figures; a
later run of the same setting replaces its entry, so the file keeps the latest figures of each.
Light: no torch, no numpy.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contrastkit.core.errors import DataError
from contrastkit.report.tables import format_value, percent

FINE_TUNE_FILE = "fine_tune.json"
SETTING_KEYS = ("labels", "scored", "seed", "augment", "data")
HEADER = ["labels", "scored on", "kNN (%)", "linear (%)", "fine-tune (%)", "fine-tune dev (%)", "lr", "encoder lr",
          "layer decay", "epochs"]


def _setting(result: Mapping[str, Any]) -> tuple:
    chosen = result.get("chosen") or {}
    rates = [t.get("lr") for t in result.get("tried") or []]
    encoder_scale = chosen.get("encoder_lr", 0) / chosen["lr"] if chosen.get("lr") else None
    return (*(str(result.get(key)) for key in SETTING_KEYS), str(rates), str(encoder_scale),
            str(chosen.get("layer_decay")))


def read_fine_tune(run_dir: str | Path) -> list[dict[str, Any]]:
    """The entries of ``run_dir/fine_tune.json``; [] when there is none."""
    path = Path(run_dir) / FINE_TUNE_FILE
    if not path.is_file():
        return []
    try:
        results = json.loads(path.read_text()).get("results")
    except (json.JSONDecodeError, AttributeError) as error:
        raise DataError(f"'{path}' is not the JSON that 'contrastkit evaluate --fine-tune' writes ({error}); delete "
                        f"it and run the fine-tuning again.") from None
    return [r for r in results or [] if isinstance(r, dict)]


def record_fine_tune(run_dir: str | Path, result: Mapping[str, Any]) -> Path:
    """Add ``result`` to ``run_dir/fine_tune.json`` (replacing an entry of the same setting), atomically."""
    folder = Path(run_dir)
    results = [r for r in read_fine_tune(folder) if _setting(r) != _setting(result)] + [dict(result)]
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".json.tmp", delete=False) as handle:
        json.dump({"results": results}, handle, indent=2)
    os.replace(handle.name, folder / FINE_TUNE_FILE)
    return folder / FINE_TUNE_FILE


def fine_tune_rows(results: list[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The report's table: one row per entry, by number of labels, accuracies in percent."""
    rows = []
    for result in sorted(results, key=lambda r: (str(r.get("scored")), r.get("labels") or 0)):
        chosen = result.get("chosen") or {}
        rows.append([str(result.get("labels")), str(result.get("scored", "-")).split(" ")[0]]
                    + [percent(result.get(key)) for key in ("knn_top1", "linear_top1", "fine_tune_top1",
                                                            "fine_tune_dev_top1")]
                    + [format_value(chosen.get(key)) for key in ("lr", "encoder_lr", "layer_decay", "epochs")])
    return HEADER, rows


DESCRIPTION = ("End-to-end fine-tuning of the encoder with a linear head on N balanced labels "
               "(`contrastkit evaluate --fine-tune`), beside weighted kNN and the linear probe on the same "
               "labels and the same scored rows; rate and epoch chosen on a development carve, the test part "
               "scored only when asked for (*scored on*).")
