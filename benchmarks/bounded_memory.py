"""Large batches in bounded memory (issue 30): SimCLR at batch 4096 with and without GradCache.

For each configuration a fresh process builds SimCLR (ResNet-18 at width 1/8, CIFAR stem,
32x32 cifar10-test from $CONTRASTKIT_DATA, channels-last as ``contrastkit fit`` trains one
process), takes one batch of ``--batch-size`` images (2 x that many views) and times ``--steps``
training steps (views, forward, loss, backward, SGD step; outside Lightning). It reports the
process's peak resident memory (VmHWM: what the machine had to hold, Python, torch and the data
included), the resident memory before the first step, and the seconds of each step.

    whole      one backbone pass over all 2B views (the plain step)
    chunk N    --grad-cache-chunk N: GradCache, N views per backbone pass (BatchNorm over chunks)

Usage (1 thread; about 3 minutes on an idle core)::

    OMP_NUM_THREADS=1 python benchmarks/bounded_memory.py --batch-size 4096 --chunks whole 512 256

Prints a markdown table and the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time


def resident_gib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmHWM: peak, VmRSS: now), in GiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} is not in /proc/self/status (Linux only)")


def worker(args: argparse.Namespace) -> None:
    """One configuration in this (fresh) process; prints one JSON line."""
    import torch

    from contrastkit.engine.optim import build_optimizer
    from contrastkit.modalities.image.config import FitConfig, scaled_lr
    from contrastkit.modalities.image.methods import build_method
    from contrastkit.modalities.image.methods.parts import DataInfo
    from contrastkit.modalities.image.sources import open_image_source
    from contrastkit.modalities.image.training.module import use_channels_last

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = open_image_source(args.data)
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))
    images = source.images[order[: args.batch_size]].contiguous(memory_format=torch.channels_last)
    mean, std = source.channel_mean_std()
    data = DataInfo(channels=source.channels, image_size=source.image_size[0], mean=mean, std=std,
                    num_samples=len(source))
    del source
    chunk = None if args.chunk == "whole" else int(args.chunk)
    config = FitConfig(method="simclr", backbone="resnet18", width=args.width, batch_size=args.batch_size,
                       grad_cache_chunk=chunk)
    method = use_channels_last(build_method("simclr", config, data).train())
    optimizer = build_optimizer("sgd", method, scaled_lr(config, args.batch_size), config.weight_decay,
                                config.momentum)
    batch = {"image": images, "index": torch.arange(len(images)), "label": torch.full((len(images),), -1)}
    before = resident_gib("VmRSS")
    seconds, losses = [], []
    for step in range(args.steps):
        torch.manual_seed(step)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = method.training_loss(batch)[0]
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
        losses.append(float(loss.detach()))
    print(json.dumps({"chunk": args.chunk, "peak_gib": resident_gib("VmHWM"), "before_gib": before,
                      "seconds": seconds, "losses": losses, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}), flush=True)


def run_configuration(chunk: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--chunk", chunk,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--width", str(args.width),
               "--data", args.data, "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        reason = f"exit {done.returncode}" + (" (killed: out of memory?)" if done.returncode < 0 else "")
        return {"chunk": chunk, "error": reason + " " + done.stderr.strip()[-300:]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=4096, help="images per step (2x as many views)")
    parser.add_argument("--chunks", nargs="+", default=["whole", "512", "256"],
                        help="'whole' and/or --grad-cache-chunk values (views per backbone pass)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--data", default="cifar10-test")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", default="whole", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for chunk in args.chunks:
        row = run_configuration(chunk, args)
        print(row, flush=True)
        rows.append(row)
    print(f"\nSimCLR, batch {args.batch_size} ({2 * args.batch_size} views), ResNet-18 width {args.width}, "
          f"32x32 {args.data}, {args.threads} thread(s), {args.steps} steps per configuration\n")
    print("| configuration | peak RSS GiB | RSS before step 1 GiB | s/step (each step) | loss (each step) |")
    print("|---|---:|---:|---|---|")
    for row in rows:
        name = "whole batch" if row["chunk"] == "whole" else f"--grad-cache-chunk {row['chunk']}"
        if "error" in row:
            print(f"| {name} | failed: {row['error']} | | | |")
            continue
        print(f"| {name} | {row['peak_gib']:.2f} | {row['before_gib']:.2f} | "
              f"{', '.join(f'{s:.1f}' for s in row['seconds'])} | {', '.join(f'{v:.4f}' for v in row['losses'])} |")
    print("\nCommand: OMP_NUM_THREADS=" + str(args.threads) + " python "
          + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
