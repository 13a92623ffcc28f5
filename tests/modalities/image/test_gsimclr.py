"""G-SimCLR: the spread batch sampler's guarantee on known pseudo-labels (counted by hand, per
global batch and per process), and pseudo-labels recovering known groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.sampling.pseudo_labels import (
    pseudo_labels,
    train_denoising_autoencoder,
)
from contrastkit.modalities.image.sampling.spread_batches import SpreadBatchSampler
from contrastkit.modalities.image.training.data import EpochShuffleSampler


def _labels(sizes: list[int], seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    return np.random.default_rng(seed).permutation(labels)


def _epoch(labels, batch_size, world, epoch, seed=7):
    """Every rank's batches of one epoch: list over ranks of lists of index lists."""
    out = []
    for rank in range(world):
        sampler = SpreadBatchSampler(labels, batch_size, seed=seed, rank=rank, num_replicas=world)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


CASES = [
    # (class sizes, per-process batch, processes)
    ([100] * 10, 20, 1),  # balanced, G divides N: at most 2 per class per batch
    ([500, 300, 120, 50, 20, 7, 3], 25, 1),  # unbalanced, G divides N
    ([37, 211, 5, 90, 1, 56], 16, 1),  # G does not divide N
    ([500, 300, 120, 50, 20, 7, 3], 25, 2),  # two processes
    ([37, 211, 5, 90, 1, 56], 8, 3),  # three processes, G does not divide N
]


@pytest.mark.parametrize("sizes, batch_size, world", CASES)
@pytest.mark.parametrize("epoch", [0, 3])
def test_each_class_is_spread_as_evenly_as_its_size_allows(sizes, batch_size, world, epoch):
    labels = _labels(sizes)
    n = len(labels)
    global_batch = batch_size * world
    num_batches = n // global_batch
    per_rank = _epoch(labels, batch_size, world, epoch)
    assert all(len(batches) == num_batches for batches in per_rank)
    everything = []
    for j in range(num_batches):
        union = []
        for rank in range(world):
            batch = per_rank[rank][j]
            assert len(batch) == batch_size
            counts = np.bincount(labels[batch], minlength=len(sizes))
            for c, n_c in enumerate(sizes):
                assert counts[c] <= math.ceil(n_c / (num_batches * world)), (j, rank, c)
            union += batch
        counts = np.bincount(labels[union], minlength=len(sizes))
        for c, n_c in enumerate(sizes):
            assert counts[c] <= math.ceil(n_c / num_batches), (j, c)
            if n % global_batch == 0:
                assert counts[c] <= math.ceil(global_batch * n_c / n)
        everything += union
    # Each sample at most once; fewer than a global batch left out.
    assert len(set(everything)) == len(everything) == num_batches * global_batch
    assert n - len(everything) < global_batch
    sampler = SpreadBatchSampler(labels, batch_size, seed=7, num_replicas=world)
    assert sampler.bounds() == {c: (math.ceil(n_c / num_batches), math.ceil(n_c / (num_batches * world)))
                                for c, n_c in enumerate(sizes)}


def test_the_bound_is_tight_and_a_plain_shuffle_breaks_it():
    sizes = [500, 300, 120, 50, 20, 7, 3]
    labels = _labels(sizes)
    spread = _epoch(labels, 25, 1, 0)[0]
    worst = max(np.bincount(labels[b], minlength=7)[0] for b in spread)
    assert worst == math.ceil(25 * 500 / 1000)  # the biggest class reaches its bound, no more
    # The same check fails for the plain shuffled sampler: the test can tell the two apart.
    plain = EpochShuffleSampler(len(labels), 25, seed=7)
    over = [np.bincount(labels[b], minlength=7) > [math.ceil(25 * n / 1000) for n in sizes] for b in plain]
    assert np.any(over)


def test_epochs_are_deterministic_and_differ():
    labels = _labels([60, 30, 10])
    a = _epoch(labels, 10, 1, 0)[0]
    assert a == _epoch(labels, 10, 1, 0)[0]
    assert a != _epoch(labels, 10, 1, 1)[0]
    sampler = SpreadBatchSampler(labels, 10, seed=0)
    assert sampler.sampler is sampler and len(sampler) == 10


def test_sampler_checks_its_inputs():
    with pytest.raises(ConfigError, match="global batch"):
        SpreadBatchSampler(np.zeros(10, dtype=np.int64), 6, seed=0, num_replicas=2)
    with pytest.raises(DataError, match="pseudo-label"):
        SpreadBatchSampler(np.zeros((10, 2), dtype=np.int64), 2, seed=0)


def test_pseudo_labels_recover_known_groups():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, size=(3, 1, 12, 12))
    groups = np.repeat(np.arange(3), 40)
    images = np.clip(prototypes[groups] + rng.normal(0, 20, size=(120, 1, 12, 12)), 0, 255).astype(np.uint8)
    images = torch.from_numpy(images)
    options = {"epochs": 6, "batch_size": 30, "latent_dim": 8, "width": 8, "lr": 3e-3}
    found = pseudo_labels(images, num_clusters=3, **options)
    assert adjusted_rand_score(groups, found) > 0.95
    _, history = train_denoising_autoencoder(images, **options)
    assert history[-1] < history[0]  # the reconstruction error falls
