"""SimCLR with and without Batch Styles Standardization on two mixed domains: MNIST and CIFAR-10
in grayscale.

BSS (Scalbert et al. 2024) is meant for unlabeled data drawn from several domains: within a batch
of mixed domains, a contrastive model can separate many negatives by their style alone (a
handwritten digit on black vs a photograph), and learns little else about them. Standardising
the style of each view batch removes that shortcut.

Setup: 4,000 MNIST test digits (images 0-3999, resized to 32x32) and 4,000 CIFAR-10 images in
grayscale (400 per class, images 0-399 of each class of cifar10-test) pretrain together, without
domain or class labels; SimCLR (NT-Xent, T = 0.5), CIFAR ResNet-18 at width 0.125, one input
channel, batch 256, the single-channel view recipe, the same seed, with and without
``extra: {views: {bss: true}}``. Evaluated per domain with weighted kNN (k = 200, t = 0.1):
CIFAR-gray queries are images 800-999 of each class (bank: the 4,000 pretraining CIFAR images),
MNIST queries are digits 8000-9999 (bank: the 4,000 pretraining digits). Also printed: the
domain purity of the mixed bank (share of each query's 20 nearest pretraining neighbours from its
own domain; the paper reports that BSS lowers it).

Usage (under the heavy lock, about 8 minutes on 2 cores)::

    OMP_NUM_THREADS=2 python benchmarks/bss_shift.py --epochs 3
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.evaluation.knn import weighted_knn_accuracy
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.training.data import EpochShuffleSampler
from contrastkit.modalities.image.views.image import EvalView

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gsimclr import train_simclr
from image_side_by_side import cifar_small


def embed(backbone, view, images) -> np.ndarray:
    backbone.eval()
    with torch.inference_mode():
        return torch.cat([backbone(view(images[i : i + 512])) for i in range(0, len(images), 512)]).numpy()


def domain_purity(bank: np.ndarray, bank_domain: np.ndarray, queries: np.ndarray, query_domain: np.ndarray,
                  k: int = 20) -> float:
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    nearest = np.argsort(-queries @ bank.T, axis=1)[:, :k]
    return float((bank_domain[nearest] == query_domain[:, None]).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", default="../shared/data/cifar10-test")
    parser.add_argument("--mnist", default="../shared/data/mnist-test")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cifar_train, cifar_train_labels, cifar_query, cifar_query_labels, _ = cifar_small(args.cifar, per_class=400)
    to_gray = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    cifar_train = (cifar_train.float() * to_gray).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    cifar_query = (cifar_query.float() * to_gray).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    mnist = open_image_source(args.mnist, image_size=32)
    mnist_train, mnist_train_labels = mnist.images[:4000], mnist.labels[:4000]
    mnist_query, mnist_query_labels = mnist.images[8000:], mnist.labels[8000:]
    train = torch.cat([mnist_train, cifar_train])
    domain = np.repeat([0, 1], [len(mnist_train), len(cifar_train)])

    rows = []
    for name, extra in (("simclr", {}), ("simclr + bss", {"views": {"bss": True}})):
        started = time.perf_counter()
        sampler = EpochShuffleSampler(len(train), args.batch_size, args.seed)
        backbone, (mean, std) = train_simclr(train, sampler, args.epochs, args.seed, args.width, extra=extra)
        seconds = time.perf_counter() - started
        view = EvalView(mean, std)
        bank_mnist, bank_cifar = embed(backbone, view, mnist_train), embed(backbone, view, cifar_train)
        query_mnist, query_cifar = embed(backbone, view, mnist_query), embed(backbone, view, cifar_query)
        cifar_top1 = 100 * weighted_knn_accuracy(bank_cifar, cifar_train_labels.numpy(), query_cifar,
                                                 cifar_query_labels.numpy(), k=200, temperature=0.1)
        mnist_top1 = 100 * weighted_knn_accuracy(bank_mnist, mnist_train_labels.numpy(), query_mnist,
                                                 mnist_query_labels.numpy(), k=200, temperature=0.1)
        purity = domain_purity(np.concatenate([bank_mnist, bank_cifar]), domain,
                               np.concatenate([query_mnist, query_cifar]),
                               np.repeat([0, 1], [len(query_mnist), len(query_cifar)]))
        rows.append((name, cifar_top1, mnist_top1, purity, seconds))
        print(rows[-1], flush=True)
    print("\n| pretraining | kNN top-1 CIFAR-10 gray | kNN top-1 MNIST | domain purity@20 | train s |")
    print("|---|---:|---:|---:|---:|")
    for name, cifar_top1, mnist_top1, purity, seconds in rows:
        print(f"| {name} | {cifar_top1:.2f} | {mnist_top1:.2f} | {purity:.3f} | {seconds:.0f} |")
    print("\nCommand: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
