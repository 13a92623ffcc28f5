"""`fit --data shards:DIR`: streaming from memory-mapped shards trains exactly like the in-memory path
on the same images (global order), the shard-block order is a per-epoch, per-process permutation,
the streamed normalisation equals the in-memory one, a streamed run resumes to the uninterrupted
weights, and the resident memory stays bounded while an epoch streams a set many times its size."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.sources.shards import (
    ShardFolder,
    shard_blocks,
    shard_image_source,
    streamed_channel_mean_std,
)
from contrastkit.modalities.image.training import run_data as run_data_module
from contrastkit.modalities.image.training.data import (
    BatchedSamples,
    EpochShuffleSampler,
    InMemoryImages,
    ShardBlockSampler,
    StreamedShards,
)

# 400 digits, 80 held out (stratified), batches of 64: 5 steps an epoch; the probe runs every epoch.
QUICK = {"limit": 400, "holdout": 0.2, "batch_size": 64, "width": 0.25, "epochs": 2, "report": False,
         "baselines": False, "probe_every": 1, "seed": 3}


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream") / "digits-shards"
    shard_image_source("digits", root, shard_size=150)  # 12 shards; the 400 used samples span 3
    return root


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def _probe(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(row["probe/knn_top1"]) for row in csv.DictReader(handle) if row.get("probe/knn_top1")]


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for key, tensor in expected.items():
        assert torch.equal(tensor, actual[key]), key


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory, digits_shards) -> dict[str, Path]:
    """The same 2-epoch run from memory and streamed from shards (global order)."""
    from contrastkit.modalities.image.training.run import fit

    out = tmp_path_factory.mktemp("twins")
    runs = {"memory": out / "memory", "shards": out / "shards"}
    fit(FitConfig(data="digits", out=str(runs["memory"]), **QUICK))
    fit(FitConfig(data=f"shards:{digits_shards}", stream_order="global", out=str(runs["shards"]), **QUICK))
    return runs


@pytest.mark.slow
def test_streamed_fit_equals_the_in_memory_fit(twin_runs):
    memory, shards = twin_runs["memory"], twin_runs["shards"]
    assert len(_losses(memory)) == 10  # 320 training samples // 64, two epochs
    assert _losses(shards) == _losses(memory)  # bit for bit: the same batches, views and weights
    _assert_same_weights(_state(memory), _state(shards))
    assert _probe(shards) == _probe(memory) and len(_probe(memory)) == 2
    np.testing.assert_array_equal(np.load(shards / "embeddings.npy"), np.load(memory / "embeddings.npy"))
    a, b = (json.loads((run / "summary.json").read_text()) for run in (memory, shards))
    assert (a["data_format"], b["data_format"]) == ("in-memory", "shards")
    assert a["knn_top1"] == b["knn_top1"] and a["n_test"] == b["n_test"] == 80
    # the streamed run says which samples it embedded: here all of them, training part first
    rows = np.load(shards / "rows.npy")
    assert sorted(rows.tolist()) == list(range(400)) and json.loads((shards / "split.json").read_text())["rows"]


@pytest.mark.slow
def test_a_streamed_run_resumes_to_the_uninterrupted_weights(twin_runs, digits_shards, tmp_path, monkeypatch):
    """The run stops right after its first checkpoint (an exception, as a crash would); --resume
    finishes it. Shards order this time, so the resumed sampler must rebuild the epoch-1 order."""
    from contrastkit.engine import callbacks
    from contrastkit.modalities.image.training.run import fit
    from tests.resume_harness import crash_after_first_epoch_checkpoint

    config = FitConfig(data=f"shards:{digits_shards}", **{**QUICK, "probe_every": 0})
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    fit(FitConfig(**{**config.__dict__, "out": str(whole)}))

    save = crash_after_first_epoch_checkpoint(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(FitConfig(**{**config.__dict__, "out": str(broken)}))
    monkeypatch.setattr(callbacks.Checkpointing, "on_train_epoch_end", save)
    assert torch.load(broken / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    fit(FitConfig(**{**config.__dict__, "out": str(broken), "resume": True}))
    _assert_same_weights(_state(whole), _state(broken))
    assert _losses(broken) == _losses(whole)


def _run_data_batches(datamodule, rank: int = 0, world_size: int = 1, epoch: int = 0) -> list[dict]:
    datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    loader = datamodule.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def test_global_order_streams_the_in_memory_batches(digits_shards):
    source = open_image_source("digits")
    train_rows = np.sort(np.random.default_rng(0).choice(1797, size=900, replace=False))
    memory = InMemoryImages(source.subset(train_rows), batch_size=50, seed=4)
    streamed = StreamedShards(digits_shards, train_rows, source.labels.numpy()[train_rows], 50, seed=4,
                              order="global")
    for epoch in (0, 3):
        expected = _run_data_batches(memory, epoch=epoch)
        actual = _run_data_batches(streamed, epoch=epoch)
        assert len(actual) == len(expected) == 18
        for a, b in zip(actual, expected, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), key


def test_shard_order_is_a_per_epoch_permutation_split_over_processes(digits_shards):
    source = open_image_source("digits")
    train_rows = np.flatnonzero(np.arange(1797) % 5 != 0)  # a training part with holes: 1437 samples
    labels = source.labels.numpy()[train_rows]
    streamed = StreamedShards(digits_shards, train_rows, labels, 32, seed=9, order="shards")

    def positions(batches):
        return torch.cat([b["index"] for b in batches])

    single = _run_data_batches(streamed, epoch=1)
    assert len(single) == 1437 // 32
    order = positions(single)
    assert len(set(order.tolist())) == len(order)  # no sample twice; only the last partial batch dropped
    for batch in single:  # images and labels are those of the positions' rows
        rows = train_rows[batch["index"].numpy()]
        assert torch.equal(batch["image"], source.images[rows]) and torch.equal(batch["label"], source.labels[rows])
    # in shard blocks: consecutive samples change shard at most once per shard visited
    shards = train_rows[order.numpy()] // 150
    assert np.count_nonzero(np.diff(shards)) <= 12
    # deterministic per (seed, epoch), different across epochs
    assert torch.equal(positions(_run_data_batches(streamed, epoch=1)), order)
    assert not torch.equal(positions(_run_data_batches(streamed, epoch=2)), order)
    # two processes with half the batch: disjoint samples whose batches concatenate to the single one
    halves = StreamedShards(digits_shards, train_rows, labels, 16, seed=9, order="shards")
    ranks = [_run_data_batches(halves, rank=r, world_size=2, epoch=1) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for step, whole in enumerate(single):
        assert torch.equal(whole["index"], torch.cat([ranks[0][step]["index"], ranks[1][step]["index"]]))


def test_shard_block_sampler_equals_a_naive_derivation():
    """The sampler's order against a hand-written loop over the same seeded generator calls."""
    rows = np.array([0, 2, 3, 7, 10, 11, 12, 15, 18, 19])  # shards of 5: blocks of positions [0-2], [3], [4-6], [7-9]
    blocks = shard_blocks(rows, shard_size=5, num_shards=4)
    assert [b.tolist() for b in blocks] == [[0, 1, 2], [3], [4, 5, 6], [7, 8, 9]]
    sampler = ShardBlockSampler(blocks, batch_size=3, seed=2)
    sampler.set_epoch(5)
    rng = np.random.default_rng((2, 5))
    naive = []
    for k in rng.permutation(4):
        members = [p for p in range(10) if rows[p] // 5 == k]
        naive += [members[i] for i in rng.permutation(len(members))]
    assert [p for batch in sampler for p in batch] == naive[:9]
    assert Counter(naive) == Counter(range(10))


def test_streamed_statistics_equal_the_in_memory_ones(digits_shards, monkeypatch):
    from contrastkit.modalities.image.sources import shards

    monkeypatch.setattr(shards, "STATS_CHUNK", 97)  # chunks straddle shards
    source = open_image_source("digits")
    rows = np.flatnonzero(source.labels.numpy() != 3)
    expected = source.subset(rows).channel_mean_std()
    assert streamed_channel_mean_std(ShardFolder(digits_shards), rows) == expected
    # a bounded sample: the figures of exactly the sampled images
    sample = run_data_module.seeded_sample(rows, 300, seed=1)
    assert len(sample) == 300 and set(sample) <= set(rows)
    assert streamed_channel_mean_std(ShardFolder(digits_shards), sample) == source.subset(sample).channel_mean_std()


def test_bounded_evaluation_and_statistics_samples(digits_shards, monkeypatch):
    monkeypatch.setattr(run_data_module, "EVAL_TRAIN_SIZE", 100)
    monkeypatch.setattr(run_data_module, "EVAL_HOLDOUT_SIZE", 30)
    monkeypatch.setattr(run_data_module, "STATS_SAMPLE_SIZE", 200)
    config = FitConfig(data=f"shards:{digits_shards}", batch_size=32, seed=1)
    data = run_data_module.open_run_data(config)
    source = open_image_source("digits")
    assert len(data.train_rows) + len(data.holdout_rows) == 1797 and data.info.num_samples == len(data.train_rows)
    assert data.eval_train == 100 and len(data.eval_rows) == 130
    assert set(data.eval_rows[:100]) <= set(data.train_rows) and set(data.eval_rows[100:]) <= set(data.holdout_rows)
    assert torch.equal(data.read(data.eval_rows), source.images[data.eval_rows])
    sample = run_data_module.seeded_sample(data.train_rows, 200, seed=1)
    assert (data.info.mean, data.info.std) == source.subset(sample).channel_mean_std()
    bank, queries = data.probe_rows()
    assert set(bank) <= set(data.train_rows) and set(queries) <= set(data.holdout_rows)


@pytest.mark.parametrize("streamed", [False, True])
def test_the_split_seed_fixes_the_data_draws_across_training_seeds(digits_shards, monkeypatch, streamed):
    """--split-seed S: the held-out split, the statistics and the evaluation samples of any --seed are
    those of a run with --seed S (the default, no --split-seed, draws them with --seed)."""
    monkeypatch.setattr(run_data_module, "EVAL_TRAIN_SIZE", 100)
    monkeypatch.setattr(run_data_module, "EVAL_HOLDOUT_SIZE", 30)
    monkeypatch.setattr(run_data_module, "STATS_SAMPLE_SIZE", 200)
    data = f"shards:{digits_shards}" if streamed else "digits"

    def drawn(**seeds):
        run = run_data_module.open_run_data(FitConfig(data=data, batch_size=32, **seeds))
        return run.train_rows, run.holdout_rows, run.eval_rows, run.info.mean, run.info.std

    def same(a, b):
        return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))

    reference = drawn(seed=5)
    assert same(drawn(seed=1, split_seed=5), reference) and same(drawn(seed=2, split_seed=5), reference)
    assert not same(drawn(seed=1), reference)  # without it, each training seed draws its own split


