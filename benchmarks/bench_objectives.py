"""Forward + backward time and peak memory of contrastive objectives, ours beside the reference libraries.

One run does three things, all on the same random float32 inputs (``z_a``, ``z_b`` of shape
(N, dim), temperature 0.1):

1. **Agreement.** The implementations are evaluated on one batch in float64 and their losses and
   input gradients compared: contrastkit ``ntxent`` == LightlySSL ``NTXentLoss`` ==
   pytorch-metric-learning ``NTXentLoss`` (views as pairs of a label); contrastkit ``dcl`` vs
   LightlySSL ``DCLLoss`` (and ``dclw`` vs ``DCLWLoss``); chunked == whole. LightlySSL's DCL returns
   ``0.5 * (loss_0 + loss_1)``, the mean of the two directions, which is our mean over the 2N
   anchors, so the expected loss ratio is 1 (a sum of the two directions would give 2).
2. **Peak memory**, one fresh subprocess per (implementation, batch size): after a warm-up pass
   at batch 8 (lazy initialisation of kernels and thread pools is not the loss's memory), the
   process's resident-set high-water mark is reset (``echo 5 > /proc/self/clear_refs``) and the
   figure is ``VmHWM`` after one forward + backward minus ``VmRSS`` before it, from
   ``/proc/self/status``. The inputs are allocated before the reset; their gradients are
   counted. Why RSS: torch's CPU allocator takes memory from ``malloc``/``mmap``, outside Python's
   heap, so ``tracemalloc`` sees none of it; the RSS sees every allocation that is touched,
   whoever makes it, and resetting the high-water mark in a fresh process isolates one pass.
   (Where ``clear_refs`` is not writable the script falls back to the rise of ``ru_maxrss``, which
   is exact only if the pass's peak exceeds every earlier peak of the process.)
3. **Time**, one subprocess per batch size holding every implementation: one warm-up pass each,
   then ``--repeats`` rounds, each timing forward + backward of every implementation in a
   rotated order (so a burst of load from other processes falls on all of them alike); a sample
   is the mean of enough back-to-back passes to last 0.25 s of CPU time. Reported: the median
   over rounds of the process's CPU time per pass (the work done; on a shared machine it moves
   far less than wall time) and of the wall-clock time, with its min-max.

Implementations (``--impls``):
    ours-ntxent           contrastkit ``ntxent`` (the (2N)^2 similarities at once)
    ours-ntxent-chunked   contrastkit ``ntxent`` with ``chunk_size`` (O(chunk x 2N) memory, exact)
    ours-dcl              contrastkit ``dcl``
    ours-dcl-chunked      contrastkit ``dcl`` with ``chunk_size``
    lightly-ntxent        lightly.loss.NTXentLoss
    lightly-dcl           lightly.loss.DCLLoss
    pml-ntxent            pytorch_metric_learning.losses.NTXentLoss, labels = sample index; it
                          materialises (2N) x (2N)(2N - 2) pair tables (about 2 GiB at N = 256),
                          so it runs only up to ``--pml-max-batch``.

It must run in an environment that has all three libraries; LightlySSL's ``lightly.loss`` imports
``torchvision.ops``, so that environment needs a torchvision matching its torch
(benchmarks/README.md, "anchor environment": the venv that ``$CONTRASTKIT_ANCHOR_ENV`` names,
built by ``make anchors``). A library that does not import is skipped with a note.

Usage (about half an hour on a shared 2-core machine with the defaults)::

    "$CONTRASTKIT_ANCHOR_ENV/bin/python" benchmarks/bench_objectives.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

OURS = ["ours-ntxent", "ours-ntxent-chunked", "ours-dcl", "ours-dcl-chunked"]
ANCHORS = ["lightly-ntxent", "lightly-dcl", "pml-ntxent"]
# (ours, anchor) pairs whose time and memory ratios are printed.
RATIOS = [
    ("ours-ntxent", "lightly-ntxent"),
    ("ours-ntxent-chunked", "lightly-ntxent"),
    ("ours-ntxent", "pml-ntxent"),
    ("ours-dcl", "lightly-dcl"),
    ("ours-dcl-chunked", "lightly-dcl"),
]
TEMPERATURE = 0.1
WARMUP_BATCH = 8
SAMPLE_SECONDS = 0.25  # CPU time of one timed sample (several passes at small batches)

Objective = Callable[..., object]


# ----------------------------------------------------------------------------- implementations


def build(impl: str, chunk_size: int) -> Objective:
    """The loss ``(z_a, z_b) -> scalar`` named ``impl`` (ImportError if its library is missing)."""
    import torch

    if impl.startswith("ours-"):
        from contrastkit import objectives

        name = "ntxent" if impl.startswith("ours-ntxent") else "dcl"
        chunk = chunk_size if impl.endswith("-chunked") else None
        return objectives.get(name, temperature=TEMPERATURE, chunk_size=chunk)
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
            # Rows i and N + i share label i: each anchor's one positive is its other view and
            # its negatives are the 2N - 2 rows of other samples, as in NT-Xent.
            labels = torch.arange(z_a.shape[0]).repeat(2)
            return loss(torch.cat([z_a, z_b]), labels)

        return pml
    raise ValueError(f"unknown implementation {impl}")


def inputs(batch: int, dim: int, dtype=None):
    """The benchmark's inputs: two (batch, dim) leaves drawn from N(0, 1) with seed 0."""
    import torch

    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(batch, dim, generator=generator, dtype=dtype or torch.float32)
    z_b = torch.randn(batch, dim, generator=generator, dtype=dtype or torch.float32)
    return z_a.requires_grad_(True), z_b.requires_grad_(True)


