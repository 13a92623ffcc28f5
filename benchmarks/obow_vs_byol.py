"""OBoW against BYOL with the same EMA teacher, views and epochs (issue 21).

OBoW's claim (Gidaris et al., CVPR 2021): predicting a teacher's bag of visual words beats
predicting the teacher's embedding. contrastkit's OBoW shares BYOL's pieces where the two papers
overlap: the teacher is an EMA copy of the backbone with BYOL's cosine schedule from 0.99; the
views are BYOL's two views (the global crops of ``obow`` follow :class:`BYOLViews`' recipe, no
local crops); both predict each view's target from the other view. What differs is the target:
BYOL's projection of the teacher (through a projector and predictor), OBoW's bags of visual words
over the teacher's last two feature maps (through the generated head).

Protocol: ``contrastkit fit`` (``training.run.fit``) on the data, ``--holdout 0.2`` (stratified,
``--split-seed 0`` for every seed), the method's defaults otherwise, the same epochs, batch, width,
backbone and SGD for both; weighted kNN top-1 (k 200, t 0.1; the pretraining images are the bank)
and a linear probe with 10 labels per class, scored on the held-out part. The held-out part is
development data; no test split is scored. Two seeds each, beside the untrained encoder.

Usage, from the repository root, one thread (the figures of docs/benchmarks.md)::

    OMP_NUM_THREADS=1 python benchmarks/obow_vs_byol.py --data digits --epochs 15 --num-words 1024 --seeds 0 1

The paper's 8192 words per stage cost about 2.5 minutes per digits epoch on a loaded 2-core machine
(against 4 s for BYOL); 1024 words is an eighth of the paper's for a 1,437-image training set.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.training.run import fit

FEW_LABELS = "linear_top1_10_per_class"


def run(method: str, seed: int, args, out: Path) -> dict:
    started = time.perf_counter()
    extra = {"obow": {"num_words": args.num_words}} if method == "obow" and args.num_words else {}
    summary = fit(FitConfig(method=method, data=args.data, limit=args.limit, epochs=args.epochs, extra=extra,
                            batch_size=args.batch_size, width=args.width, backbone=args.backbone, holdout=0.2,
                            split_seed=0, seed=seed, probe_every=0, report=False, baselines=seed == args.seeds[0],
                            out=str(out / f"{method}-seed{seed}")))
    return {"knn": summary["knn_top1"], "linear": summary[FEW_LABELS], "seconds": time.perf_counter() - started,
            "collapsed": summary["collapse"]["collapsed"], "baselines": summary.get("baselines")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--limit", type=int, default=None, help="first N images of the data (default: all)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--num-words", type=int, default=None,
                        help="OBoW's vocabulary per stage (default: the method's, 8192, the paper's for ImageNet)")
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out or tempfile.mkdtemp(prefix="obow-vs-byol-"))
    results = {method: [run(method, seed, args, out) for seed in args.seeds] for method in ("byol", "obow")}
    untrained = results["byol"][0]["baselines"]["untrained"]
    words = f"OBoW vocabulary {args.num_words or 8192} words per stage; "
    print(f"\n{args.data}{f' (first {args.limit})' if args.limit else ''}, backbone {args.backbone} width "
          f"{args.width}, batch {args.batch_size}, {args.epochs} epochs, {words}seeds {' '.join(map(str, args.seeds))}; "
          "held-out 20 % (development data)\n")
    print("| method | kNN top-1 % per seed | median | linear, 10 labels/class % per seed | seconds per run | "
          "collapse flagged |\n|---|---|---:|---|---:|---|")
    for method, runs in results.items():
        knn, linear = [100 * r["knn"] for r in runs], [100 * r["linear"] for r in runs]
        print(f"| {method} | {' / '.join(f'{v:.2f}' for v in knn)} | {statistics.median(knn):.2f} | "
              f"{' / '.join(f'{v:.2f}' for v in linear)} | {statistics.mean(r['seconds'] for r in runs):.0f} | "
              f"{' / '.join('yes' if r['collapsed'] else 'no' for r in runs)} |")
    print(f"| untrained encoder (seed {args.seeds[0]}) | {100 * untrained['knn_top1']:.2f} | | "
          f"{100 * untrained[FEW_LABELS]:.2f} | | |")


if __name__ == "__main__":
    main()