def test_mistakes_are_reported(digits_shards, tmp_path):
    from contrastkit.modalities.image.training.run import fit

    with pytest.raises(ConfigError, match="not resized while streaming"):
        fit(FitConfig(data=f"shards:{digits_shards}", image_size=16, out=str(tmp_path / "a")))
    with pytest.raises(DataError, match="contrastkit shard"):
        fit(FitConfig(data=f"shards:{tmp_path / 'missing'}", out=str(tmp_path / "b")))
    with pytest.raises(ConfigError, match="names no folder"):
        fit(FitConfig(data="shards:", out=str(tmp_path / "c")))
    with pytest.raises(ConfigError, match="stream-order"):
        fit(FitConfig(data=f"shards:{digits_shards}", stream_order="random", out=str(tmp_path / "d")))
    assert not any(tmp_path.iterdir())  # nothing written for a failed start


MEMORY_SCRIPT = r"""
import resource, sys
from pathlib import Path
import numpy as np
from types import SimpleNamespace
from contrastkit.modalities.image.sources.shards import write_shards
from contrastkit.modalities.image.training.data import StreamedShards

root, order = sys.argv[1], sys.argv[2]
n, shape, shard_size, batch = 40_000, (3, 32, 32), 1250, 256   # 123 MB in 32 shards of 3.8 MB

def chunks():
    for start in range(0, n, 2000):
        count = min(2000, n - start)
        yield np.broadcast_to((np.arange(start, start + count) % 251).astype(np.uint8)[:, None, None, None],
                              (count, *shape)), None

if not (Path(root) / "index.json").exists():
    write_shards(chunks(), root, n, shape, shard_size=shard_size)
data = StreamedShards(root, np.arange(n), None, batch, seed=0, order=order)
data.trainer = SimpleNamespace(global_rank=0, world_size=1)
loader = data.train_dataloader()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seen = 0
for batch_ in loader:
    assert int(batch_["image"][0, 0, 0, 0]) == int(batch_["index"][0]) % 251
    seen += len(batch_["index"])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seen, (after - before) * 1024)
"""


