"""The DCL paper's claim (Yeh et al. 2022): decoupling the positive from the denominator makes
contrastive learning less sensitive to the batch size than NT-Xent.

SimCLR with `--objective infonce` and `--objective dcl` at batch sizes 32, 64 and 256 on
cifar10-test (8,000 images pretrain / 2,000 held out, stratified), the same epochs and backbone for
all; figure of merit: weighted kNN top-1 on the held-out images. Runs are sequential (one process at a
time) and each writes a normal run directory under --out.

    python benchmarks/dcl_batch_size.py --epochs 2 --width 0.125 --parallel 2 --out runs/dcl-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10-test")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch-sizes", default="32,64,256")
    parser.add_argument("--objectives", default="infonce,dcl")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs at a time (each with one torch thread when > 1)")
    args = parser.parse_args()

    configs = [(objective, int(b)) for b in args.batch_sizes.split(",") for objective in args.objectives.split(",")]
    pending = [(o, b) for o, b in configs if not (args.out / f"{o}-b{b}" / "summary.json").exists()]
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if args.parallel > 1 else {})}
    running: list[subprocess.Popen] = []
    for objective, batch_size in pending:  # finished runs (summary.json present) are kept
        if len(running) >= args.parallel:
            _wait_first(running)
        running.append(subprocess.Popen(
            [sys.executable, "-m", "contrastkit.cli", "fit", "--data", args.data, "--objective", objective,
             "--batch-size", str(batch_size), "--temperature", str(args.temperature), "--epochs", str(args.epochs),
             "--width", str(args.width), "--seed", str(args.seed), "--no-report", "--no-baselines",
             "--out", str(args.out / f"{objective}-b{batch_size}")], env=env))
    while running:
        _wait_first(running)

    rows = []
    for objective, batch_size in configs:
        summary = json.loads((args.out / f"{objective}-b{batch_size}" / "summary.json").read_text())
        rows.append((objective, batch_size, summary["knn_top1"], summary["linear_top1"],
                     summary["samples_per_second"]))

    print(f"\nSimCLR on {args.data}, {args.epochs} epochs, ResNet-18 x{args.width}, T={args.temperature}, "
          f"seed {args.seed}")
    print("| objective | batch | kNN top-1 (%) | linear top-1 (%) | images/s |")
    print("|---|---:|---:|---:|---:|")
    for objective, batch_size, knn, linear, speed in rows:
        print(f"| {objective} | {batch_size} | {100 * knn:.1f} | {100 * linear:.1f} | {speed:.0f} |")
    by = {(o, b): knn for o, b, knn, _, _ in rows}
    sizes = sorted({b for _, b, _, _, _ in rows})
    for objective in args.objectives.split(","):
        spread = max(by[objective, b] for b in sizes) - min(by[objective, b] for b in sizes)
        print(f"{objective}: kNN spread across batch sizes {100 * spread:.1f} points")


def _wait_first(running: list[subprocess.Popen]) -> None:
    while True:
        for process in running:
            if process.poll() is not None:
                running.remove(process)
                if process.returncode:
                    raise SystemExit(f"a run failed: {' '.join(process.args)}")
                return
        time.sleep(2)


if __name__ == "__main__":
    main()
