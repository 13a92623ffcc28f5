"""The DCL paper's claim (Yeh et al. 2022): decoupling the positive from the denominator makes
contrastive learning less sensitive to the batch size than NT-Xent.

SimCLR with `--objective infonce` and `--objective dcl` at batch sizes 32, 64 and 256 on
cifar10-test (8,000 images pretrain / 2,000 held out, stratified), the same epochs and backbone for
all; figure of merit: weighted kNN top-1 on the held-out images. Runs are sequential (one process at a
time) and each writes a normal run directory under --out.

    python benchmarks/dcl_batch_size.py --epochs 3 --width 0.125 --out /tmp/dcl-bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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
    args = parser.parse_args()

    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for objective in args.objectives.split(","):
            run_dir = args.out / f"{objective}-b{batch_size}"
            if not (run_dir / "summary.json").exists():
                subprocess.run([sys.executable, "-m", "contrastkit.cli", "fit", "--data", args.data,
                                "--objective", objective, "--batch-size", str(batch_size),
                                "--temperature", str(args.temperature), "--epochs", str(args.epochs),
                                "--width", str(args.width), "--seed", str(args.seed), "--no-report",
                                "--out", str(run_dir)], check=True)
            summary = json.loads((run_dir / "summary.json").read_text())
            rows.append((objective, batch_size, summary["knn_top1"], summary["linear_top1"],
                         summary["samples_per_second"]))
            print(f"{objective:8s} batch {batch_size:4d}  kNN {100 * rows[-1][2]:.1f}", flush=True)

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


if __name__ == "__main__":
    main()
