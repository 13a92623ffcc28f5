"""The project's ViT beside the CIFAR ResNet-18 at a similar parameter count (issue 22): training
images/s and kNN top-1 under SimCLR, BYOL and MAE.

Data: the first ``--per-class`` images of each class of ``cifar10-test`` (2,000 by default),
written to a temporary ``.npz``; ``contrastkit fit`` holds out 20 % of them, stratified
(``--split-seed 0``): the kNN queries (development data, no test split is scored). Backbones:
``vit-micro`` at ``--vit-width`` (0.5: 64 wide, 4 blocks, 4 heads, 4-px patches on 32 px: 0.20 M
parameters) and ``resnet18`` at ``--resnet-width`` (0.125, the ranking protocol's ResNet-18/8:
0.18 M). Each method keeps its defaults; each backbone its usual optimiser (``--vit-optimizer``
adamw, as ViTs are trained, ``--resnet-optimizer`` sgd, as the ResNet runs of the ranking),
the project's default learning rates and schedule; same batch, epochs and seed for all. MAE needs
a ViT (it drops masked tokens), so it has no ResNet row (SparK is the CNN counterpart).

Reported: backbone parameters, training images/s (``summary.json``'s ``samples_per_second``:
pretraining images over the training time), kNN top-1 on the held-out images (weighted, k 200,
t 0.1, the pretraining images as the bank), beside the untrained backbone's kNN.

Usage, from the repository root (the figures of docs/benchmarks.md)::

    OMP_NUM_THREADS=1 python benchmarks/vit_vs_resnet.py --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.paths import data_root
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.encoders import build_encoder
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.training.run import fit

RUNS = (("simclr", "resnet"), ("simclr", "vit"), ("byol", "resnet"), ("byol", "vit"), ("mae", "vit"))


def cifar_subset(per_class: int, folder: Path) -> Path:
    """The first ``per_class`` images of each class of cifar10-test, as ``folder/cifar-subset.npz``."""
    source = open_image_source(str(data_root() / "cifar10-test"))
    labels = source.labels.numpy()
    rank_in_class = np.zeros(len(labels), dtype=int)
    for c in np.unique(labels):
        rank_in_class[labels == c] = np.arange((labels == c).sum())
    keep = np.flatnonzero(rank_in_class < per_class)
    path = folder / "cifar-subset.npz"
    np.savez(path, x=source.images[keep].numpy(), y=labels[keep])
    return path


def run(method: str, kind: str, data: Path, args, out: Path) -> dict:
    backbone, width = ("vit-micro", args.vit_width) if kind == "vit" else ("resnet18", args.resnet_width)
    optimizer = args.vit_optimizer if kind == "vit" else args.resnet_optimizer
    summary = fit(FitConfig(method=method, data=str(data), backbone=backbone, width=width, optimizer=optimizer,
                            epochs=args.epochs, batch_size=args.batch_size, holdout=0.2, split_seed=0,
                            seed=args.seed, probe_every=0, report=False, baselines=True,
                            out=str(out / f"{method}-{kind}")))
    parameters = sum(p.numel() for p in build_encoder(backbone, 3, 32, width=width).parameters())
    return {"backbone": f"{backbone} x{width:g}", "optimizer": optimizer, "parameters": parameters,
            "images_per_second": summary["samples_per_second"], "knn": summary["knn_top1"],
            "untrained_knn": summary["baselines"]["untrained"]["knn_top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--vit-width", type=float, default=0.5)
    parser.add_argument("--resnet-width", type=float, default=0.125)
    parser.add_argument("--vit-optimizer", default="adamw")
    parser.add_argument("--resnet-optimizer", default="sgd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol", "mae"])
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out or tempfile.mkdtemp(prefix="vit-vs-resnet-"))
    data = cifar_subset(args.per_class, out)
    results = [(method, run(method, kind, data, args, out)) for method, kind in RUNS if method in args.methods]
    print(f"\ncifar10-test, first {args.per_class} per class ({10 * args.per_class} images, 20 % held out for kNN), "
          f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}, {torch.get_num_threads()} thread\n")
    print("| method | backbone | parameters | optimiser | training images/s | kNN top-1 % | untrained kNN % |\n"
          "|---|---|---:|---|---:|---:|---:|")
    for method, r in results:
        print(f"| {method} | {r['backbone']} | {r['parameters'] / 1e6:.2f} M | {r['optimizer']} | "
              f"{r['images_per_second']:.0f} | {100 * r['knn']:.1f} | {100 * r['untrained_knn']:.1f} |")


if __name__ == "__main__":
    main()
