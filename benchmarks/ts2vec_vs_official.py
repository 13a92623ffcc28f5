"""contrastkit's TS2Vec beside the official code on every UCR/UEA set aeon bundles, several seeds.

Both implementations train in this process, on the same CPU with the same threads, on the same
arrays, with the official UCR/UEA settings (scripts/ucr.sh, uea.sh: batch 8, lr 0.001,
320-d representations, max_train_length 3000, 200 iterations for training arrays of at most
100,000 values, else 600), and are scored with the same SVM protocol
(:func:`contrastkit.evaluation.ucr.svm_protocol`, shown equal to the official ``fit_svm`` on
the same embeddings by tests/modalities/timeseries/test_ts2vec_official.py). The official code
is never part of this repository: name its folder in ``CONTRASTKIT_TS2VEC_OFFICIAL``.

Data as the official loaders prepare it: univariate (UCR) sets standardised with one mean and
standard deviation of the training values, except the sets the official UCR loader leaves as
they are (among aeon's: PickupGestureWiimoteZ); multivariate (UEA) sets standardised per
channel with training statistics. Variable-length series are NaN-padded. The 1-NN Euclidean
floor is computed on the same arrays (NaN padding read as 0 for it alone).

Seeds: ours ``TS2Vec(seed=s)``; the official model seeded as its train.py does (Python ``s``,
NumPy ``s + 1``, torch ``s + 2``). Per-seed numbers are not comparable between the two (their
random draws differ); the means, ranges and the difference of the means are.

    CONTRASTKIT_TS2VEC_OFFICIAL=/path/to/ts2vec OMP_NUM_THREADS=1 python benchmarks/ts2vec_vs_official.py \\
        --seeds 0 1 2 3 4 --out runs/ts2vec_vs_official.jsonl

Runs already in ``--out`` are not run again (the full comparison takes hours; it can be
stopped and restarted). ``--sets`` picks sets; ``--table-only`` prints the table of ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.evaluation.ucr import one_nn_euclidean, svm_protocol
from contrastkit.modalities.timeseries.sources import bundled_dataset_names, load_bundled
from contrastkit.modalities.timeseries.ts2vec import TS2Vec

OFFICIAL_ENV = "CONTRASTKIT_TS2VEC_OFFICIAL"
SETTINGS = dict(batch_size=8, lr=0.001, output_dims=320, max_train_length=3000)
# Of aeon's bundled univariate sets, those the official UCR loader does not standardise.
OFFICIAL_UNNORMALISED = {"PickupGestureWiimoteZ"}
# "More than 1 point below beyond the seeds' spread": the difference of the means plus two of
# its standard errors still under -1 point.
MARGIN = 0.01


def prepared(name: str) -> dict:
    """Train/test arrays (N, C, T) float64 as the official loaders would give them, and labels."""
    train, test = load_bundled(name, "train"), load_bundled(name, "test")
    length = max(train.x.shape[2], test.x.shape[2])
    x_train, x_test = (np.pad(s.x.astype(np.float64), ((0, 0), (0, 0), (0, length - s.x.shape[2])),
                              constant_values=np.nan) for s in (train, test))
    if train.n_channels > 1:  # UEA: per-channel statistics
        mean = np.nanmean(x_train, axis=(0, 2), keepdims=True)
        std = np.nanstd(x_train, axis=(0, 2), keepdims=True)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    elif name not in OFFICIAL_UNNORMALISED:
        mean, std = np.nanmean(x_train), np.nanstd(x_train)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return {"x_train": x_train, "y_train": train.y, "x_test": x_test, "y_test": test.y,
            "variable_length": bool(np.isnan(x_train).any() or np.isnan(x_test).any())}


def timed(fit) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fit()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_ours(data: dict, seed: int) -> dict:
    model = TS2Vec(input_dims=data["x_train"].shape[1], seed=seed, **SETTINGS)
    wall, cpu = timed(lambda: model.fit(data["x_train"].astype(np.float32)))
    train_repr, test_repr = (model.encode(data[k].astype(np.float32)) for k in ("x_train", "x_test"))
    return {"acc": svm_protocol(train_repr, data["y_train"], test_repr, data["y_test"]),
            "train_seconds": wall, "train_cpu_seconds": cpu, "n_iters": model.n_iters}


def run_official(official, data: dict, seed: int) -> dict:
    random.seed(seed)
    np.random.seed(seed + 1)
    torch.manual_seed(seed + 2)
    x_train, x_test = (np.ascontiguousarray(data[k].transpose(0, 2, 1)) for k in ("x_train", "x_test"))
    model = official.TS2Vec(input_dims=x_train.shape[2], device="cpu", **SETTINGS)
    wall, cpu = timed(lambda: model.fit(x_train))
    train_repr, test_repr = (model.encode(x, encoding_window="full_series") for x in (x_train, x_test))
    return {"acc": svm_protocol(train_repr, data["y_train"], test_repr, data["y_test"]),
            "train_seconds": wall, "train_cpu_seconds": cpu, "n_iters": model.n_iters}


def one_nn_floor(data: dict) -> float:
    return one_nn_euclidean(np.nan_to_num(data["x_train"]), data["y_train"], np.nan_to_num(data["x_test"]),
                            data["y_test"])


def import_official():
    folder = os.environ.get(OFFICIAL_ENV)
    if not folder or not (Path(folder) / "ts2vec.py").is_file():
        raise SystemExit(f"Set {OFFICIAL_ENV} to the folder of the official TS2Vec code (holding ts2vec.py).")
    sys.path.insert(0, str(Path(folder).resolve()))
    import ts2vec  # noqa: PLC0415  (the official module)

    return ts2vec


def read_runs(path: Path | None) -> list[dict]:
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_table(runs: list[dict]) -> None:
    header = (f"{'set':<22} {'n':>2} {'1-NN':>6} {'ours mean [min-max]':>22} {'official mean [min-max]':>24} "
              f"{'diff':>7} {'se':>6} {'ours s':>7} {'off. s':>7}  verdict")
    print(header)
    print("-" * len(header))
    for name in dict.fromkeys(run["set"] for run in runs):
        by_impl = {impl: [r for r in runs if r["set"] == name and r["impl"] == impl] for impl in ("ours", "official")}
        if not all(by_impl.values()):
            continue
        accs = {impl: np.array([r["acc"] for r in rs]) for impl, rs in by_impl.items()}
        seconds = {impl: np.mean([r["train_seconds"] for r in rs]) for impl, rs in by_impl.items()}
        diff = accs["ours"].mean() - accs["official"].mean()
        se = np.sqrt(sum(a.var(ddof=1) / a.size if a.size > 1 else 0.0 for a in accs.values()))
        verdict = "BELOW" if diff + 2 * se < -MARGIN else "ok"
        cells = {impl: f"{a.mean():.4f} [{a.min():.3f}-{a.max():.3f}]" for impl, a in accs.items()}
        floor = by_impl["ours"][0]["one_nn"]
        print(f"{name:<22} {min(a.size for a in accs.values()):>2} {floor:>6.3f} {cells['ours']:>22} "
              f"{cells['official']:>24} {diff:>+7.4f} {se:>6.4f} {seconds['ours']:>7.1f} "
              f"{seconds['official']:>7.1f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=None, help="default: every set aeon bundles")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, for both")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of the runs (read first, appended)")
    parser.add_argument("--impls", nargs="+", choices=["ours", "official"], default=["ours", "official"],
                        help="which implementations to run (default both; to share a set's seeds between processes)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    runs = read_runs(args.out)
    if not args.table_only:
        torch.set_num_threads(args.threads)
        official = import_official()
        done = {(r["set"], r["seed"], r["impl"]) for r in runs}
        for name in args.sets or bundled_dataset_names():
            data = prepared(name)
            floor = one_nn_floor(data)
            for seed in args.seeds:
                for impl, run in (("ours", run_ours), ("official", lambda d, s: run_official(official, d, s))):
                    if (name, seed, impl) in done or impl not in args.impls:
                        continue
                    result = {"set": name, "seed": seed, "impl": impl, **run(data, seed), "one_nn": floor,
                              "variable_length": data["variable_length"], "threads": torch.get_num_threads()}
                    print(json.dumps(result), flush=True)
                    runs.append(result)
                    if args.out is not None:
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        with args.out.open("a") as handle:
                            handle.write(json.dumps(result) + "\n")
    print()
    print_table([r for r in runs if args.sets is None or r["set"] in args.sets])


if __name__ == "__main__":
    main()
