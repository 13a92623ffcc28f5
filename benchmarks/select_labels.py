"""Which 100 CIFAR-10 images to label: TypiClust typicality and k-center vs random, on a SimCLR run.

Protocol (issue 28): the run folder's ``embeddings.npy`` holds the training part first and then the
held-out part (``split.json``; the held-out part never entered pretraining). Each selector chooses
``--budget`` rows of the training part from the embeddings alone (L2-normalised; no labels); those
rows' labels train the linear probe of ``contrastkit.evaluation.linear`` (standardised features,
logistic regression; with under 6 labels per class C is not cross-validated, C = 1); top-1
accuracy is measured on the whole held-out part, which no selector sees. A budget of 100 is the
10-labels-per-class regime of TypiClust's CIFAR-10 table, but the selectors do not know the
classes, so a class may get more or fewer than 10 (the ``classes`` column counts those covered).

    python benchmarks/select_labels.py --run runs/rank_image_methods/pilot-simclr-seed0-25-epochs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from contrastkit.evaluation.linear import linear_probe_accuracy
from contrastkit.evaluation.run_embeddings import read_run_embeddings
from contrastkit.evaluation.selection import select

STRATEGIES = ("random", "k-center", "typicality")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/rank_image_methods/pilot-simclr-seed0-25-epochs"))
    parser.add_argument("--budget", type=int, nargs="+", default=[100])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    run = read_run_embeddings(args.run, labels=True, split=True)
    embeddings, labels = run.embeddings, run.labels
    pool, test = run.train, run.holdout
    pool_x, pool_y, test_x, test_y = embeddings[pool], labels[pool], embeddings[test], labels[test]
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(f"run: {args.run.name}; pool: {len(pool_x)} training rows; held-out: {len(test_x)} rows; "
          f"{embeddings.shape[1]}-d embeddings; seeds 0..{args.seeds - 1}\n")
    print("| budget | strategy | linear top-1 (mean ± std) | per seed | classes covered (mean) | seconds |")
    print("|---:|---|---:|---|---:|---:|")
    for budget in args.budget:
        for strategy in STRATEGIES:
            accuracies, covered, started = [], [], time.time()
            for seed in range(args.seeds):
                chosen = select(pool_x, budget, strategy, seed=seed)
                accuracies.append(100 * linear_probe_accuracy(pool_x[chosen], pool_y[chosen], test_x, test_y,
                                                              seed=seed))
                covered.append(len(np.unique(pool_y[chosen])))
            per_seed = ", ".join(f"{a:.2f}" for a in accuracies)
            print(f"| {budget} | {strategy} | {np.mean(accuracies):.2f} ± {np.std(accuracies, ddof=1):.2f} | "
                  f"{per_seed} | {np.mean(covered):.1f} | {time.time() - started:.0f} |")


if __name__ == "__main__":
    main()
