"""The collapse verdict of finished image runs under the current rules, beside the verdict they stored.

Training does not depend on the collapse diagnostics, so a saved run's final weights give the verdict
the current code would have written at the end of that run: this loads ``RUN/checkpoints/last.ckpt``,
embeds and projects the rows of the run's data that ``fit`` evaluated (``rows.npy``) as its final
snapshot does (:func:`~contrastkit.modalities.image.training.callbacks.objective_space_report`, eval
mode) and prints the stored and the re-checked measures. A stored effective rank that the re-check does
not reproduce means the weights or the data are not the run's.

Used for the ranking protocol's DINO rows (docs/benchmarks.md), stored while the effective-rank floor of
DINO's logits was 2 % of its 2048 outputs rather than of the 128-wide bottleneck they are a linear map of::

    CONTRASTKIT_DATA=<data folder> python benchmarks/recheck_collapse.py \\
        runs/rank_image_methods/runs/contrastkit-dino-seed0 runs/rank_image_methods/runs/contrastkit-dino-seed1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from contrastkit.modalities.image.sources.images import open_image_source
from contrastkit.modalities.image.training.callbacks import embed_and_project, objective_space_report
from contrastkit.modalities.image.training.restore import load_method


def recheck(run: Path) -> dict:
    """The stored and the re-checked collapse reports of the run folder ``run``."""
    stored = json.loads((run / "summary.json").read_text())
    method, config, _ = load_method(run / "checkpoints" / "last.ckpt")
    # The rows fit evaluated, in its order (rows.npy): uniformity subsamples rows with a seed, so the order counts.
    images = torch.as_tensor(open_image_source(config.data).images)[torch.from_numpy(np.load(run / "rows.npy"))]
    _, projected = embed_and_project(method, images, torch.device("cpu"))
    return {"stored": stored["collapse"], "now": objective_space_report(method, images, torch.device("cpu"), projected)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by contrastkit fit")
    args = parser.parse_args()
    print("| run | stored RankMe | stored flagged | re-checked RankMe | max rank | re-checked flagged | reasons now |")
    print("|---|---:|---|---:|---:|---|---|")
    for run in args.runs:
        report = recheck(run)
        stored, now = report["stored"], report["now"]
        print(f"| {run.name} | {stored['effective_rank']:.2f} | {'yes' if stored['collapsed'] else 'no'} "
              f"| {now['effective_rank']:.2f} | {now.get('max_rank', now['dim'])} "
              f"| {'yes' if now['collapsed'] else 'no'} | {'; '.join(now['reasons']) or '–'} |")


if __name__ == "__main__":
    main()
