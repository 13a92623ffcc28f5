"""seeded(): the same seed gives the same draws, and the caller's random state is left untouched."""

from __future__ import annotations

import torch

from contrastkit.core.seeding import seeded


def test_same_seed_same_draws_and_global_state_restored():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        first = torch.rand(4)
    with seeded(7):
        second = torch.rand(4)
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(3), expected_next)  # as if the blocks never ran


def test_none_uses_and_advances_the_global_state():
    torch.manual_seed(5)
    with seeded(None):
        inside = torch.rand(2)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(2), inside)
