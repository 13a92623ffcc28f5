"""G-SimCLR against plain SimCLR on CIFAR-10 small: does pseudo-label-guided batching help kNN?

G-SimCLR (Chakraborty et al. 2020): pseudo-labels from k-means on the latent space of a denoising
autoencoder trained on the unlabeled images (:mod:`contrastkit.modalities.image.sampling.pseudo_labels`), then
batches that keep each pseudo-class as spread out as its size allows
(:class:`contrastkit.modalities.image.sampling.spread_batches.SpreadBatchSampler`). Everything else is identical:
the same SimCLR (NT-Xent, T = 0.5), CIFAR ResNet-18 at width 0.125, batch 256, SGD, seed, epochs.

Data as in ``image_side_by_side.py``: images 0-799 of each class of cifar10-test pretrain
(labels unused), 800-999 are the kNN queries (weighted kNN, k = 200, t = 0.1). Printed besides
the kNN top-1: how well the pseudo-labels match the true classes (NMI, ARI), and the mean number
of same-true-class pairs per batch (false negatives) under each sampler, counted on the first
epoch's batches.

Usage (under the heavy lock, about 8 minutes on 2 cores)::

    OMP_NUM_THREADS=2 python benchmarks/gsimclr.py --epochs 3
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.sampling.pseudo_labels import pseudo_labels
from contrastkit.modalities.image.sampling.spread_batches import SpreadBatchSampler
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.training.data import BatchedSamples, EpochShuffleSampler
from contrastkit.modalities.image.training.module import SSLModule

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from image_side_by_side import cifar_small, knn_top1, trainer


def train_simclr(images: torch.Tensor, batch_sampler, epochs: int, seed: int, width: float,
                 extra: dict | None = None) -> tuple[torch.nn.Module, tuple]:
    """SimCLR trained as ``contrastkit fit`` trains it (SSLModule + Lightning), on the batches of
    ``batch_sampler``; returns the trained backbone and the normalisation (mean, std)."""
    mean, std = ImageSource(images, None, name="train").channel_mean_std()
    data = DataInfo(channels=images.shape[1], image_size=images.shape[-1], mean=mean, std=std,
                    num_samples=len(images))
    config = FitConfig(method="simclr", backbone="resnet18", width=width, batch_size=batch_sampler.batch_size,
                       epochs=epochs, seed=seed, warmup_epochs=min(1.0, epochs), extra=extra or {})
    torch.manual_seed(seed)
    method = build_method("simclr", config=config, data=data)
    loader = DataLoader(BatchedSamples(images, None), batch_sampler=batch_sampler, collate_fn=lambda batch: batch)
    trainer(epochs, []).fit(SSLModule(method, config, data), train_dataloaders=loader)
    return method.backbone, (mean, std)


def same_class_pairs(batch_sampler, labels: np.ndarray) -> float:
    """Mean number of same-class pairs per batch over one epoch (SimCLR's false negatives)."""
    pairs = []
    for batch in batch_sampler:
        counts = np.bincount(labels[batch])
        pairs.append(float((counts * (counts - 1) / 2).sum()))
    return float(np.mean(pairs))


def main(argv: list[str] | None = None) -> None:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-test")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--autoencoder-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, train_labels, query, query_labels, _ = cifar_small(args.data)
    started = time.perf_counter()
    pseudo = pseudo_labels(train, num_clusters=args.clusters, epochs=args.autoencoder_epochs, seed=args.seed)
    print(f"pseudo-labels: {time.perf_counter() - started:.0f} s, sizes {np.bincount(pseudo).tolist()}, "
          f"NMI {normalized_mutual_info_score(train_labels, pseudo):.3f}, "
          f"ARI {adjusted_rand_score(train_labels, pseudo):.3f} against the true classes", flush=True)
    truth = train_labels.numpy()
    samplers = {
        "simclr": lambda: EpochShuffleSampler(len(train), args.batch_size, args.seed),
        "g-simclr": lambda: SpreadBatchSampler(pseudo, args.batch_size, args.seed),
    }
    rows = []
    for name, make in samplers.items():
        pairs = same_class_pairs(make(), truth)
        started = time.perf_counter()
        backbone, (mean, std) = train_simclr(train, make(), args.epochs, args.seed, args.width)
        seconds = time.perf_counter() - started
        split = {"train": train, "train_labels": train_labels, "query": query, "query_labels": query_labels,
                 "mean": mean, "std": std}
        rows.append((name, pairs, knn_top1(backbone, split), seconds))
        print(rows[-1], flush=True)
    print(f"\n| batches | same-true-class pairs per batch | kNN top-1 after {args.epochs} epochs | train s |")
    print("|---|---:|---:|---:|")
    for name, pairs, top1, seconds in rows:
        print(f"| {name} | {pairs:.0f} | {top1:.2f} | {seconds:.0f} |")
    print("\nCommand: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
