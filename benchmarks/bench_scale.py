"""Data larger than memory and search over a million embeddings: throughput and peak memory.

Parts, each measured in its own process so that its peak RSS (``resource.getrusage``'s
``ru_maxrss``, a high-water mark) is its own:

1. ``write``: write ``--samples`` synthetic 3x32x32 uint8 images (the size of a CIFAR image,
   3,072 bytes) with labels into memory-mapped shards, from a generator of chunks.
2. ``stream``: one epoch of :class:`ShardedImages` (seeded shuffle, batches of 256) over all of
   them — samples/second and peak RSS, which stays at about two shards whatever ``--samples``.
3. ``stream-small`` and ``memory``: the first ``--in-memory-samples`` of them (a set that fits),
   once streamed from shards and once loaded whole into RAM and batched from there with the same
   kind of shuffle — the price of streaming, and the load time it saves.
4. ``knn-exact``, ``knn-ivf``: ``--embeddings`` x 128 float32 embeddings (clustered Gaussians,
   written to a memory-mapped .npy), ``--queries`` queries, top-10 by cosine with faiss
   (``contrastkit.evaluation.large_scale``): build and search time, peak RSS, and the IVF recall@10
   against the exact result.

Usage::

    python benchmarks/bench_scale.py --workdir runs/bench_scale            # 10^6 images, 10^6 embeddings
    python benchmarks/bench_scale.py --samples 100000 --embeddings 100000  # a quick run

The first images are synthetic (uniform noise): reading cost depends on bytes, not content.
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

import numpy as np

IMAGE_SHAPE = (3, 32, 32)
DIM = 128
K = 10


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_chunks(n: int, chunk: int = 10_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        yield rng.integers(0, 256, (size, *IMAGE_SHAPE), dtype=np.uint8), rng.integers(0, 10, size)


def part_write(args) -> dict:
    from contrastkit.modalities.image.sources.shards import write_shards

    root = Path(args.workdir) / "shards"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    write_shards(synthetic_chunks(args.samples), root, args.samples, IMAGE_SHAPE, shard_size=args.shard_size,
                 labelled=True, name="synthetic")
    seconds = time.perf_counter() - started
    size_gb = sum(f.stat().st_size for f in root.iterdir()) / 1e9
    return {"samples": args.samples, "seconds": seconds, "samples_per_second": args.samples / seconds,
            "disk_gb": size_gb, "peak_rss_mb": peak_rss_mb()}


def _stream(root: Path, limit: int | None, batch_size: int) -> dict:
    from contrastkit.modalities.image.sources.shards import ShardedImages

    reader = ShardedImages(root, batch_size, seed=0)
    started, seen, checksum = time.perf_counter(), 0, 0
    for batch in reader:
        seen += len(batch["index"])
        checksum += int(batch["image"][:, 0, 0, 0].sum())  # touch the data
        if limit is not None and seen >= limit:
            break
    seconds = time.perf_counter() - started
    return {"samples": seen, "seconds": seconds, "samples_per_second": seen / seconds, "peak_rss_mb": peak_rss_mb()}


def part_stream(args) -> dict:
    return _stream(Path(args.workdir) / "shards", None, args.batch_size)


def part_stream_small(args) -> dict:
    from contrastkit.modalities.image.sources.shards import write_shards

    # A shard folder of exactly the in-memory set, so that both read the same samples.
    root = Path(args.workdir) / "shards-small"
    shutil.rmtree(root, ignore_errors=True)
    write_shards(synthetic_chunks(args.in_memory_samples), root, args.in_memory_samples, IMAGE_SHAPE,
                 shard_size=args.shard_size, labelled=True)
    return _stream(root, None, args.batch_size)


def part_memory(args) -> dict:
    import torch

    from contrastkit.modalities.image.sources.shards import ShardFolder

    folder = ShardFolder(Path(args.workdir) / "shards-small")
    started = time.perf_counter()
    images = np.concatenate([np.load(f) for f in folder.files])  # the whole set in RAM
    labels = np.array(folder.labels)
    load_seconds = time.perf_counter() - started
    order = np.random.default_rng(0).permutation(len(images))
    started, seen, checksum = time.perf_counter(), 0, 0
    for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
        ids = order[start : start + args.batch_size]
        batch = {"image": torch.from_numpy(images[ids]), "label": torch.from_numpy(labels[ids])}
        seen += len(ids)
        checksum += int(batch["image"][:, 0, 0, 0].sum())
    seconds = time.perf_counter() - started
    return {"samples": seen, "load_seconds": load_seconds, "seconds": seconds,
            "samples_per_second": seen / seconds, "peak_rss_mb": peak_rss_mb()}


def _embeddings(args) -> tuple[np.ndarray, np.ndarray]:
    """Clustered Gaussians, written once to a memory-mapped .npy: 1,000 centres ~ N(0, s^2 I) plus
    N(0, I) noise, s = ``--centre-scale``. With s = 1 the clusters are far apart and IVF finds
    nearly every neighbour; s = 0.5 overlaps them, closer to real embeddings' harder geometry."""
    path = Path(args.workdir) / f"embeddings-{args.embeddings}-{args.centre_scale}.npy"
    queries_path = Path(args.workdir) / f"queries-{args.queries}-{args.centre_scale}.npy"
    if not path.exists():
        rng = np.random.default_rng(1)
        centres = args.centre_scale * rng.normal(size=(1000, DIM)).astype(np.float32)
        bank = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32,
                                         shape=(args.embeddings, DIM))
        for start in range(0, args.embeddings, 100_000):
            size = min(100_000, args.embeddings - start)
            bank[start : start + size] = centres[rng.integers(0, 1000, size)] + rng.normal(size=(size, DIM))
        bank.flush()
        del bank
        path.with_suffix(".tmp.npy").rename(path)
        queries = centres[rng.integers(0, 1000, args.queries)] + rng.normal(size=(args.queries, DIM))
        np.save(queries_path, queries.astype(np.float32))
    return np.load(path, mmap_mode="r"), np.load(queries_path)


