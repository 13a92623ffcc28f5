"""A small labelled table and short training options, shared by the tabular run-folder and fine-tuning tests."""

from __future__ import annotations

import numpy as np

SMALL = ["--max-steps", "2", "--batch-size", "16", "--hidden-dims", "16", "--depth", "2"]


def write_rows(folder, rows: int = 90):
    """A CSV of two numeric columns (one heavy-tailed, so that the scaling matters), a categorical one
    and a three-valued label."""
    rng = np.random.default_rng(0)
    lines = ["size,rate,colour,kind"]
    for i in range(rows):
        kind = "xyz"[i % 3]
        colour = ["red", "green", "blue"][i % 4 % 3]
        lines.append(f"{rng.lognormal(3 + i % 3, 1):.5f},{rng.normal() + i % 3:.5f},{colour},{kind}")
    path = folder / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
