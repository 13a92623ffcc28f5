"""Forward + backward time and peak memory of contrastive objectives, ours beside the reference libraries.

Each (implementation, batch size) runs in its own subprocess, so that its peak memory is the rise
of that process's peak resident set size (``ru_maxrss``) during one forward + backward pass; torch
allocates outside Python's heap, which tracemalloc cannot see. Time is the median of
``--repeats`` further passes.

Implementations:
    ours-ntxent           contrastkit ``ntxent`` (whole (2N)^2 similarity matrix)
    ours-ntxent-chunked   contrastkit ``ntxent`` with ``chunk_size`` (O(chunk x 2N) memory)
    ours-dcl              contrastkit ``dcl``
    lightly-ntxent        lightly.loss.NTXentLoss          (needs --anchors-venv)
    lightly-dcl           lightly.loss.DCLLoss             (needs --anchors-venv)
    pml-ntxent            pytorch_metric_learning NTXentLoss with the two views as pairs (needs --anchors-venv)

The reference libraries are imported from another virtual environment given with
``--anchors-venv PATH`` (its site-packages is appended to ``sys.path``, so this environment's torch
is the one used); an implementation that does not import is skipped with a note.

Usage (the big sizes take minutes on a shared CPU; run them once)::

    python benchmarks/bench_objectives.py --sizes 256 512 1024 --anchors-venv /work/anchors-venv
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

OURS = ["ours-ntxent", "ours-ntxent-chunked", "ours-dcl"]
ANCHORS = ["lightly-ntxent", "lightly-dcl", "pml-ntxent"]
TEMPERATURE = 0.1


def _add_venv(venv: str | None) -> None:
    if not venv:
        return
    for site in sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))):
        if site not in sys.path:
            sys.path.append(site)  # appended: this environment's torch stays first


def _build(impl: str, chunk_size: int) -> Callable:
    import torch

    if impl.startswith("ours-"):
        from contrastkit import objectives

        if impl == "ours-ntxent":
            return objectives.get("ntxent", temperature=TEMPERATURE)
        if impl == "ours-ntxent-chunked":
            return objectives.get("ntxent", temperature=TEMPERATURE, chunk_size=chunk_size)
        return objectives.get("dcl", temperature=TEMPERATURE)
    if impl == "lightly-ntxent":
        from lightly.loss import NTXentLoss

        return NTXentLoss(temperature=TEMPERATURE)
    if impl == "lightly-dcl":
        from lightly.loss import DCLLoss

        return DCLLoss(temperature=TEMPERATURE)
    if impl == "pml-ntxent":
        from pytorch_metric_learning.losses import NTXentLoss

        loss = NTXentLoss(temperature=TEMPERATURE)

        def pml(z_a, z_b):
            n = z_a.shape[0]
            labels = torch.arange(n).repeat(2)  # the two views of sample i share label i
            return loss(torch.cat([z_a, z_b]), labels)

        return pml
    raise ValueError(f"unknown implementation {impl}")


def _max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def worker(impl: str, batch: int, dim: int, repeats: int, chunk_size: int, venv: str | None) -> dict:
    """Run in a fresh process: one measured pass for memory, then ``repeats`` timed passes."""
    import torch

    _add_venv(venv)
    try:
        objective = _build(impl, chunk_size)
    except ImportError as error:
        return {"skipped": f"{type(error).__name__}: {error}"}
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(batch, dim, generator=generator, requires_grad=True)
    z_b = torch.randn(batch, dim, generator=generator, requires_grad=True)

    def step() -> float:
        z_a.grad = z_b.grad = None
        loss = objective(z_a, z_b)
        loss.backward()
        return float(loss)

    before = _max_rss_bytes()
    loss = step()
    peak = _max_rss_bytes() - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_bytes": peak, "loss": loss}


def _run_one(args: argparse.Namespace, impl: str, batch: int) -> dict:
    command = [
        sys.executable, __file__, "--worker", impl, str(batch),
        "--dim", str(args.dim), "--repeats", str(args.repeats), "--chunk-size", str(args.chunk_size),
    ]  # fmt: skip
    if args.anchors_venv:
        command += ["--anchors-venv", args.anchors_venv]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"skipped": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impls", nargs="+", default=OURS + ANCHORS, choices=OURS + ANCHORS)
    parser.add_argument("--anchors-venv", default=None, help="virtual environment with lightly / pytorch-metric-learning")
    parser.add_argument(
        "--pml-max-batch", type=int, default=1024,
        help="largest batch for pml-ntxent, which materialises every pair (2 GiB already at batch 256)",
    )  # fmt: skip
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        impl, batch = args.worker
        print(json.dumps(worker(impl, int(batch), args.dim, args.repeats, args.chunk_size, args.anchors_venv)))
        return

    impls = [i for i in args.impls if i in OURS or args.anchors_venv]
    for missing in sorted(set(args.impls) - set(impls)):
        print(f"note: {missing} skipped (no --anchors-venv given)")
    print(f"forward+backward, dim {args.dim}, temperature {TEMPERATURE}, {args.threads} threads, "
          f"median of {args.repeats}; memory = rise of peak RSS in a fresh process")  # fmt: skip
    header = f"{'batch':>6}  {'implementation':<20} {'time (ms)':>10} {'peak MiB':>9} {'loss':>9}"
    print(header)
    print("-" * len(header))
    skipped: dict[str, str] = {}
    for batch in args.sizes:
        for impl in impls:
            if impl in skipped:
                continue
            if impl == "pml-ntxent" and batch > args.pml_max_batch:
                print(f"note: pml-ntxent skipped at batch {batch} (> --pml-max-batch {args.pml_max_batch})")
                continue
            result = _run_one(args, impl, batch)
            if "skipped" in result:
                skipped[impl] = result["skipped"]
                print(f"note: {impl} skipped: {result['skipped']}")
                continue
            print(
                f"{batch:>6}  {impl:<20} {1e3 * result['seconds']:>10.1f} "
                f"{result['peak_bytes'] / 2**20:>9.1f} {result['loss']:>9.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