def step(objective: Objective, z_a, z_b) -> float:
    """One forward + backward pass; returns the loss."""
    z_a.grad = z_b.grad = None
    loss = objective(z_a, z_b)
    loss.backward()
    return float(loss.detach())


# ----------------------------------------------------------------------------- workers (subprocesses)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_worker(impl: str, batch: int, dim: int, chunk_size: int) -> dict:
    """In a fresh process: the rise of resident memory during one forward + backward pass."""
    try:
        objective = build(impl, chunk_size)
    except ImportError as error:
        return {"skipped": f"{type(error).__name__}: {error}"}
    step(objective, *inputs(WARMUP_BATCH, dim))
    z_a, z_b = inputs(batch, dim)
    if _reset_peak_rss():
        before = _status_kib("VmRSS")
        step(objective, z_a, z_b)
        peak_kib, method = _status_kib("VmHWM") - before, "VmHWM"
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step(objective, z_a, z_b)
        peak_kib, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "ru_maxrss"
    return {"peak_bytes": 1024 * peak_kib, "method": method}


def time_worker(impls: list[str], batch: int, dim: int, chunk_size: int, repeats: int) -> dict:
    """In one process: ``repeats`` rounds, each timing every implementation once in a rotated order.

    A round's sample for one implementation is the mean of ``k`` back-to-back passes, with ``k``
    chosen from the warm-up pass so that a sample lasts at least ``SAMPLE_SECONDS``: at small
    batches one pass takes milliseconds, below the scale of the scheduler's interruptions.
    """
    objectives, skipped = {}, {}
    for impl in impls:
        try:
            objectives[impl] = build(impl, chunk_size)
        except ImportError as error:
            skipped[impl] = f"{type(error).__name__}: {error}"
    z_a, z_b = inputs(batch, dim)
    passes = {}
    for impl, objective in objectives.items():  # warm-up
        start = time.process_time()
        step(objective, z_a, z_b)
        passes[impl] = max(1, math.ceil(SAMPLE_SECONDS / max(time.process_time() - start, 1e-6)))
    names = list(objectives)
    wall: dict[str, list[float]] = {impl: [] for impl in names}
    cpu: dict[str, list[float]] = {impl: [] for impl in names}
    for round_ in range(repeats):
        for impl in names[round_ % len(names) :] + names[: round_ % len(names)]:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(passes[impl]):
                step(objectives[impl], z_a, z_b)
            cpu[impl].append((time.process_time() - cpu_start) / passes[impl])
            wall[impl].append((time.perf_counter() - wall_start) / passes[impl])
    return {"wall": wall, "cpu": cpu, "passes": passes, "skipped": skipped}


