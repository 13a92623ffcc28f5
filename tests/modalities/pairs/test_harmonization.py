"""Gradient harmonization: PCGrad per sample in closed form, the curriculum's weights, and the
harmonized backward pass against the plain one."""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.modalities.pairs.harmonization import (
    GradientHarmonizer,
    curriculum_weights,
    project_conflicting,
    row_cosines,
    sample_conflict,
)
from contrastkit.modalities.pairs.method import two_tower_step
from contrastkit.modalities.pairs.two_tower import TwoTowerOptions, build_two_tower


def test_non_conflicting_gradients_are_unchanged():
    torch.manual_seed(0)
    g1 = torch.randn(16, 5)
    g2 = g1 + 0.3 * torch.randn(16, 5)  # close to g1: positive dot product in every row
    assert ((g1 * g2).sum(1) > 0).all()
    p1, p2 = project_conflicting([g1, g2])
    assert torch.equal(p1, g1) and torch.equal(p2, g2)


def test_conflicting_component_is_removed_exactly():
    g1 = torch.tensor([[1.0, 0.0]])
    g2 = torch.tensor([[-1.0, 1.0]])  # cos = -1/sqrt(2)
    p1, p2 = project_conflicting([g1, g2])
    # Closed form: g1' = g1 - (g1.g2 / |g2|^2) g2 = (1, 0) + 0.5 (-1, 1); g2' = g2 - (g2.g1 / |g1|^2) g1.
    assert torch.allclose(p1, torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(p2, torch.tensor([[0.0, 1.0]]))


def test_projection_is_orthogonal_and_along_the_other_gradient():
    torch.manual_seed(1)
    g1, g2 = torch.randn(64, 7, dtype=torch.float64), torch.randn(64, 7, dtype=torch.float64)
    p1, _ = project_conflicting([g1, g2])
    conflicting = (g1 * g2).sum(1) < 0
    assert conflicting.any() and (~conflicting).any()
    # Conflicting rows: the result is orthogonal to g2 and differs from g1 by a multiple of g2.
    assert torch.allclose((p1 * g2).sum(1)[conflicting], torch.zeros(int(conflicting.sum()), dtype=torch.float64),
                          atol=1e-12)
    removed = (g1 - p1)[conflicting]
    assert torch.allclose(row_cosines(removed, -g2[conflicting]).abs(), torch.ones(int(conflicting.sum()),
                                                                                  dtype=torch.float64))
    assert torch.equal(p1[~conflicting], g1[~conflicting])


def _pcgrad_naive(vectors: list[list[float]]) -> list[list[float]]:
    """PCGrad on plain Python lists for one sample: loss k against every other j in order."""
    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))
    out = []
    for k, g in enumerate(vectors):
        current = list(g)
        for j, other in enumerate(vectors):
            if j != k and dot(current, other) < 0:
                factor = dot(current, other) / dot(other, other)
                current = [c - factor * o for c, o in zip(current, other)]
        out.append(current)
    return out


def test_three_losses_match_a_naive_loop():
    torch.manual_seed(2)
    grads = [torch.randn(10, 4, dtype=torch.float64) for _ in range(3)]
    projected = project_conflicting(grads)
    for row in range(10):
        expected = _pcgrad_naive([g[row].tolist() for g in grads])
        for k in range(3):
            assert torch.allclose(projected[k][row], torch.tensor(expected[k], dtype=torch.float64))


def test_sample_conflict_and_curriculum_weights():
    g1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    g2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0], [-1.0, 0.0]])
    conflict = sample_conflict([g1, g2])
    assert torch.allclose(conflict, torch.tensor([1.0, 0.0, -2 ** -0.5, -1.0]))
    # A quarter of 4 samples: the single most conflicting one (row 3).
    assert torch.equal(curriculum_weights(conflict, 0.25), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    # Never more than the conflicting ones (rows 2, 3), even with share 1.
    assert torch.equal(curriculum_weights(conflict, 1.0, floor=0.5), torch.tensor([1.0, 1.0, 0.5, 0.5]))
    harmonizer = GradientHarmonizer(curriculum_share=0.5)
    assert harmonizer.share_at(0.0) == 0.5 and harmonizer.share_at(1.0) == 0.0


def _tiny_model(options: TwoTowerOptions, seed: int = 0):
    torch.manual_seed(seed)
    encoder_a = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8))
    encoder_b = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8))
    return build_two_tower(encoder_a, encoder_b, options, dim_a=8, dim_b=8)


def backward(model, x_a, x_b, view_a, view_b, harmonizer=None) -> dict[str, float]:
    """One step's backward pass, as the engine runs it; returns the step's logs."""
    step = two_tower_step(model, x_a, x_b, view_a, view_b, harmonizer)
    step.backward()
    return step.logs


def _gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_harmonized_backward_without_changes_equals_the_plain_backward():
    """realign=False and no curriculum: the detached-features route must give exactly the plain
    gradient of the summed losses (checks the plumbing of the harmonized backward pass)."""
    options = TwoTowerOptions(in_modality_weights=(0.5, 0.7), embedding_dim=4)
    torch.manual_seed(3)
    x_a, x_b = torch.randn(12, 6), torch.randn(12, 5)
    view_a = x_a + 0.1 * torch.randn_like(x_a)
    view_b = x_b + 0.1 * torch.randn_like(x_b)
    plain, harmonized = _tiny_model(options), _tiny_model(options)
    backward(plain, x_a, x_b, view_a, view_b)
    stats = backward(harmonized, x_a, x_b, view_a, view_b, GradientHarmonizer(realign=False))
    assert "conflicting_share" in stats
    expected, got = _gradients(plain), _gradients(harmonized)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6), name


def test_harmonized_backward_changes_gradients_when_losses_conflict():
    options = TwoTowerOptions(in_modality_weights=(1.0, 1.0), embedding_dim=4)
    torch.manual_seed(4)
    x_a, x_b = torch.randn(12, 6), torch.randn(12, 5)
    view_a, view_b = torch.randn(12, 6), torch.randn(12, 5)  # unrelated views: conflicts are likely
    plain, harmonized = _tiny_model(options), _tiny_model(options)
    backward(plain, x_a, x_b, view_a, view_b)
    stats = backward(harmonized, x_a, x_b, view_a, view_b, GradientHarmonizer(realign=True))
    assert stats["conflicting_share"] > 0
    first_layer = "encoder_a.0.weight"
    assert not torch.allclose(_gradients(plain)[first_layer], _gradients(harmonized)[first_layer])
    # Heads and the temperature get the plain gradient of the sum either way.
    assert torch.allclose(_gradients(plain)["head_a.weight"], _gradients(harmonized)["head_a.weight"], atol=1e-6)
