"""Does iSogCLR give frequent semantics larger temperatures than rare ones?

The claim of Qiu et al. (ICML 2023, Sec. 5): with one learned temperature per sample, samples
whose semantics are frequent in the data end with larger temperatures than rare ones. Here the
semantics are the classes of scikit-learn's bundled 8x8 digits (no download), made imbalanced:
classes 0-4 keep ``--frequent`` images each, classes 5-9 keep ``--rare``. An MLP encoder is
trained from scratch with the ``isogclr`` objective on two augmented views (random 1-pixel
shifts, pixel dropout, Gaussian noise); the learned temperatures are then compared by class.

Printed per seed: the mean temperature of every class, of the frequent and of the rare classes,
and the AUC of "a frequent sample's temperature exceeds a rare sample's" (0.5 = no difference).

Usage::

    python benchmarks/isogclr_temperatures.py --epochs 60 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from contrastkit.objectives import get


def imbalanced_digits(frequent: int, rare: int, seed: int) -> tuple[Tensor, Tensor]:
    """Images (N, 8, 8) in [0, 1] and labels (N,); classes 0-4 frequent, 5-9 rare."""
    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([
        rng.permutation(np.flatnonzero(labels == c))[: frequent if c < 5 else rare] for c in range(10)
    ])
    return torch.tensor(images[keep] / 16.0, dtype=torch.float32).view(-1, 8, 8), torch.from_numpy(labels[keep])


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random shift by up to one pixel, 15% pixel dropout, Gaussian noise; flattened (B, 64)."""
    batch = images.shape[0]
    shifts = torch.randint(-1, 2, (batch, 2), generator=generator)
    shifted = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(0, 1)) for img, (dy, dx) in zip(images, shifts)])
    keep = (torch.rand(shifted.shape, generator=generator) > 0.15).float()
    noisy = shifted * keep + 0.1 * torch.randn(shifted.shape, generator=generator)
    return noisy.view(batch, -1)


def run(seed: int, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = imbalanced_digits(args.frequent, args.rare, seed)
    encoder = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 64))
    objective = get("isogclr", dataset_size=len(images), temperature_lr=args.temperature_lr, rho=args.rho)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - 1, args.batch_size):
            rows = order[start : start + args.batch_size]
            if len(rows) < 2:
                continue
            loss = objective(encoder(augment(images[rows], generator)), encoder(augment(images[rows], generator)), indices=rows)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    tau = objective.temperature
    frequent = labels < 5
    result = {f"class {c}": tau[labels == c].mean().item() for c in range(10)}
    result["frequent"] = tau[frequent].mean().item()
    result["rare"] = tau[~frequent].mean().item()
    result["auc"] = roc_auc_score(frequent.numpy(), tau.numpy())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--frequent", type=int, default=150, help="images kept per frequent class (0-4)")
    parser.add_argument("--rare", type=int, default=15, help="images kept per rare class (5-9)")
    parser.add_argument("--temperature-lr", type=float, default=0.03)
    parser.add_argument("--rho", type=float, default=0.4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = []
    for seed in args.seeds:
        start = time.time()
        result = run(seed, args)
        results.append(result)
        per_class = " ".join(f"{result[f'class {c}']:.3f}" for c in range(10))
        print(
            f"seed {seed}: tau per class 0-9 [{per_class}]  frequent {result['frequent']:.3f}  "
            f"rare {result['rare']:.3f}  AUC(frequent > rare) {result['auc']:.3f}  ({time.time() - start:.0f} s)"
        )
    for key in ("frequent", "rare", "auc"):
        values = [r[key] for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{key:>8}: {statistics.mean(values):.3f} +- {spread:.3f} over {len(values)} seeds")


if __name__ == "__main__":
    main()