@pytest.mark.parametrize("order", ["shards", "global"])
def test_resident_memory_stays_bounded_while_streaming(tmp_path_factory, order):
    """An epoch over 123 MB of shards (reads of one 0.8 MB batch at a time) raises the peak resident
    memory by less than 32 MB: about two mapped shards and a batch, not the set."""
    root = tmp_path_factory.getbasetemp() / "memory-shards"
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(root), order], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen, growth = map(int, done.stdout.split())
    assert seen == 40_000 // 256 * 256
    total = sum(f.stat().st_size for f in root.glob("shard-*.npy"))
    assert total > 120e6
    assert growth < 32e6, f"peak resident memory grew by {growth / 1e6:.1f} MB while streaming {total / 1e6:.0f} MB"


def test_in_memory_sampler_is_unchanged_by_the_refactoring():
    """EpochShuffleSampler's order is still torch.randperm seeded by seed + epoch."""
    sampler = EpochShuffleSampler(50, 10, seed=3)
    sampler.set_epoch(2)
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(5))
    assert [p for batch in sampler for p in batch] == expected.tolist()
    samples = BatchedSamples(torch.zeros(50, 1, 2, 2, dtype=torch.uint8), None)
    assert samples.__getitems__([4, 1])["label"].tolist() == [-1, -1]


