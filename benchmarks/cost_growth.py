"""How cost grows (issue 30): epoch time and peak memory of ``contrastkit fit`` against the number of
images (10^3 to 10^6) and against the batch size, with a log-log plot.

Data: CIFAR-10 (``cifar10-test``, 10,000 images) replicated 100 times into one shard folder of
10^6 images (``contrastkit shard``'s format, 10,000 per shard; **replicated, not 10^6 distinct
images**: the cost of a step does not depend on which images it reads). Each size N streams the
first N images of that folder (``--data shards:DIR --limit N``), so every run reads the same way.

Every run is SimCLR on the CIFAR ResNet-18 at width 1/8, channels-last (the default), no probe, no
baselines, no report, in its own process at ``--threads`` threads, so that its peak memory
(``ru_maxrss``; no DataLoader workers, so the process is the whole run) is its own. Measured per run:

- ``open s``: from the process start to the first training step (imports, opening the data,
  building the model);
- ``CPU ms / image``: the process's CPU time inside training steps over the images they saw, from
  ``--steps`` steps (the first ``--warmup`` excluded): a CPU-time figure moves less than wall time
  on a shared machine;
- ``step s``: wall time per step inside training steps (``summary.json``);
- ``epoch s``: the training steps of one epoch; for N up to ``--full-epoch-up-to`` a whole epoch
  measured, above **extrapolated** as ceil(N / batch) x step s, and said so in the table (open s
  is paid once per run, not per epoch);
- peak RSS.

Batch sizes (``--batch-sizes``) run at N = ``--batch-size-images`` (100,000: an epoch holds every run's
``--warmup`` + ``--steps`` steps even at batch 4096) for ``--steps`` timed steps each; the largest batch also runs with ``--grad-cache-chunk`` (the bounded-memory path),
whose gradients equal the whole batch's (tests/modalities/image/test_grad_cache_images.py).

Usage, from the repository root (the figures and plot of docs/benchmarks.md)::

    python benchmarks/cost_growth.py --workdir runs/cost-growth --plot docs/cost_growth.png

The shard folder (3.1 GB) is written once into ``--workdir`` and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

# One run in its own process: CPU time per training step from a callback, peak RSS at the end.
RUN = r"""
import json, resource, sys, time
started = time.perf_counter()
import torch
from lightning.pytorch.callbacks import Callback
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.training.run import fit
options, warmup = json.loads(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))

class StepClock(Callback):
    def __init__(self):
        self.first_step, self.cpu, self.images, self.steps, self._start = None, 0.0, 0, 0, None
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.first_step is None:
            self.first_step = time.perf_counter() - started
        self._start = time.process_time()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps += 1
        if self.steps > warmup:
            self.cpu += time.process_time() - self._start
            self.images += len(batch["index"])

clock = StepClock()
import contrastkit.modalities.image.training.run as image_run
engine_train = image_run.train
def train_with_clock(*args, callbacks=(), **kwargs):  # the benchmark's clock beside the run's callbacks
    return engine_train(*args, callbacks=[*callbacks, clock], **kwargs)
