"""`contrastkit fit` from memory vs streamed from shards: training throughput, epoch time, peak memory.

The same run (SimCLR, small CNN, batches of 256, no probe, no baselines) three times, each in its
own process so that its peak RSS (``ru_maxrss``) is its own:

- ``memory``: ``--data cifar10-test`` decoded into RAM (the default path);
- ``shards``: ``--data shards:DIR`` with the default shard-block order (sequential reads);
- ``global``: ``--data shards:DIR --stream-order global`` (the in-memory order; random reads).

Reported: samples/s inside training steps (``summary.json``'s ``samples_per_second``, data
loading excluded), the training epochs' wall time (data loading included), the time from start to
the end of ``fit``, and peak RSS. The shard folder is written once beforehand (not timed).

``--loader-only`` measures the data path alone instead: one epoch of each run's training
DataLoader (batches of uint8 images, no model), samples/s and peak RSS, in the same three forms.

Usage::

    python benchmarks/bench_streaming_fit.py --workdir runs/bench_stream --limit 5000 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUN = r"""
import json, resource, sys, time
started = time.perf_counter()
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.training.run import fit
options = json.loads(sys.argv[1])
summary = fit(FitConfig(**options))
print(json.dumps({"samples_per_second": summary["samples_per_second"], "epoch_seconds": summary["seconds"],
                  "total_seconds": round(time.perf_counter() - started, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""

LOADER = r"""
import json, resource, sys, time
from types import SimpleNamespace
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.training.run_data import open_run_data
options = json.loads(sys.argv[1])
started = time.perf_counter()
data = open_run_data(FitConfig(**options))
opened = time.perf_counter() - started
data.datamodule.trainer = SimpleNamespace(global_rank=0, world_size=1)
loader = data.datamodule.train_dataloader()
loader.batch_sampler.set_epoch(0)
started, seen = time.perf_counter(), 0
for batch in loader:
    seen += len(batch["index"])
seconds = time.perf_counter() - started
print(json.dumps({"open_seconds": round(opened, 2), "epoch_seconds": round(seconds, 3),
                  "samples_per_second": round(seen / seconds),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/bench_streaming_fit")
    parser.add_argument("--data", default="cifar10-test")
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--loader-only", action="store_true", help="time the training DataLoader alone")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    from contrastkit.modalities.image.sources.shards import shard_image_source

    shard_image_source(args.data, workdir / "shards", shard_size=args.shard_size)
    common = {"limit": args.limit, "holdout": 0.0, "epochs": args.epochs, "batch_size": args.batch_size,
              "backbone": "small-cnn", "width": 0.25, "probe_every": 0, "baselines": False, "report": False,
              "seed": 0}
    runs = {
        "memory": {"data": args.data},
        "shards": {"data": f"shards:{workdir / 'shards'}", "stream_order": "shards"},
        "global": {"data": f"shards:{workdir / 'shards'}", "stream_order": "global"},
    }
    results = {}
    for name, options in runs.items():
        options = {**common, **options, "out": str(workdir / name)}
        script = LOADER if args.loader_only else RUN
        done = subprocess.run([sys.executable, "-c", script, json.dumps(options)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    print(json.dumps({"args": vars(args), "results": results,
                      "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


if __name__ == "__main__":
    main()
