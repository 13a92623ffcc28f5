"""Memory-mapped shards: round trip against the source, every sample once per epoch across ranks,
deterministic per-epoch order, and ranks that concatenate to the single-process batch."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.sources.shards import (
    ShardedImages,
    ShardFolder,
    shard_image_source,
    write_shards,
)


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards") / "digits"
    shard_image_source("digits", root, shard_size=250, chunk_size=97)  # chunks straddle shard boundaries
    return root


def _epoch(root, batch_size, seed, epoch, world_size, drop_last=True):
    """Batches of every rank for one epoch: {rank: [batch, ...]}."""
    batches = {}
    for rank in range(world_size):
        reader = ShardedImages(root, batch_size, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)
        reader.set_epoch(epoch)
        batches[rank] = list(reader)
        assert len(batches[rank]) == len(reader)
    return batches


def test_round_trip_equals_the_source(digits_shards):
    source = open_image_source("digits")
    index = json.loads((digits_shards / "index.json").read_text())
    assert index["num_samples"] == 1797 and index["image_shape"] == [1, 8, 8]
    assert [s["count"] for s in index["shards"]] == [250] * 7 + [47]
    # the shard files themselves, read without contrastkit
    stacked = np.concatenate([np.load(digits_shards / s["file"]) for s in index["shards"]])
    np.testing.assert_array_equal(stacked, source.images.numpy())
    np.testing.assert_array_equal(np.load(digits_shards / "labels.npy"), source.labels.numpy())
    # and through the streaming reader: every batch's images and labels are those of its global ids
    for batch in _epoch(digits_shards, 64, seed=0, epoch=0, world_size=1, drop_last=False)[0]:
        assert torch.equal(batch["image"], source.images[batch["index"]])
        assert torch.equal(batch["label"], source.labels[batch["index"]])


def test_two_ranks_see_every_sample_exactly_once_per_epoch(tmp_path):
    n = 1000
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)
    write_shards([(images[:333], None), (images[333:], None)], tmp_path, n, (3, 4, 4), shard_size=128)
    batches = _epoch(tmp_path, 25, seed=3, epoch=0, world_size=2)  # global batch 50 divides 1000
    assert len(batches[0]) == len(batches[1]) == 20
    seen = [torch.cat([b["index"] for b in batches[rank]]) for rank in range(2)]
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert Counter(torch.cat(seen).tolist()) == Counter(range(n))
    assert all((b["label"] == -1).all() for b in batches[0])  # an unlabelled set
    for b in batches[1]:
        np.testing.assert_array_equal(b["image"].numpy(), images[b["index"].numpy()])


def test_dropping_the_last_global_batch_keeps_ranks_equal_and_samples_unique(digits_shards):
    batches = _epoch(digits_shards, 64, seed=0, epoch=2, world_size=2)  # 1797 = 14 x 128 + 5
    assert len(batches[0]) == len(batches[1]) == 14
    ids = torch.cat([b["index"] for rank in range(2) for b in batches[rank]]).tolist()
    assert len(ids) == len(set(ids)) == 14 * 128


def test_ranks_concatenate_to_the_single_process_batch(digits_shards):
    single = _epoch(digits_shards, 128, seed=5, epoch=1, world_size=1)[0]
    ranks = _epoch(digits_shards, 64, seed=5, epoch=1, world_size=2)
    assert len(single) == len(ranks[0])
    for step, whole in enumerate(single):
        assert torch.equal(whole["index"], torch.cat([ranks[0][step]["index"], ranks[1][step]["index"]]))


def test_order_is_fixed_by_seed_and_epoch(digits_shards):
    def order(seed, epoch):
        return torch.cat([b["index"] for b in _epoch(digits_shards, 64, seed, epoch, world_size=1)[0]])

    assert torch.equal(order(0, 0), order(0, 0))
    assert not torch.equal(order(0, 0), order(0, 1))
    assert not torch.equal(order(0, 0), order(1, 0))
    assert not torch.equal(order(1, 0), order(0, 1))  # seeded by the pair, not by seed + epoch
    # shards are visited in a shuffled order and shuffled inside: the first batch is not the first rows
    assert not torch.equal(order(0, 0)[:64], torch.arange(64))


def test_at_most_two_shards_are_mapped(digits_shards):
    reader = ShardedImages(digits_shards, 100, seed=0)
    for _ in reader:
        assert len(reader.folder._mapped) <= 2


def test_mistakes_are_reported(tmp_path, digits_shards):
    with pytest.raises(DataError, match="index.json"):
        ShardFolder(tmp_path)
    with pytest.raises(ConfigError, match="already holds shards"):
        shard_image_source("digits", digits_shards)
    with pytest.raises(ConfigError, match="larger than"):
        ShardedImages(digits_shards, 1000, world_size=2)
    with pytest.raises(DataError, match="announced"):
        write_shards([(np.zeros((3, 1, 2, 2), np.uint8), None)], tmp_path / "x", 5, (1, 2, 2))
