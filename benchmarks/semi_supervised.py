"""10 labels per class on CIFAR-10: the linear probe vs label propagation vs self-training, on a SimCLR run.

Protocol (issue 28), on the run folder that ``benchmarks/select_labels.py`` reads, loaded the same
way: ``embeddings.npy`` holds the training part (8,000 rows, the pool) and then the held-out part
(2,000 rows, ``split.json``; never in pretraining). Per seed, 100 pool rows get their labels by one
of three rules: ``stratified`` (10 per class, drawn with the labels: the usual semi-supervised
benchmark draw), ``random`` (100 rows, no labels used) and ``typicality`` (TypiClust, 100 rows,
no labels used; ``evaluation/selection.py``). Every method knows those 100 labels and may use the
embeddings of the other 7,900 pool rows; all are scored (top-1) on the 2,000 held-out rows:

- ``linear``: the linear probe of ``evaluation/linear.py`` on the 100 rows (C by 3-fold CV on them);
- ``label propagation``: Zhou et al. on the pool's kNN graph (``evaluation/semi_supervised.py``),
  held-out rows scored by the induction formula (they are not in the graph);
- ``propagation + linear``: Iscen et al.'s certainty-weighted probe on the propagated pseudo-labels;
- ``self-training``: confidence-thresholded pseudo-labels for the linear probe, 5 rounds;
- ``propagation, transductive`` (for reference): the held-out rows join the graph as unlabelled
  nodes (their labels unused) and are read off F, Zhou et al.'s own setting.

Hyper-parameters (k, alpha; C of the pseudo-label probe; tau) are chosen before any held-out score,
per labelling rule, on a development carve of the pool only: 3 stratified 80/20 splits of the 8,000
pool rows (seeds 1000-1002); in each, 100 labels are drawn by the same rule from the 80 % part, the
rest of that part is unlabelled, and the 20 % part (1,600 rows, their labels used only here) is
scored. The grid value with the best mean development accuracy wins (ties: the first in grid
order). gamma = 3 (Iscen et al.) is not tuned. Note this uses labels a 100-label user would not
have (Oliver et al., "Realistic evaluation of deep semi-supervised learning algorithms", 2018): the
table is a best case for the tuned methods; the "paper defaults" rows show them untuned.

    python benchmarks/semi_supervised.py --run runs/rank_image_methods/pilot-simclr-seed0-25-epochs --seeds 5
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from contrastkit.evaluation.arrays import l2_normalize_rows
from contrastkit.evaluation.linear import fit_linear_probe
from contrastkit.evaluation.run_embeddings import read_run_embeddings
from contrastkit.evaluation.selection import select
from contrastkit.evaluation.semi_supervised import (
    ALPHA,
    NEIGHBOURS,
    THRESHOLD,
    fit_on_pseudo_labels,
    label_propagation,
    nearest_neighbours,
    self_train,
)
from contrastkit.evaluation.splits import few_labels_per_class, stratified_split

RULES = ("stratified", "random", "typicality")
BUDGET = 100  # 10 labels per class on CIFAR-10
K_GRID = (10, 20, 50, 100)
ALPHA_GRID = (0.5, 0.9, 0.99)
C_GRID = (0.01, 0.1, 1.0, 10.0)
THRESHOLD_GRID = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
DEV_SEEDS = (1000, 1001, 1002)
ROUNDS = 5
METHODS = ("label propagation", "propagation + linear", "self-training", "propagation, transductive")


class Part:
    """Embeddings and labels of a pool (labels read only through the chosen rows) and a scored part,
    with the kNN lists of the pool and of pool + scored part, searched once for the largest k."""

    def __init__(self, pool_x, pool_y, scored_x, scored_y):
        self.pool_x, self.pool_y, self.scored_x, self.scored_y = pool_x, pool_y, scored_x, scored_y
        self.pool_neighbours = nearest_neighbours(l2_normalize_rows(pool_x), max(K_GRID))
        both = l2_normalize_rows(np.concatenate([pool_x, scored_x]))
        self.both_neighbours = nearest_neighbours(both, max(K_GRID))

    def labelled(self, rule: str, seed: int) -> np.ndarray:
        if rule == "stratified":
            return few_labels_per_class(self.pool_y, np.arange(len(self.pool_y)), BUDGET // 10, seed)
        return select(self.pool_x, BUDGET, rule, seed=seed)

    def accuracy(self, predictions: np.ndarray) -> float:
        return float(np.mean(predictions == self.scored_y))

    def propagate(self, rows, k, alpha, transductive=False):
        x = np.concatenate([self.pool_x, self.scored_x]) if transductive else self.pool_x
        neighbours = self.both_neighbours if transductive else self.pool_neighbours
        return label_propagation(x, rows, self.pool_y[rows], 10, k, alpha, neighbours=neighbours)

    def scores(self, rows, seed, propagation=(), transductive=(), pseudo_linear=(), thresholds=()) -> dict:
        """{(method, setting): accuracy} of the linear probe and of each setting listed per method."""
        out = {("linear", ()): self.accuracy(fit_linear_probe(self.pool_x[rows], self.pool_y[rows], seed)
                                             .predict(self.scored_x))}
        propagated = {}
        for k, alpha in dict.fromkeys([*propagation, *((k, a) for k, a, _ in pseudo_linear)]):
            propagated[k, alpha] = self.propagate(rows, k, alpha)
            out[("label propagation", (k, alpha))] = self.accuracy(propagated[k, alpha].predict(self.scored_x))
        for k, alpha, c in pseudo_linear:
            head = fit_on_pseudo_labels(self.pool_x, propagated[k, alpha], c)
            out[("propagation + linear", (k, alpha, c))] = self.accuracy(head.predict(self.scored_x))
        for k, alpha in transductive:
            graph = self.propagate(rows, k, alpha, transductive=True)
            out[("propagation, transductive", (k, alpha))] = self.accuracy(graph.pseudo_labels[len(self.pool_x):])
        unlabelled = np.setdiff1d(np.arange(len(self.pool_x)), rows)
        for tau in thresholds:
            trained = self_train(self.pool_x[rows], self.pool_y[rows], self.pool_x[unlabelled], tau, ROUNDS,
                                 seed=seed)
            out[("self-training", (tau,))] = self.accuracy(trained.predict(self.scored_x))
        return out


def choose_on_development(pool_x, pool_y, rule: str) -> dict:
    """The best development setting of each method (see the module docstring)."""
    parts = []
    for dev_seed in DEV_SEEDS:
        fit_rows, val_rows = stratified_split(pool_y, 0.2, seed=dev_seed)
        part = Part(pool_x[fit_rows], pool_y[fit_rows], pool_x[val_rows], pool_y[val_rows])
        parts.append((part, part.labelled(rule, dev_seed), dev_seed))

    def mean_scores(**settings) -> dict:
        totals: dict = {}
        for part, rows, dev_seed in parts:
            for key, value in part.scores(rows, dev_seed, **settings).items():
                totals[key] = totals.get(key, 0.0) + value / len(parts)
        return totals

    grid = list(itertools.product(K_GRID, ALPHA_GRID))
    totals = mean_scores(propagation=grid, transductive=grid, thresholds=THRESHOLD_GRID)
    best = {method: max((key for key in totals if key[0] == method), key=lambda key: totals[key])[1]
            for method in ("label propagation", "propagation, transductive", "self-training")}
    # C of the pseudo-label probe, at the (k, alpha) plain propagation picked (not 4x every (k, alpha)).
    k, alpha = best["label propagation"]
    c_totals = mean_scores(pseudo_linear=[(k, alpha, c) for c in C_GRID])
    best["propagation + linear"] = max((key for key in c_totals if key[0] == "propagation + linear"),
                                       key=lambda key: c_totals[key])[1]
    totals.update(c_totals)
    best["development"] = {f"{m} {describe(m, s)}": round(100 * v, 2) for (m, s), v in totals.items()}
    return best


def describe(method: str, setting: tuple) -> str:
    if method in ("label propagation", "propagation, transductive"):
        return f"k={setting[0]}, alpha={setting[1]}"
    if method == "propagation + linear":
        return f"k={setting[0]}, alpha={setting[1]}, C={setting[2]}"
    if method == "self-training":
        return f"tau={setting[0]}"
    return "C by CV"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/rank_image_methods/pilot-simclr-seed0-25-epochs"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/OpenMP threads (1: on a shared 2-core machine more threads were 50x slower)")
    args = parser.parse_args()
    run = read_run_embeddings(args.run, labels=True, split=True)
    embeddings, labels = run.embeddings, run.labels
    pool, test = run.train, run.holdout
    pool_x, pool_y, test_x, test_y = embeddings[pool], labels[pool], embeddings[test], labels[test]
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(f"run: {args.run.name}; pool: {len(pool_x)} training rows; held-out: {len(test_x)} rows; "
          f"{embeddings.shape[1]}-d embeddings; {BUDGET} labels; seeds 0..{args.seeds - 1}\n")
    rows_out, chosen_out = [], []
    started = time.time()
    with threadpool_limits(args.threads):
        held_out = Part(pool_x, pool_y, test_x, test_y)
        for rule in args.rules:
            chosen = choose_on_development(pool_x, pool_y, rule)
            chosen_out.append((rule, chosen))
            per_seed: dict = {}
            for seed in range(args.seeds):
                scores = held_out.scores(
                    held_out.labelled(rule, seed), seed,
                    propagation=[chosen["label propagation"], (NEIGHBOURS, ALPHA)],
                    transductive=[chosen["propagation, transductive"]],
                    pseudo_linear=[chosen["propagation + linear"]],
                    thresholds=[chosen["self-training"][0], THRESHOLD])
                for method, setting in [("linear", ()), *((m, chosen[m]) for m in METHODS)]:
                    per_seed.setdefault((method, setting), []).append(100 * scores[method, setting])
                for method, setting in (("label propagation", (NEIGHBOURS, ALPHA)), ("self-training", (THRESHOLD,))):
                    per_seed.setdefault((method + " (paper defaults)", setting), []).append(
                        100 * scores[method, setting])
            for (method, setting), values in per_seed.items():
                label = "linear probe" if method == "linear" else method
                rows_out.append((rule, label, describe(method.replace(" (paper defaults)", ""), setting), values))
    print("| labels | method | setting | held-out top-1 (mean ± std) | per seed |")
    print("|---|---|---|---:|---|")
    for rule, method, setting, values in rows_out:
        print(f"| {rule} | {method} | {setting} | {np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} |")
    print("\ndevelopment-carve means (%), per labelling rule:")
    for rule, chosen in chosen_out:
        print(f"  {rule}: " + "; ".join(f"{key} {value}" for key, value in chosen["development"].items()))
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