image_run.train = train_with_clock
summary = fit(FitConfig(**options))
print(json.dumps({"open_seconds": clock.first_step, "cpu_ms_per_image": 1e3 * clock.cpu / max(clock.images, 1),
                  "steps": clock.steps, "train_seconds": summary["train_seconds"],
                  "samples_per_second": summary["samples_per_second"],
                  "total_seconds": time.perf_counter() - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SIZES = (1_000, 10_000, 100_000, 1_000_000)
BATCH_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
REPLICAS = 100


def replicated_shards(workdir: Path) -> Path:
    """cifar10-test replicated ``REPLICAS`` times into ``workdir/cifar-x100`` (written once)."""
    from contrastkit.core.paths import data_root
    from contrastkit.modalities.image.sources import open_image_source
    from contrastkit.modalities.image.sources.shards import write_shards

    folder = workdir / "cifar-x100"
    if (folder / "index.json").exists():
        return folder
    source = open_image_source(str(data_root() / "cifar10-test"))
    images, labels = source.images.numpy(), source.labels.numpy()
    chunks = ((images, labels) for _ in range(REPLICAS))
    write_shards(chunks, folder, REPLICAS * len(images), images.shape[1:], shard_size=len(images), labelled=True,
                 name="cifar10-test x100")
    return folder


def run(options: dict, args) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(options), str(args.warmup), str(args.threads)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({options}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args) -> list[dict]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shards = replicated_shards(workdir)
    results_path = workdir / "results.jsonl"
    done = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    seen = {(r["axis"], r["images"], r["batch_size"], r["grad_cache_chunk"]) for r in done}
    common = dict(method="simclr", backbone="resnet18", width=0.125, holdout=0.0, epochs=1, probe_every=0,
                  baselines=False, report=False, seed=0, data=f"shards:{shards}")
    plan = [("images", n, args.batch_size, None) for n in args.sizes]
    plan += [("batch", args.batch_size_images, b, None) for b in args.batch_sizes]
    plan.append(("batch", args.batch_size_images, max(args.batch_sizes), args.grad_cache_chunk))
    for axis, images, batch_size, chunk in plan:
        if (axis, images, batch_size, chunk) in seen:
            continue
        full_epoch = axis == "images" and images <= args.full_epoch_up_to
        steps = None if full_epoch else args.steps + args.warmup
        options = {**common, "limit": images, "batch_size": batch_size, "max_steps": steps,
                   "grad_cache_chunk": chunk, "out": str(workdir / f"{axis}-{images}-{batch_size}-{chunk}")}
        figures = run(options, args)
        step_seconds = figures["train_seconds"] / figures["steps"]
        epoch = figures["train_seconds"] if full_epoch else math.ceil(images / batch_size) * step_seconds
        row = {"axis": axis, "images": images, "batch_size": batch_size, "grad_cache_chunk": chunk,
               "step_seconds": step_seconds, "epoch_seconds": epoch,
               "epoch": "measured" if full_epoch else "extrapolated", **figures}
        with results_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        print(row, flush=True)
    return done


def print_tables(rows: list[dict], args) -> None:
    print(f"\nSimCLR, CIFAR ResNet-18 x1/8, {args.threads} thread(s); images: replicated CIFAR-10 shards\n")
    print(f"Against the number of images (batch {args.batch_size}):\n")
    print("| images | open s | CPU ms / image | step s | epoch s | epoch | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---|---:|")
    for r in sorted((r for r in rows if r["axis"] == "images"), key=lambda r: r["images"]):
        print(f"| {r['images']:,} | {r['open_seconds']:.1f} | {r['cpu_ms_per_image']:.2f} | {r['step_seconds']:.2f} | "
              f"{r['epoch_seconds']:,.0f} | {r['epoch']} | {r['peak_rss_mb']:,.0f} |")
    print(f"\nAgainst the batch size ({args.batch_size_images:,} images, {args.steps} timed steps):\n")
    print("| batch | path | CPU ms / image | step s | images/s | peak RSS MB |")
    print("|---:|---|---:|---:|---:|---:|")
    batch_rows = [r for r in rows if r["axis"] == "batch" and r["images"] == args.batch_size_images]
    for r in sorted(batch_rows, key=lambda r: (r["batch_size"], r["grad_cache_chunk"] or 0)):
        path = f"GradCache, chunk {r['grad_cache_chunk']}" if r["grad_cache_chunk"] else "whole batch"
        print(f"| {r['batch_size']:,} | {path} | {r['cpu_ms_per_image']:.2f} | {r['step_seconds']:.2f} | "
              f"{r['samples_per_second']:.0f} | {r['peak_rss_mb']:,.0f} |")
    for axis, key in (("images", "images"), ("batch", "batch_size")):
        points = [r for r in (rows if axis == "images" else batch_rows) if r["axis"] == axis and not r["grad_cache_chunk"]]
        if len(points) >= 2:
            x = np.log10([r[key] for r in points])
            time_slope = np.polyfit(x, np.log10([r["epoch_seconds" if axis == "images" else "step_seconds"]
                                                for r in points]), 1)[0]
            memory_slope = np.polyfit(x, np.log10([r["peak_rss_mb"] for r in points]), 1)[0]
            measure_name = "epoch time" if axis == "images" else "step time"
            print(f"\nlog-log slopes against {key}: {measure_name} {time_slope:.2f}, peak memory {memory_slope:.2f}")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = sorted((r for r in rows if r["axis"] == "images"), key=lambda r: r["images"])
    batches = sorted((r for r in rows if r["axis"] == "batch" and not r["grad_cache_chunk"]),
                     key=lambda r: r["batch_size"])
    for axis, points, key, time_key, label in ((left, sizes, "images", "epoch_seconds", "epoch time (s)"),
                                               (right, batches, "batch_size", "step_seconds", "step time (s)")):
        x = [r[key] for r in points]
        axis.loglog(x, [r[time_key] for r in points], "o-", label=label)
        axis.loglog(x, [r["peak_rss_mb"] for r in points], "s--", label="peak RSS (MB)")
        axis.set_xlabel("images" if key == "images" else "batch size")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    for r in rows:
        if r["axis"] == "batch" and r["grad_cache_chunk"]:
            right.loglog([r["batch_size"]], [r["peak_rss_mb"]], "k^", label=f"GradCache chunk {r['grad_cache_chunk']}")
    right.legend()
    left.set_title("epoch (batch 256; > 10^4 extrapolated)")
    right.set_title("one step")
    fig.suptitle("contrastkit fit, SimCLR, ResNet-18 x1/8, CIFAR 32 px")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/cost-growth")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batch-size-images", type=int, default=100_000,
                        help="images of the batch-size runs: enough for --steps + --warmup steps at the largest batch")
    parser.add_argument("--grad-cache-chunk", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--full-epoch-up-to", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default=None, help="write the log-log plot here (PNG)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if args.table_only:
        path = Path(args.workdir) / "results.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        rows = measure(args)
    print_tables(rows, args)
    if args.plot:
        plot([r for r in rows if r["axis"] == "images" or r["images"] == args.batch_size_images], args.plot)


if __name__ == "__main__":
    main()