def _ids_path(args, kind: str, nprobe: int) -> Path:
    return Path(args.workdir) / (f"ids-{kind}-{nprobe}.npy" if kind == "ivf" else f"ids-{kind}.npy")


def _knn(args, options) -> dict:
    from contrastkit.evaluation.large_scale import build_index, search

    bank, queries = _embeddings(args)
    started = time.perf_counter()
    index = build_index(bank, options)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _, ids = search(index, queries, K, batch_size=1024)
    search_seconds = time.perf_counter() - started
    np.save(_ids_path(args, options.kind, options.nprobe), ids)
    return {"bank": len(bank), "queries": len(queries), "build_seconds": build_seconds,
            "search_seconds": search_seconds, "queries_per_second": len(queries) / search_seconds,
            "peak_rss_mb": peak_rss_mb()}


def part_knn_exact(args) -> dict:
    from contrastkit.evaluation.large_scale import IndexOptions

    return _knn(args, IndexOptions(kind="exact"))


def part_knn_ivf(args) -> dict:
    from contrastkit.evaluation.large_scale import IndexOptions, recall_against_exact

    results = {}
    for nprobe in args.nprobe:
        figures = _knn(args, IndexOptions(kind="ivf", nlist=args.nlist, nprobe=nprobe))
        exact = np.load(_ids_path(args, "exact", 0))
        approximate = np.load(_ids_path(args, "ivf", nprobe))
        figures["recall_at_10"] = recall_against_exact(approximate, exact)
        results[f"nprobe={nprobe}"] = figures
    return results


PARTS = {"write": part_write, "stream": part_stream, "stream-small": part_stream_small, "memory": part_memory,
         "knn-exact": part_knn_exact, "knn-ivf": part_knn_ivf}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--in-memory-samples", type=int, default=200_000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--embeddings", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--centre-scale", type=float, default=0.5, help="spread of the embedding clusters' centres")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--workdir", default="runs/bench_scale")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--keep", action="store_true", help="keep the shards and embeddings in --workdir")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.part:
        import torch  # noqa: F401  (the libraries' own memory, reported apart from the part's)

        import contrastkit.evaluation.large_scale
        import contrastkit.modalities.image.sources.shards  # noqa: F401

        baseline = current_rss_mb()
        print(json.dumps({**PARTS[args.part](args), "rss_after_imports_mb": baseline}))
        return
    results = {}
    for part in args.parts:
        command = [sys.executable, __file__, *sys.argv[1:], "--part", part]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[part] = json.loads(output.strip().splitlines()[-1])
        print(part, json.dumps(results[part]), flush=True)
    (Path(args.workdir) / "results.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        for name in ("shards", "shards-small"):
            shutil.rmtree(Path(args.workdir) / name, ignore_errors=True)


if __name__ == "__main__":
    main()
