"""VICRegL's loss (issue 20) against a naive re-derivation: matching by explicit loops over the
images and cells, VICReg's statistics by explicit sums over samples, the views' pairs averaged as
the paper's formula says. Also: alpha = 1 is VICReg with its covariance averaged over the views,
each rank's share adds up to the whole loss, and bad options are refused.
"""

from __future__ import annotations

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.vicreg import VICReg
from contrastkit.objectives.vicregl import VICRegL, vicregl_terms

EPS = 1e-4


def naive_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v and c of (N, M, D) features: at each position m, over the N samples, by explicit sums."""
    n, positions, d = x.shape
    variances, covariances = [], []
    for m in range(positions):
        rows = [x[i, m] for i in range(n)]
        mean = sum(rows) / n
        centred = [row - mean for row in rows]
        hinge = 0.0
        for k in range(d):
            var = sum(c[k] ** 2 for c in centred) / (n - 1)
            hinge = hinge + torch.clamp(1 - torch.sqrt(var + EPS), min=0)
        variances.append(hinge / d)
        penalty = 0.0
        for k in range(d):
            for l in range(d):
                if k != l:
                    cov = sum(c[k] * c[l] for c in centred) / (n - 1)
                    penalty = penalty + cov ** 2
        covariances.append(penalty / d)
    return sum(variances) / positions, sum(covariances) / positions


def naive_vicreg(x, y, weights) -> torch.Tensor:
    lam, mu, nu = weights
    vx, cx = naive_statistics(x)
    vy, cy = naive_statistics(y)
    return lam * ((x - y) ** 2).mean() + mu * (vx + vy) / 2 + nu * (cx + cy) / 2


def naive_match(inputs, candidates, distance, keep, order):
    """(N, P, D), (N, Q, D): per image, each cell's nearest candidate (first on ties), then the
    ``keep`` closest pairs (lower index first on ties), in cell order or distance order."""
    xs, ys = [], []
    for i in range(inputs.shape[0]):
        pairs = []
        for p in range(inputs.shape[1]):
            best, best_q = None, None
            for q in range(candidates.shape[1]):
                value = float(distance(i, p, q).detach())
                if best is None or value < best:
                    best, best_q = value, q
            pairs.append((best, p, best_q))
        pairs.sort(key=lambda t: (t[0], t[1]))
        kept = pairs[: (len(pairs) if keep is None else min(keep, len(pairs)))]
        if order == "index":
            kept.sort(key=lambda t: t[1])
        xs.append(torch.stack([inputs[i, p] for _, p, _ in kept]))
        ys.append(torch.stack([candidates[i, q] for _, _, q in kept]))
    return torch.stack(xs), torch.stack(ys)


def naive_vicregl(z_a, z_b, maps_a, maps_b, grid_a, grid_b, weights=(25.0, 25.0, 1.0), alpha=0.75,
                  num_matches=(20, 4), l2_all_matches=True, order="index"):
    lam, mu, nu = weights
    va, ca = naive_statistics(z_a.unsqueeze(1))
    vb, cb = naive_statistics(z_b.unsqueeze(1))
    global_loss = lam * ((z_a - z_b) ** 2).mean() + mu * (va + vb) / 2 + nu * (ca + cb) / 2
    maps = {"a": maps_a.flatten(1, 2), "b": maps_b.flatten(1, 2)}
    grids = {"a": grid_a.flatten(1, 2), "b": grid_b.flatten(1, 2)}

    def feature_distance(first, second):
        return lambda i, p, q: torch.sqrt(((maps[first][i, p] - maps[second][i, q]) ** 2).sum())

    def grid_distance(first, second):
        return lambda i, p, q: torch.sqrt(((grids[first][i, p] - grids[second][i, q]) ** 2).sum())

    def term(first, second, keep, distance):
        x, y = naive_match(maps[first], maps[second], distance(first, second), keep, order)
        return naive_vicreg(x, y, weights)

    l2_keep = (None, None) if l2_all_matches else num_matches
    local = 0.0
    for first, second in (("a", "b"), ("b", "a")):
        by_feature = (term(first, second, l2_keep[0], feature_distance) + term(second, first, l2_keep[1], feature_distance)) / 2
        by_location = (term(first, second, num_matches[0], grid_distance) + term(second, first, num_matches[1], grid_distance)) / 2
        local = local + by_feature + by_location  # one ordered pair of views
    return alpha * global_loss + (1 - alpha) * local / 2  # the mean over the two ordered pairs


def inputs(n=5, d=3, local_d=3, sizes=((3, 3), (2, 3)), seed=0):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_b = z_a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    (ha, wa), (hb, wb) = sizes
    maps_a = torch.randn(n, ha, wa, local_d, generator=g, dtype=torch.float64)
    maps_b = torch.randn(n, hb, wb, local_d, generator=g, dtype=torch.float64)
    grid_a = 32 * torch.rand(n, ha, wa, 2, generator=g, dtype=torch.float64)
    grid_b = 32 * torch.rand(n, hb, wb, 2, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (z_a, z_b, maps_a, maps_b, grid_a, grid_b)]


SETTINGS = [
    dict(),  # the authors' defaults
    dict(num_matches=(4, 2)),
    dict(num_matches=(3, 5), l2_all_matches=False),
    dict(num_matches=(4, 2), l2_all_matches=False, order="distance"),  # LightlySSL's settings
    dict(weights=(1.0, 2.0, 3.0), alpha=0.3, num_matches=(2, 2)),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_loss_and_gradients_equal_the_naive_derivation(setting):
    tensors = inputs()
    weights = setting.get("weights", (25.0, 25.0, 1.0))
    objective = VICRegL(*weights, alpha=setting.get("alpha", 0.75), num_matches=setting.get("num_matches", (20, 4)),
                        l2_all_matches=setting.get("l2_all_matches", True), match_order=setting.get("order", "index"))
    loss = objective(tensors[0], tensors[1], maps_a=tensors[2], maps_b=tensors[3], grid_a=tensors[4], grid_b=tensors[5])
    expected = naive_vicregl(*tensors, **setting)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(loss, tensors[:4])
    want = torch.autograd.grad(expected, tensors[:4])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_the_order_of_kept_matches_changes_the_statistics():
    # Variance and covariance are taken per kept position across the batch, so sorting the kept pairs by
    # distance (LightlySSL) instead of position (the authors) is a different loss, not a relabelling.
    tensors = [t.detach() for t in inputs(n=6, sizes=((3, 3), (3, 3)), seed=3)]
    values = [float(VICRegL(match_order=order, num_matches=(4, 4))(tensors[0], tensors[1], maps_a=tensors[2],
                                                                     maps_b=tensors[3], grid_a=tensors[4], grid_b=tensors[5]))
              for order in ("index", "distance")]
    assert abs(values[0] - values[1]) > 1e-6


def test_alpha_one_is_vicreg_with_the_covariance_averaged_over_the_views():
    tensors = inputs(n=8, d=6)
    got = VICRegL(alpha=1.0)(tensors[0], tensors[1], maps_a=tensors[2], maps_b=tensors[3],
                             grid_a=tensors[4], grid_b=tensors[5])
    torch.testing.assert_close(got, VICReg(covariance_weight=0.5)(tensors[0], tensors[1]))


def test_the_shares_of_the_samples_add_up_to_the_loss():
    # Under data parallelism each rank sums its own samples' terms against the gathered batch (count N).
    tensors = [t.detach() for t in inputs(n=7)]
    whole = vicregl_terms(*tensors)
    parts = [vicregl_terms(*tensors, anchor_rows=rows) for rows in (slice(0, 3), slice(3, 7))]
    assert whole.count == 7 and all(part.count == 7 for part in parts)
    torch.testing.assert_close(sum(part.total for part in parts), whole.total)


def test_registered_and_checked():
    objective = objectives.get("vicregl", alpha=0.9)
    assert isinstance(objective, VICRegL) and objective.alpha == 0.9
    assert "local feature maps" in VICRegL.not_for_view_pairs
    with pytest.raises(ConfigError, match="alpha"):
        VICRegL(alpha=1.5)
    with pytest.raises(ConfigError, match="num_matches"):
        VICRegL(num_matches=(20,))
    with pytest.raises(ConfigError, match="match_order"):
        VICRegL(match_order="random")
    z_a, z_b, maps_a, maps_b, grid_a, grid_b = inputs()
    with pytest.raises(DataError, match="grid_b"):
        VICRegL()(z_a, z_b, maps_a=maps_a, maps_b=maps_b, grid_a=grid_a, grid_b=grid_b[:, :1])
