"""TS2Vec on UCR sets bundled with aeon: SVM-protocol accuracy, the 1-NN floor, training time.

Runs contrastkit's TS2Vec with the settings of the official UCR script (scripts/ucr.sh:
batch 8, lr 0.001, 320-d representations, max_train_length 3000, 200 iterations for sets of
at most 100,000 values), the official data preparation (labels by the header's class list,
dataset-wide standardisation with training statistics) and the official SVM protocol, and
prints a table beside the official TS2Vec figures measured on a machine of this kind
(the project brief's ANCHORS.md, beside the shared data). Per-seed numbers are not comparable run to run with the official
code (the two draw their random numbers differently); compare the means over seeds.

    python benchmarks/bench_ts2vec.py                      # GunPoint + ItalyPowerDemand, seeds 42 and 1
    python benchmarks/bench_ts2vec.py --official runs.jsonl  # add measured official results

``--official`` reads JSON lines ``{"dataset", "seed", "acc", "train_seconds"}`` (one per run of
the official code) to print beside ours.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.evaluation.ucr import one_nn_euclidean, svm_protocol
from contrastkit.modalities.timeseries.sources import (
    load_bundled,
    standardize_with_train_statistics,
)
from contrastkit.modalities.timeseries.ts2vec import TS2Vec

# Official TS2Vec (default UCR settings, SVM protocol) and 1-NN Euclidean, measured on aeon's
# bundled data on a 2-core machine (the project brief's ANCHORS.md, beside the shared data).
PUBLISHED_HERE = {
    "GunPoint": {"official": {42: 0.980, 1: 0.973}, "one_nn": 0.913},
    "ItalyPowerDemand": {"official": {42: 0.956, 1: 0.961}, "one_nn": 0.955},
}


def run_ours(dataset: str, seed: int, n_iters: int | None) -> dict:
    train, test = load_bundled(dataset, "train"), load_bundled(dataset, "test")
    x_train, x_test = standardize_with_train_statistics(train.x, test.x)
    model = TS2Vec(
        input_dims=train.n_channels, batch_size=8, lr=0.001, output_dims=320, max_train_length=3000, seed=seed
    )
    # The untrained encoder is a baseline in its own right: random dilated convolutions with
    # max-pooling are a strong feature map for short UCR series (compare ROCKET).
    random_init_accuracy = svm_protocol(model.encode(x_train), train.y, model.encode(x_test), test.y)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(x_train, n_iters=n_iters)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    accuracy = svm_protocol(model.encode(x_train), train.y, model.encode(x_test), test.y)
    return {
        "dataset": dataset,
        "seed": seed,
        "acc": accuracy,
        "random_init_acc": random_init_accuracy,
        "one_nn": one_nn_euclidean(train.x, train.y, test.x, test.y),
        "train_seconds": train_wall,
        "train_cpu_seconds": train_cpu,
        "n_iters": model.n_iters,
    }


def read_official(path: Path | None) -> dict[tuple[str, int], dict]:
    if path is None:
        return {}
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(run["dataset"], int(run["seed"])): run for run in runs}


def print_table(ours: list[dict], official: dict[tuple[str, int], dict]) -> None:
    header = (
        f"{'dataset':<17} {'seed':>4} {'ours acc':>8} {'random init':>11} {'train s':>8} {'cpu s':>7} "
        f"{'official acc':>12} {'official s':>10} {'anchor acc':>10} {'1-NN ED':>7} {'anchor 1-NN':>11}"
    )
    print(header)
    print("-" * len(header))
    for run in ours:
        anchor = PUBLISHED_HERE.get(run["dataset"], {})
        measured = official.get((run["dataset"], run["seed"]), {})
        official_acc = f"{measured['acc']:.3f}" if measured else "-"
        official_s = f"{measured['train_seconds']:.0f}" if measured else "-"
        anchor_acc = anchor.get("official", {}).get(run["seed"])
        print(
            f"{run['dataset']:<17} {run['seed']:>4} {run['acc']:>8.3f} {run['random_init_acc']:>11.3f} "
            f"{run['train_seconds']:>8.0f} "
            f"{run['train_cpu_seconds']:>7.0f} {official_acc:>12} {official_s:>10} "
            f"{(f'{anchor_acc:.3f}' if anchor_acc else '-'):>10} {run['one_nn']:>7.3f} "
            f"{anchor.get('one_nn', float('nan')):>11.3f}"
        )
    for dataset in dict.fromkeys(run["dataset"] for run in ours):
        accs = [run["acc"] for run in ours if run["dataset"] == dataset]
        theirs = [run["acc"] for (name, _), run in official.items() if name == dataset]
        anchors = list(PUBLISHED_HERE.get(dataset, {}).get("official", {}).values())
        line = f"{dataset}: mean accuracy ours {np.mean(accs):.3f}"
        if theirs:
            line += f", official measured {np.mean(theirs):.3f}"
        if anchors:
            line += f", official anchor {np.mean(anchors):.3f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["GunPoint", "ItalyPowerDemand"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1])
    parser.add_argument("--n-iters", type=int, default=None, help="default: the official rule (200 or 600)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--official", type=Path, default=None, help="JSON lines of official TS2Vec runs")
    parser.add_argument("--json", type=Path, default=None, help="also write our runs here (JSON lines)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours = []
    for dataset in args.datasets:
        for seed in args.seeds:
            run = run_ours(dataset, seed, args.n_iters)
            print(json.dumps(run), flush=True)
            ours.append(run)
    if args.json:
        args.json.write_text("".join(json.dumps(run) + "\n" for run in ours))
    print()
    print_table(ours, read_official(args.official))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