def test_loader_workers_give_the_same_batches(digits_shards):
    """Batches are fetched by worker processes (each maps its own shards) in the sampler's order."""
    rows = np.arange(600)
    labels = open_image_source("digits").labels.numpy()[rows]
    alone = _run_data_batches(StreamedShards(digits_shards, rows, labels, 40, seed=2), epoch=1)
    workers = _run_data_batches(StreamedShards(digits_shards, rows, labels, 40, seed=2, num_workers=2), epoch=1)
    assert len(alone) == len(workers) == 15
    for a, b in zip(alone, workers, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_streaming_processes_equal_one_on_the_concatenated_batch(digits_shards, tmp_path):
    """`fit --data shards:DIR --devices 2 --strategy ddp` with batch b per process trains like one
    process with 2b (shard-block order; deterministic views, since each process draws its own
    augmentations). Both runs use --sync-batchnorm, so that the same BatchNorm code runs in both
    (torch's BatchNorm and the global one differ by float rounding, which 8 steps amplify).

    The only differences left are the rounding of sums split over two processes. Training can
    amplify them: with seed 5 they reach 5e-5 in the weights after 8 steps (losses still agree to
    1e-5); with seed 7 they stay at 1e-7, as in memory. The sampler's split itself is exact
    (test_shard_order_is_a_per_epoch_permutation_split_over_processes)."""
    import os

    import yaml

    config = tmp_path / "views.yaml"
    config.write_text(yaml.safe_dump({"extra": {"views": {"random_crop": False, "hflip_p": 0.0, "jitter_p": 0.0,
                                                          "grayscale_p": 0.0}}}))
    common = ["fit", "--config", str(config), "--data", f"shards:{digits_shards}", "--limit", "256", "--holdout", "0",
              "--width", "0.25", "--epochs", "2", "--no-report", "--no-baselines", "--seed", "7",
              "--accelerator", "cpu", "--sync-batchnorm"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for extra, out in ((["--devices", "1", "--batch-size", "64"], "single"),
                       (["--devices", "2", "--strategy", "ddp", "--batch-size", "32"], "ddp")):
        done = subprocess.run([sys.executable, "-m", "contrastkit.cli", *common, *extra, "--out", str(tmp_path / out)],
                              env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert len(_losses(single)) == len(_losses(ddp)) == 8
    torch.testing.assert_close(torch.tensor(_losses(ddp)), torch.tensor(_losses(single)), rtol=1e-4, atol=1e-5)
    a, b = _state(single), _state(ddp)
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["sync_batchnorm"] is True and summary["data_format"] == "shards"
