"""MSN's loss (issue 21) against a reference written from the paper with scalar float64 loops that
share no code with contrastkit.objectives: anchor and target assignments to the normalised prototypes,
the targets sharpened (p ** (1 / T), renormalised) and scaled by Sinkhorn-Knopp (prototype rows to 1/K,
sample columns to 1/B, as the paper's code), the cross-entropy of every anchor view, and the
mean-entropy term log K - H(mean p) (Assran et al. 2022, Sec. 3). Values and gradients (anchors,
targets get none, prototypes) equal the loops; ``anchor_rows`` splits the sum exactly. The 2-process
rows are in tests/objective_cases.py, run by tests/nn/test_distributed.py; LightlySSL's MSNLoss gives
the same values (benchmarks/lightly_losses.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives import OBJECTIVES
from contrastkit.objectives.msn import MSNLoss, msn_terms


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(v: list) -> list:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _softmax(values: list, scale: float) -> list:
    top = max(values)
    weights = [math.exp((v - top) * scale) for v in values]
    return [w / sum(weights) for w in weights]


def naive_targets(targets, prototypes, tau, sharpen, iterations) -> list[list[float]]:
    units = [_unit([float(x) for x in q]) for q in prototypes]
    rows = []
    for t in targets:
        u = _unit([float(x) for x in t])
        p = _softmax([sum(a * b for a, b in zip(u, q)) for q in units], 1 / tau)
        sharp = [x ** (1 / sharpen) for x in p]
        rows.append([x / sum(sharp) for x in sharp])
    if iterations:
        b, k = len(rows), len(units)
        total = sum(sum(r) for r in rows)
        q = [[rows[i][j] / total for i in range(b)] for j in range(k)]  # K x B
        for _ in range(iterations):
            for j in range(k):
                s = sum(q[j])
                q[j] = [x / s / k for x in q[j]]
            for i in range(b):
                s = sum(q[j][i] for j in range(k))
                for j in range(k):
                    q[j][i] = q[j][i] / s / b
        rows = [[b * q[j][i] for j in range(k)] for i in range(b)]
    return rows


def naive_loss(anchors, targets, prototypes, tau, sharpen, weight, iterations) -> torch.Tensor:
    """Mean over anchor views of H(p+, p), plus weight * (log K - H(mean p)), as torch scalars (for autograd)."""
    target_p = naive_targets(targets.detach(), prototypes.detach(), tau, sharpen, iterations)
    b, m, _ = anchors.shape
    k = prototypes.shape[0]
    units = [prototypes[j] / prototypes[j].norm() for j in range(k)]
    total, mean_p = anchors.new_zeros(()), [anchors.new_zeros(()) for _ in range(k)]
    for i in range(b):
        for v in range(m):
            z = anchors[i, v] / anchors[i, v].norm()
            logits = [torch.dot(z, q) / tau for q in units]
            normaliser = torch.logsumexp(torch.stack(logits), dim=0)
            for j in range(k):
                total = total - target_p[i][j] * (logits[j] - normaliser)
                mean_p[j] = mean_p[j] + torch.exp(logits[j] - normaliser) / (b * m)
    entropy = -sum(p * torch.log(p) for p in mean_p)
    return total / (b * m) + weight * (math.log(k) - entropy)


@pytest.mark.parametrize(("tau", "sharpen", "weight", "iterations"),
                         [(0.1, 0.25, 1.0, 3), (0.2, 0.5, 0.0, 0), (0.3, 1.0, 2.5, 1)])
def test_value_and_gradients_equal_loops(tau, sharpen, weight, iterations):
    anchors, targets, prototypes = _randn(4, 2, 3, seed=0), _randn(4, 3, seed=1), _randn(5, 3, seed=2)
    leaves = [x.clone().requires_grad_(True) for x in (anchors, targets, prototypes)]
    loss = MSNLoss(temperature=tau, sharpen_temperature=sharpen, regularization_weight=weight,
                   sinkhorn_iterations=iterations)
    value = loss(leaves[0], leaves[1], prototypes=leaves[2])
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    reference_leaves = [x.clone().requires_grad_(True) for x in (anchors, prototypes)]
    expected = naive_loss(reference_leaves[0], targets, reference_leaves[1], tau, sharpen, weight, iterations)
    expected_grads = torch.autograd.grad(expected, reference_leaves)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0], expected_grads[0], rtol=1e-9, atol=1e-12)
    assert grads[1] is None or not grads[1].any()  # the targets carry no gradient
    torch.testing.assert_close(grads[2], expected_grads[1], rtol=1e-9, atol=1e-12)


def test_one_anchor_view_as_a_matrix_and_anchor_rows_split_the_sum():
    anchors, targets, prototypes = _randn(6, 4, seed=3), _randn(6, 4, seed=4), _randn(7, 4, seed=5)
    loss = MSNLoss()
    torch.testing.assert_close(loss(anchors, targets, prototypes=prototypes),
                               loss(anchors.unsqueeze(1), targets, prototypes=prototypes))
    whole = msn_terms(anchors.unsqueeze(1), targets, prototypes)
    parts = [msn_terms(anchors.unsqueeze(1), targets, prototypes, anchor_rows=rows) for rows in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total)
    assert all(p.count == whole.count == 6 for p in parts)


def test_registered_and_checked():
    assert isinstance(OBJECTIVES.build("msn"), MSNLoss)
    with pytest.raises(ConfigError, match="sharpen_temperature"):
        MSNLoss(sharpen_temperature=2.0)
    with pytest.raises(DataError, match="prototypes"):
        MSNLoss()(_randn(2, 3, seed=0), _randn(2, 3, seed=1), prototypes=_randn(4, 5, seed=2))
