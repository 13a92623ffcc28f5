"""The SparK claim of issue 22: is masked image modelling more robust to a shrinking fine-tuning set
than contrastive pretraining?

Protocol (issue 22): CIFAR-10 images from ``cifar10-test`` (10,000); ``contrastkit fit`` holds out
2,000 of them, stratified (``--split-seed 0``), the rest (8,000) are the pretraining images. Four
starts of the same fine-tuning:

- ``simclr``: SimCLR on the CIFAR ResNet-18 at ``--resnet-width`` (SGD, the project's default rate);
- ``spark``: SparK on the same ResNet (AdamW, the closest to SparK's LAMB);
- ``mae``: MAE on ``vit-micro`` at ``--vit-width``, a similar parameter count (AdamW; fine-tuned
  with MAE's layer-wise rate decay ``--mae-layer-decay``, fixed beforehand, not tuned);
- ``scratch``: the ResNet freshly initialised (``fine_tune_image_run(from_scratch=True)``).

Each pretraining gets the same budget (``--epochs`` over the 8,000 images, batch ``--batch-size``).
Fine-tuning (:func:`contrastkit.modalities.image.fine_tune.fine_tune_image_run`): a development carve
of 1,000 of the 8,000 (stratified, seeded), then 80 / 800 / all 7,000 remaining labels drawn
balanced from the other 7,000 (the issue's "8,000 labels" cannot coexist with a 1,000-image carve
from the same 8,000: the largest budget is the 7,000 left), Adam at ``--lr`` for the encoder and the
head, flip-and-crop augmentation, the epoch chosen on the carve; the 2,000 held-out images are scored
once per setting, after that choice (``split="test"``). Epochs per budget: enough for about
``--fine-tune-steps`` optimiser steps, at least ``--min-epochs``.

Pretraining seed and fine-tuning seed (labels drawn, head, augmentation) are the same ``--seeds``.
The claim holds if SparK's drop from the largest budget to 80 labels is smaller than SimCLR's beyond
the seeds' spread (SparK's largest drop below SimCLR's smallest).

Results go to ``--out/results.jsonl`` as they come (a rerun skips what is there), run folders to
``--out``. Usage, from the repository root (the figures of docs/benchmarks.md)::

    OMP_NUM_THREADS=1 python benchmarks/spark_claim.py --out runs/spark-claim --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.paths import data_root
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.fine_tune import fine_tune_image_run
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.training.run import fit

STARTS = ("scratch", "simclr", "spark", "mae")
BUDGETS = (80, 800, 7000)
DEV_SIZE = 1000


def cifar_npz(folder: Path) -> Path:
    """All of cifar10-test as ``folder/cifar10.npz`` (x uint8 NCHW, y)."""
    path = folder / "cifar10.npz"
    if not path.exists():
        source = open_image_source(str(data_root() / "cifar10-test"))
        np.savez(path, x=source.images.numpy(), y=source.labels.numpy())
    return path


def pretrain(start: str, seed: int, data: Path, args, out: Path) -> tuple[Path, dict]:
    """The run folder of ``start``'s pretraining at ``seed`` (fitted unless already there)."""
    method = "simclr" if start == "scratch" else start
    folder = out / f"{method}-seed{seed}"
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        vit = method == "mae"
        fit(FitConfig(method=method, data=str(data), backbone="vit-micro" if vit else "resnet18",
                      width=args.vit_width if vit else args.resnet_width,
                      optimizer="adamw" if method in ("mae", "spark") else "sgd",
                      epochs=args.epochs, batch_size=args.batch_size, holdout=0.2, split_seed=0, seed=seed,
                      probe_every=0, report=False, baselines=False, out=str(folder)))
    return folder, json.loads(summary_path.read_text())


def fine_tune_epochs(labels: int, args) -> int:
    steps_per_epoch = math.ceil(labels / min(args.fine_tune_batch, labels))
    return max(args.min_epochs, math.ceil(args.fine_tune_steps / steps_per_epoch))


def done_keys(results: Path) -> set[tuple]:
    if not results.exists():
        return set()
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["start"], r["seed"], r["budget"]) for r in rows}