def _run_worker(args: argparse.Namespace, payload: dict) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(payload)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return {"skipped": f"worker exit {done.returncode}: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker_main(payload: dict) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    kind = payload.pop("kind")
    result = memory_worker(**payload) if kind == "memory" else time_worker(**payload)
    print(json.dumps(result))


# ----------------------------------------------------------------------------- agreement


def agreement(impls: list[str], batch: int, dim: int, chunk_size: int) -> list[str]:
    """Loss and gradient differences between implementations of the same loss, in float64."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="To copy construct from a tensor")  # lightly's DCLW weights
    results = {}
    candidates = sorted(set(impls) | {"ours-dclw", "lightly-dclw"})
    for impl in candidates:
        try:
            if impl == "ours-dclw":
                from contrastkit import objectives

                objective = objectives.get("dclw", temperature=TEMPERATURE, sigma=0.5)
            elif impl == "lightly-dclw":
                from lightly.loss import DCLWLoss

                objective = DCLWLoss(temperature=TEMPERATURE, sigma=0.5)
            else:
                objective = build(impl, chunk_size=max(1, batch // 3))  # a partial last block
        except ImportError:
            continue
        z_a, z_b = inputs(batch, dim, dtype=torch.float64)
        loss = objective(z_a, z_b)
        loss.backward()
        results[impl] = (loss.detach(), torch.cat([z_a.grad, z_b.grad]))

    lines = [f"agreement at batch {batch}, dim {dim}, temperature {TEMPERATURE}, float64 "
             f"(chunked: chunk_size {max(1, batch // 3)}):"]  # fmt: skip
    pairs = [
        ("ours-ntxent", "lightly-ntxent", 1.0),
        ("ours-ntxent", "pml-ntxent", 1.0),
        ("ours-ntxent", "ours-ntxent-chunked", 1.0),
        ("ours-dcl", "lightly-dcl", 1.0),
        ("ours-dcl", "ours-dcl-chunked", 1.0),
        ("ours-dclw", "lightly-dclw", 1.0),
    ]
    for ours, other, factor in pairs:
        if ours not in results or other not in results:
            continue
        (loss_a, grad_a), (loss_b, grad_b) = results[ours], results[other]
        gradient_error = float((grad_a - factor * grad_b).abs().max() / grad_b.abs().max())
        lines.append(
            f"  {ours:<20} {float(loss_a):.12f}  vs {other:<20} {float(loss_b):.12f}  "
            f"loss ratio {float(loss_a / loss_b):.12f}  max |grad diff| / max |grad| {gradient_error:.1e}"
        )
    return lines


# ----------------------------------------------------------------------------- report


def _environment() -> str:
    import torch

    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for module in ("torchvision", "lightly", "pytorch_metric_learning"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} missing")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{', '.join(versions)}; CPU {cpu} ({os.cpu_count()} logical cores)"


def _load() -> str:
    return "load average (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per batch size (median reported)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows per block of the chunked variants")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads in every worker; 1 on a shared machine, where more threads than free "
        "cores measure the scheduler",
    )  # fmt: skip
    parser.add_argument("--impls", nargs="+", default=OURS + ANCHORS, choices=OURS + ANCHORS)
    parser.add_argument("--agreement-batch", type=int, default=256)
    parser.add_argument(
        "--pml-max-batch", type=int, default=256,
        help="largest batch for pml-ntxent, whose pair tables grow as N^3 (about 2 GiB at 256, 16 GiB at 512)",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(json.loads(args.worker))
        return

    import torch

    torch.set_num_threads(args.threads)
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"environment: {_environment()}")
    print(f"at start: {_load()}")
    print()
    for line in agreement(args.impls, args.agreement_batch, args.dim, args.chunk_size):
        print(line, flush=True)
    print()

    memory: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], list[float]] = {}
    notes: list[str] = []
    for batch in args.sizes:
        impls = [impl for impl in args.impls if impl != "pml-ntxent" or batch <= args.pml_max_batch]
        for impl in impls:
            payload = {"kind": "memory", "impl": impl, "batch": batch, "dim": args.dim, "chunk_size": args.chunk_size}
            result = _run_worker(args, payload)
            if "skipped" in result:
                notes.append(f"{impl} at batch {batch}: memory not measured ({result['skipped']})")
            else:
                memory[impl, batch] = result["peak_bytes"] / 2**20
                if result["method"] != "VmHWM":
                    notes.append(f"{impl} at batch {batch}: memory from the rise of ru_maxrss (clear_refs not writable)")
        payload = {"kind": "time", "impls": impls, "batch": batch, "dim": args.dim,
                   "chunk_size": args.chunk_size, "repeats": args.repeats}  # fmt: skip
        result = _run_worker(args, payload)
        if isinstance(result.get("skipped"), str):
            notes.append(f"batch {batch}: timing failed ({result['skipped']})")
            continue
        notes += [f"{impl} at batch {batch}: skipped ({why})" for impl, why in result["skipped"].items()]
        for impl in result["cpu"]:
            cpu[impl, batch], wall[impl, batch] = result["cpu"][impl], result["wall"][impl]
        print(f"batch {batch} done; {_load()}", flush=True)

    print()
    print(f"forward + backward, dim {args.dim}, temperature {TEMPERATURE}, float32, {args.threads} thread(s); "
          f"times: median over {args.repeats} interleaved rounds, CPU time of the process and wall-clock time "
          f"(with its min-max); memory: rise of peak RSS in a fresh process; chunked: chunk_size {args.chunk_size}")  # fmt: skip
    print()
    print("| batch | implementation | CPU time (ms) | wall time (ms) | wall min-max (ms) | peak memory (MiB) |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch in args.sizes:
        for impl in args.impls:
            if (impl, batch) not in cpu and (impl, batch) not in memory:
                continue
            cpu_ms = f"{_median_ms(cpu[impl, batch]):.1f}" if (impl, batch) in cpu else "-"
            samples = wall.get((impl, batch))
            wall_ms = f"{_median_ms(samples):.1f}" if samples else "-"
            spread = f"{1e3 * min(samples):.1f}-{1e3 * max(samples):.1f}" if samples else "-"
            peak = f"{memory[impl, batch]:.1f}" if (impl, batch) in memory else "-"
            print(f"| {batch} | {impl} | {cpu_ms} | {wall_ms} | {spread} | {peak} |")
    print()
    print("ratios ours / anchor, of the medians (< 1: ours is faster or lighter)")
    print()
    print("| batch | ours | anchor | CPU time ratio | wall time ratio | memory ratio |")
    print("|---:|---|---|---:|---:|---:|")
    for batch in args.sizes:
        for ours, anchor in RATIOS:
            if (ours, batch) not in cpu or (anchor, batch) not in cpu:
                continue
            cpu_ratio = _median_ms(cpu[ours, batch]) / _median_ms(cpu[anchor, batch])
            wall_ratio = _median_ms(wall[ours, batch]) / _median_ms(wall[anchor, batch])
            both = (ours, batch) in memory and (anchor, batch) in memory and memory[anchor, batch] > 0
            memory_ratio = f"{memory[ours, batch] / memory[anchor, batch]:.3g}" if both else "-"
            print(f"| {batch} | {ours} | {anchor} | {cpu_ratio:.3g} | {wall_ratio:.3g} | {memory_ratio} |")
    if "pml-ntxent" in args.impls and any(batch > args.pml_max_batch for batch in args.sizes):
        notes.append(f"pml-ntxent runs only up to batch {args.pml_max_batch} (--pml-max-batch): its pair tables "
                     "grow as N^3, about 8x the memory per doubling of the batch")  # fmt: skip
    print()
    for note in notes:
        print(f"note: {note}")
    print(f"at end: {_load()}")


if __name__ == "__main__":
    main()
