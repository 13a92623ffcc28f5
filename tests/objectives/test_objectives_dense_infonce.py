"""Dense InfoNCE (objectives/dense_infonce.py) against a naive loop over anchors and keys.

The 2-process test is the catalogue's (tests/nn/test_distributed.py, inputs from
tests/objective_cases.py: ``dense_infonce`` and ``dense_infonce[batch negatives]``)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.dense_infonce import dense_infonce_terms


def naive_dense_infonce(maps_a, maps_b, correspondence, temperature, negatives):
    """The module docstring's formula, one anchor and one key at a time."""
    n, h, w, _ = maps_a.shape
    _, hb, wb, _ = maps_b.shape

    def cosine(u, v):
        return float(u @ v) / (float(u.norm()) * float(v.norm()))

    terms = []
    for i in range(n):
        for r in range(h):
            for c in range(w):
                target = int(correspondence[i, r, c])
                if target < 0:
                    continue
                anchor = maps_a[i, r, c]
                images = [i] if negatives == "image" else range(n)
                denominator = sum(math.exp(cosine(anchor, maps_b[j, q // wb, q % wb]) / temperature)
                                  for j in images for q in range(hb * wb))
                numerator = math.exp(cosine(anchor, maps_b[i, target // wb, target % wb]) / temperature)
                terms.append(-math.log(numerator / denominator))
    return torch.tensor(sum(terms) / max(len(terms), 1), dtype=torch.float64)


def _inputs(n, h, w, hb, wb, d, seed, invalid_share=0.3):
    generator = torch.Generator().manual_seed(seed)
    maps_a = torch.randn(n, h, w, d, generator=generator, dtype=torch.float64)
    maps_b = torch.randn(n, hb, wb, d, generator=generator, dtype=torch.float64)
    correspondence = torch.randint(0, hb * wb, (n, h, w), generator=generator)
    correspondence[torch.rand(n, h, w, generator=generator) < invalid_share] = -1
    return maps_a, maps_b, correspondence


@pytest.mark.parametrize("negatives", ["image", "batch"])
@pytest.mark.parametrize("n, h, w, hb, wb, d, temperature", [(3, 2, 3, 3, 2, 4, 0.1), (2, 4, 4, 2, 2, 3, 0.5),
                                                             (1, 3, 3, 3, 3, 5, 1.0)])
def test_dense_infonce_equals_a_naive_loop(negatives, n, h, w, hb, wb, d, temperature):
    maps_a, maps_b, correspondence = _inputs(n, h, w, hb, wb, d, seed=n * 10 + h)
    loss = objectives.get("dense_infonce", temperature=temperature, negatives=negatives)(
        maps_a, maps_b, correspondence=correspondence)
    expected = naive_dense_infonce(maps_a, maps_b, correspondence, temperature, negatives)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)


def test_the_gradient_equals_finite_differences_of_the_naive_loop():
    maps_a, maps_b, correspondence = _inputs(2, 2, 2, 2, 2, 3, seed=5)
    maps_a.requires_grad_(True)
    objectives.get("dense_infonce", temperature=0.2, negatives="batch")(
        maps_a, maps_b, correspondence=correspondence).backward()
    step = 1e-6
    for index in [(0, 0, 0, 0), (0, 1, 1, 2), (1, 0, 1, 1)]:
        plus, minus = maps_a.detach().clone(), maps_a.detach().clone()
        plus[index] += step
        minus[index] -= step
        numeric = (naive_dense_infonce(plus, maps_b, correspondence, 0.2, "batch")
                   - naive_dense_infonce(minus, maps_b, correspondence, 0.2, "batch")) / (2 * step)
        assert float(maps_a.grad[index]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)


def test_the_terms_of_a_partition_of_the_batch_sum_to_the_whole():
    maps_a, maps_b, correspondence = _inputs(5, 3, 3, 2, 3, 4, seed=1)
    for negatives in ("image", "batch"):
        whole = dense_infonce_terms(maps_a, maps_b, correspondence, 0.1, negatives)
        parts = [dense_infonce_terms(maps_a, maps_b, correspondence, 0.1, negatives, anchor_rows=slice(a, b))
                 for a, b in ((0, 2), (2, 3), (3, 5))]
        torch.testing.assert_close(sum(p.total for p in parts), whole.total)
        assert all(int(p.count) == int(whole.count) == int((correspondence >= 0).sum()) for p in parts)


def test_matching_maps_score_below_chance_and_no_valid_anchor_gives_zero():
    maps_b = torch.randn(4, 3, 3, 8, dtype=torch.float64)
    identity = torch.arange(9).view(1, 3, 3).expand(4, 3, 3)
    objective = objectives.get("dense_infonce", temperature=0.1)
    assert objective(maps_b, maps_b, correspondence=identity) < math.log(9)
    assert objective(torch.zeros_like(maps_b), maps_b, correspondence=identity) == pytest.approx(math.log(9))
    nothing = torch.full((4, 3, 3), -1)
    assert float(objective(maps_b, maps_b, correspondence=nothing)) == 0.0


def test_dense_infonce_refuses_bad_shapes_indices_and_options():
    objective = objectives.get("dense_infonce")
    with pytest.raises(DataError, match="channels last"):
        objective(torch.randn(2, 3, 3), torch.randn(2, 3, 3), correspondence=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(DataError, match=r"\(N, h, w\)"):
        objective(torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4), correspondence=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(DataError, match=r"\[-1, 9\)"):
        objective(torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4), correspondence=torch.full((2, 3, 3), 9))
    with pytest.raises(ConfigError, match="negatives"):
        objectives.get("dense_infonce", negatives="queue")
