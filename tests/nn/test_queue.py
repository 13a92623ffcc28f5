"""MemoryQueue against a Python deque, through a checkpoint, and under 2-process DDP."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from contrastkit.core.errors import DataError
from contrastkit.nn.queue import MemoryQueue
from tests.ddp import run_distributed


def _rows(start: int, count: int, dim: int = 3) -> torch.Tensor:
    # Row k holds the value k in every column, so a row says which key it is.
    return torch.arange(start, start + count, dtype=torch.float32)[:, None].repeat(1, dim)


@pytest.mark.parametrize("batches", [[2, 3, 1, 4, 2], [7], [5, 9, 1], [3, 3, 3, 3]])
def test_contents_follow_a_deque(batches):
    size = 6
    queue = MemoryQueue(size, 3)
    reference: deque[float] = deque(maxlen=size)
    start = 0
    for count in batches:
        queue.enqueue(_rows(start, count))
        reference.extend(range(start, start + count))
        start += count
        assert len(queue) == len(reference)
        assert queue.full == (len(reference) == size)
        assert queue.keys(in_order=True)[:, 0].tolist() == list(reference)
        # Storage order holds the same keys (what a loss needs), without a copy.
        assert sorted(queue.keys()[:, 0].tolist()) == sorted(reference)


def test_keys_are_detached_and_state_dict_round_trips():
    queue = MemoryQueue(5, 3)
    keys = _rows(0, 7).requires_grad_(True)
    queue.enqueue(keys * 2)
    assert not queue.keys().requires_grad
    restored = MemoryQueue(5, 3)
    restored.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"rows", "pointer", "filled"}
    assert torch.equal(restored.keys(in_order=True), queue.keys(in_order=True))
    queue.enqueue(_rows(100, 2))
    restored.enqueue(_rows(100, 2))
    assert torch.equal(restored.keys(in_order=True), queue.keys(in_order=True))
    restored.reset()
    assert len(restored) == 0 and not restored.full


def test_wrong_key_shape_is_a_data_error():
    with pytest.raises(DataError, match=r"\(batch, 3\)"):
        MemoryQueue(4, 3).enqueue(torch.zeros(2, 4))


def _queue_worker(rank: int, world: int) -> list[list[float]]:
    queue = MemoryQueue(7, 2)
    snapshots = []
    for step in range(3):
        # rank r, step s enqueues keys 100 s + 10 r + k, k < 2 + r (unequal batches)
        keys = torch.tensor([100 * step + 10 * rank + k for k in range(2 + rank)], dtype=torch.float32)
        queue.enqueue(keys[:, None].repeat(1, 2))
        snapshots.append(queue.keys(in_order=True)[:, 0].tolist())
    return snapshots


@pytest.mark.distributed
def test_every_rank_holds_the_keys_of_all_ranks_in_rank_order():
    per_rank = run_distributed(_queue_worker, world_size=2)
    reference: deque[float] = deque(maxlen=7)
    expected = []
    for step in range(3):
        for rank in range(2):
            reference.extend(100 * step + 10 * rank + k for k in range(2 + rank))
        expected.append(list(reference))
    assert per_rank[0] == expected
    assert per_rank[1] == expected
