"""objectives/matryoshka.py against a naive loop over the dimensions, with NT-Xent written out by
hand on each re-normalised prefix; its loss_terms split over anchors as GatheredObjective needs;
embedding-valued inputs (a queue) are cut with the embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.matryoshka import Matryoshka, MatryoshkaTerms, default_dims, matryoshka_loss

DIMS = [16, 8, 4]
WEIGHTS = [1.0, 0.5, 2.0]


def _views(n=6, d=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=generator, dtype=torch.float64)
    z_b = z_a + 0.7 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    return z_a.requires_grad_(True), z_b.requires_grad_(True)


def naive_ntxent(z_a, z_b, temperature, keys=None):
    """NT-Xent anchor by anchor: each of the 2N rows against the other 2N - 1 rows (+ the queue)."""
    rows = [v / v.norm() for v in torch.cat([z_a, z_b])]
    queue = [] if keys is None else [k / k.norm() for k in keys]
    n = z_a.shape[0]
    losses = []
    for i, anchor in enumerate(rows):
        positive = (i + n) % (2 * n)
        others = [rows[j] for j in range(2 * n) if j != i] + queue
        denominator = sum(torch.exp(anchor @ other / temperature) for other in others)
        losses.append(-(anchor @ rows[positive]) / temperature + torch.log(denominator))
    return sum(losses) / len(losses)


def naive_matryoshka(z_a, z_b, temperature, dims, weights, keys=None):
    return sum(w * naive_ntxent(z_a[:, :m], z_b[:, :m], temperature, None if keys is None else keys[:, :m])
               for m, w in zip(dims, weights))


def test_loss_and_gradients_equal_a_naive_loop_over_prefixes():
    z_a, z_b = _views()
    objective = objectives.get("matryoshka", objective="infonce", temperature=0.2, dims=DIMS, weights=WEIGHTS)
    assert isinstance(objective, MatryoshkaTerms)
    loss = objective(z_a, z_b)
    expected = naive_matryoshka(z_a, z_b, 0.2, DIMS, WEIGHTS)
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss, (z_a, z_b))
    expected_grads = torch.autograd.grad(expected, (z_a, z_b))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    # The prefixes matter: the full-dimension loss alone is a different number.
    assert not torch.isclose(loss, naive_ntxent(z_a, z_b, 0.2) * sum(WEIGHTS))


def test_queue_keys_are_cut_with_the_embeddings():
    z_a, z_b = _views(seed=1)
    keys = torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    objective = matryoshka_loss(objectives.get("infonce", temperature=0.3), dims=[8, 16])  # any order
    torch.testing.assert_close(objective(z_a, z_b, keys=keys),
                               naive_matryoshka(z_a, z_b, 0.3, [16, 8], [1.0, 1.0], keys=keys))


def test_loss_terms_sum_over_any_split_of_the_anchors():
    z_a, z_b = _views(n=7, seed=3)
    objective = matryoshka_loss(objectives.get("infonce", temperature=0.2), DIMS, WEIGHTS)
    whole = objective.loss_terms(z_a, z_b)
    parts = [objective.loss_terms(z_a, z_b, anchor_rows=rows) for rows in (slice(0, 3), slice(3, 4), slice(4, 7))]
    assert all(part.count == whole.count for part in parts)
    torch.testing.assert_close(sum(part.total for part in parts), whole.total)
    torch.testing.assert_close(whole.mean(), objective(z_a, z_b))


def test_objective_without_loss_terms_is_wrapped_for_the_full_loss_only():
    class Cosine(torch.nn.Module):  # a loss with no loss_terms
        def forward(self, z_a, z_b):
            return -torch.nn.functional.cosine_similarity(z_a, z_b).mean()

    z_a, z_b = _views(seed=4)
    objective = matryoshka_loss(Cosine(), [16, 4], [1.0, 3.0])
    assert type(objective) is Matryoshka and not hasattr(objective, "loss_terms")
    expected = Cosine()(z_a, z_b) + 3.0 * Cosine()(z_a[:, :4], z_b[:, :4])
    torch.testing.assert_close(objective(z_a, z_b), expected)


def test_default_dims_are_the_papers_halvings_down_to_8():
    assert default_dims(384) == [384, 192, 96, 48, 24, 12]
    assert default_dims(64) == [64, 32, 16, 8]
    assert default_dims(5) == [5]
    z_a, z_b = _views(d=32, seed=5)
    torch.testing.assert_close(objectives.get("matryoshka", temperature=0.2)(z_a, z_b),
                               naive_matryoshka(z_a, z_b, 0.2, [32, 16, 8], [1, 1, 1]))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="one Matryoshka weight per dimension"):
        objectives.get("matryoshka", dims=[8, 4], weights=[1.0])
    with pytest.raises(ConfigError, match="distinct"):
        objectives.get("matryoshka", dims=[8, 8])
    with pytest.raises(ConfigError, match="positive integers"):
        objectives.get("matryoshka", dims=[8, 0])
    with pytest.raises(ConfigError, match="not all 0"):
        objectives.get("matryoshka", dims=[8, 4], weights=[0, 0])
    z_a, z_b = _views(d=16)
    with pytest.raises(DataError, match="dimension 32 asked for.*16 features"):
        objectives.get("matryoshka", dims=[32, 8])(z_a, z_b)
    assert math.isfinite(objectives.get("matryoshka", objective="dcl", dims=[16, 8])(z_a, z_b).item())