def measure(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = cifar_npz(out)
    results = out / "results.jsonl"
    done = done_keys(results)
    for seed in args.seeds:
        for start in args.starts:
            if all((start, seed, b) in done for b in args.budgets):
                continue
            began = time.perf_counter()
            run_dir, summary = pretrain(start, seed, data, args, out)
            pretrain_s = summary.get("train_seconds") or time.perf_counter() - began
            for budget in args.budgets:
                if (start, seed, budget) in done:
                    continue
                began = time.perf_counter()
                figures = fine_tune_image_run(
                    run_dir, budget, epochs=fine_tune_epochs(budget, args), lrs=(args.lr,),
                    layer_decay=args.mae_layer_decay if start == "mae" else None, batch_size=args.fine_tune_batch,
                    dev_size=DEV_SIZE, seed=seed, split="test", from_scratch=start == "scratch")
                row = {"start": start, "seed": seed, "budget": budget, "pretrain_images_per_second":
                       summary.get("samples_per_second"), "pretrain_seconds": pretrain_s,
                       "fine_tune_seconds": time.perf_counter() - began, **figures}
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{start} seed {seed} {budget} labels: dev {100 * row['fine_tune_dev_top1']:.1f}, "
                      f"test {100 * row['fine_tune_top1']:.1f} (epoch {row['chosen']['epochs']}), "
                      f"kNN {100 * row['knn_top1']:.1f}, linear {100 * row['linear_top1']:.1f}", flush=True)


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def table(args) -> None:
    rows = [json.loads(line) for line in (Path(args.out) / "results.jsonl").read_text().splitlines() if line.strip()]
    by = {(r["start"], r["seed"], r["budget"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    budgets = sorted({r["budget"] for r in rows})
    print(f"\nFine-tuning top-1 % on the 2,000 held-out images (scored once), mean (min–max) over seeds "
          f"{', '.join(map(str, seeds))}; drop = largest budget minus 80 labels\n")
    print("| start | " + " | ".join(f"{b} labels" for b in budgets) + " | drop | kNN 80 / linear 80 |")
    print("|---|" + "---:|" * (len(budgets) + 2))
    drops: dict[str, list[float]] = {}
    for start in args.starts:
        cells, ok = [], True
        for b in budgets:
            values = [100 * by[(start, s, b)]["fine_tune_top1"] for s in seeds if (start, s, b) in by]
            ok &= len(values) == len(seeds)
            cells.append(spread(values) if values else "–")
        per_seed = [100 * (by[(start, s, budgets[-1])]["fine_tune_top1"] - by[(start, s, budgets[0])]["fine_tune_top1"])
                    for s in seeds if (start, s, budgets[-1]) in by and (start, s, budgets[0]) in by]
        drops[start] = per_seed
        probes = [(100 * by[(start, s, budgets[0])]["knn_top1"], 100 * by[(start, s, budgets[0])]["linear_top1"])
                  for s in seeds if (start, s, budgets[0]) in by]
        probe = (f"{statistics.mean(p[0] for p in probes):.1f} / {statistics.mean(p[1] for p in probes):.1f}"
                 if probes else "–")
        print(f"| {start} | " + " | ".join(cells) + f" | {spread(per_seed) if per_seed else '–'} | {probe} |")
    if drops.get("spark") and drops.get("simclr"):
        holds = max(drops["spark"]) < min(drops["simclr"])
        print(f"\nClaim (SparK's drop below SimCLR's beyond the seeds' spread): "
              f"{'holds' if holds else 'does not hold'} (SparK {spread(drops['spark'])}, SimCLR {spread(drops['simclr'])})")
    times = {r["start"]: r for r in rows if r["budget"] == budgets[0]}
    print("\nPretraining images/s (last seed's run): " + ", ".join(
        f"{s} {times[s]['pretrain_images_per_second']:.0f}" for s in args.starts
        if s in times and s != "scratch" and times[s].get("pretrain_images_per_second")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="run folders and results.jsonl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--epochs", type=int, default=10, help="pretraining epochs over the 8,000 images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resnet-width", type=float, default=0.125)
    parser.add_argument("--vit-width", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning Adam rate (encoder and head)")
    parser.add_argument("--mae-layer-decay", type=float, default=0.75)
    parser.add_argument("--fine-tune-batch", type=int, default=64)
    parser.add_argument("--fine-tune-steps", type=int, default=300)
    parser.add_argument("--min-epochs", type=int, default=8)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.table_only:
        measure(args)
    table(args)


if __name__ == "__main__":
    main()
