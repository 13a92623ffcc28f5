"""CPC's InfoNCE over future steps (objectives/cpc.py) against a naive loop over (i, t, k)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import DataError
from contrastkit.objectives.cpc import cpc_terms


def naive_cpc(predictions: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The module docstring's formula, one term at a time."""
    batch, steps, offsets, _ = predictions.shape
    terms = []
    for i in range(batch):
        for k in range(1, offsets + 1):
            for t in range(steps - k):
                p = predictions[i, t, k - 1]
                candidates = [float(p @ latents[j, t + k]) for j in range(batch)]  # the batch, positive at j = i
                candidates += [float(p @ latents[i, s]) for s in range(steps) if s != t + k]  # the sequence
                denominator = sum(math.exp(c) for c in candidates)
                terms.append(-math.log(math.exp(float(p @ latents[i, t + k])) / denominator))
    return torch.tensor(sum(terms) / len(terms), dtype=torch.float64)


@pytest.mark.parametrize("batch, steps, offsets, dim", [(3, 6, 2, 4), (4, 9, 4, 3), (1, 5, 1, 2)])
def test_cpc_equals_a_naive_loop(batch, steps, offsets, dim):
    generator = torch.Generator().manual_seed(batch * 100 + steps)
    predictions = 0.5 * torch.randn(batch, steps, offsets, dim, generator=generator, dtype=torch.float64)
    latents = torch.randn(batch, steps, dim, generator=generator, dtype=torch.float64)
    loss = objectives.get("cpc")(predictions, latents)
    torch.testing.assert_close(loss, naive_cpc(predictions, latents), rtol=1e-10, atol=1e-10)


def test_cpc_terms_of_a_partition_of_the_batch_sum_to_the_whole():
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randn(5, 7, 3, 4, generator=generator, dtype=torch.float64)
    latents = torch.randn(5, 7, 4, generator=generator, dtype=torch.float64)
    whole = cpc_terms(predictions, latents)
    parts = [cpc_terms(predictions, latents, anchor_rows=slice(a, b)) for a, b in ((0, 2), (2, 3), (3, 5))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total)
    assert all(p.count == whole.count == 5 * (6 + 5 + 4) for p in parts)


def test_a_perfect_predictor_drives_cpc_below_chance():
    latents = 3.0 * torch.nn.functional.normalize(torch.randn(6, 10, 8, dtype=torch.float64), dim=-1)
    offsets = 2
    perfect = torch.stack([torch.roll(latents, -k, dims=1) for k in range(1, offsets + 1)], dim=2)
    chance = math.log(6 + 10 - 1)  # uniform over the batch's and the sequence's candidates
    assert objectives.get("cpc")(perfect, latents) < chance
    assert objectives.get("cpc")(torch.zeros_like(perfect), latents) == pytest.approx(chance)


def test_cpc_refuses_mismatched_shapes_and_too_many_steps():
    with pytest.raises(DataError, match=r"\(B, T, K, D\)"):
        objectives.get("cpc")(torch.randn(2, 5, 2, 3), torch.randn(2, 5, 4))
    with pytest.raises(DataError, match="prediction steps"):
        objectives.get("cpc")(torch.randn(2, 3, 3, 4), torch.randn(2, 3, 4))
