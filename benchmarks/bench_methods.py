"""Every method on the same data, backbone and epochs: kNN top-1 and training images per second.

Each method is trained with ``contrastkit.modalities.image.training.run.fit`` (the code path of ``contrastkit fit``)
on a class-balanced subset of the data (``--per-class`` images of every class, drawn with a fixed
seed and written to an ``.npz`` that every run reads; ``--limit`` would take the first images,
which in a class-sorted image folder are one or two classes), with the held-out protocol of
``fit``: a stratified 20 % is kept out of pretraining, kNN (k = 200, weighted) is fit on the
rest's embeddings and scored on it. Throughput is ``summary.json``'s ``samples_per_second``
(training batches only). JEPA has no CNN backbone (it builds a ViT, sized by ``--width``, which the
summary's ``backbone`` names) and is trained with AdamW, as I-JEPA; the others use SGD with the defaults
of ``contrastkit fit``. The untrained encoder's kNN accuracy is printed beside each as the floor.

Usage (the table of docs/benchmarks.md; about 15 minutes on a loaded 2-core machine)::

    python benchmarks/bench_methods.py --data cifar10-test --per-class 200 --epochs 2 --width 0.125

Prints a markdown table and the command that made it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.training.run import fit

METHODS = ("simclr", "moco", "byol", "simsiam", "directpred", "jepa")


def balanced_subset(data: str, per_class: int, seed: int, directory: Path) -> Path:
    """``per_class`` random images of every class of ``data``, saved as an .npz; its path."""
    source = open_image_source(data)
    labels = source.labels.numpy()
    rng = np.random.default_rng(seed)
    rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in np.unique(labels)]))
    path = directory / f"{Path(data).name}-{per_class}-per-class.npz"
    np.savez(path, x=source.images[rows].numpy(), y=labels[rows])
    return path


def run_method(method: str, data: Path, args, out: Path) -> dict:
    options = dict(method=method, data=str(data), epochs=args.epochs, batch_size=args.batch_size,
                   width=args.width, seed=args.seed, out=str(out), report=False, probe_every=0)
    if method == "jepa":
        options["optimizer"] = "adamw"
    else:
        options["backbone"] = args.backbone
    return fit(FitConfig(**options))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10-test")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out-dir", default=None, help="where the runs go (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench-methods-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = balanced_subset(args.data, args.per_class, args.seed, out_dir)

    rows = []
    for method in args.methods:
        summary = run_method(method, data, args, out_dir / method)
        rows.append((method, summary["backbone"], summary["knn_top1"], summary["baselines"]["untrained"]["knn_top1"],
                     summary["samples_per_second"], summary["collapse"]["collapsed"]))
        print(f"{method}: kNN {summary['knn_top1']:.3f}, {summary['samples_per_second']:.1f} img/s", file=sys.stderr)

    print(f"\nData: {args.data}, {args.per_class} images per class (80 % pretraining, 20 % held out), "
          f"{args.epochs} epochs, batch {args.batch_size}, width {args.width}.\n")
    print("| method | backbone | kNN top-1 (%) | untrained kNN (%) | images/s | collapse flagged |")
    print("|---|---|---|---|---|---|")
    for method, backbone, knn, untrained, speed, collapsed in rows:
        print(f"| {method} | {backbone} | {100 * knn:.1f} | {100 * untrained:.1f} | {speed:.0f} | {collapsed} |")
    print(f"\nCommand: python benchmarks/bench_methods.py {shlex.join(argv if argv is not None else sys.argv[1:])}")


if __name__ == "__main__":
    main()
