"""The advanced objectives (MoCHi, CACR, iSogCLR, GroCo, list-wise Wasserstein, GenView's quality
weighting, CLAN) against independent references: naive loops over anchors written here, closed
forms on hand-sized examples, scipy / scikit-learn, and torch.autograd.gradcheck in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives import OBJECTIVES, get
from contrastkit.objectives.augmented_negatives import (
    augmented_negatives_loss_per_anchor,
    benign_centroid_score,
    benign_distance_score,
)
from contrastkit.objectives.groco import (
    group_ordering_loss_per_anchor,
    relaxed_odd_even_sort,
)
from contrastkit.objectives.isogclr import temperature_gradient
from contrastkit.objectives.listwise import (
    gaussian_wasserstein2_squared,
    ordinal_wasserstein1,
)
from contrastkit.objectives.mochi import (
    draw_mixing_plan,
    hardest_negatives,
    mix_hard_negatives,
    mochi_loss_per_query,
)
from contrastkit.objectives.quality import quality_weights
from tests.ddp import run_distributed

ADVANCED = ["mochi", "cacr", "isogclr", "groco", "listwise", "quality_weighted", "augmented_negatives"]


def randn(*shape: int, seed: int = 0, requires_grad: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_(requires_grad)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_all_advanced_objectives_are_registered():
    for name in ADVANCED:
        assert name in OBJECTIVES


# --------------------------------------------------------------------------------------------- MoCHi


def test_mochi_hardest_negatives_equal_a_sort():
    query, queue = unit(randn(5, 4, seed=1)), unit(randn(30, 4, seed=2))
    chosen = hardest_negatives(query, queue, 7)
    for i in range(5):
        similarities = [float(query[i] @ queue[k]) for k in range(30)]
        expected = sorted(range(30), key=lambda k: -similarities[k])[:7]
        assert chosen[i].tolist() == expected
    assert hardest_negatives(query, queue, 100).shape == (5, 30)  # N is capped at the queue size


def test_mochi_synthetic_negatives_are_unit_norm_detached_and_query_light():
    query = randn(4, 6, seed=3, requires_grad=True)
    queue = randn(20, 6, seed=4, requires_grad=True)
    hard = unit(queue)[hardest_negatives(unit(query), unit(queue), 5)]
    plan = draw_mixing_plan(4, 5, num_mixed=7, num_query_mixed=9, generator=torch.Generator().manual_seed(0))
    synthetic = mix_hard_negatives(unit(query), hard, plan)
    assert synthetic.shape == (4, 16, 6)
    assert not synthetic.requires_grad
    torch.testing.assert_close(synthetic.norm(dim=-1), torch.ones(4, 16, dtype=torch.float64))
    assert (plan.query_weight >= 0).all() and (plan.query_weight < 0.5).all()
    assert (plan.negative_weight >= 0).all() and (plan.negative_weight < 1).all()
    q = unit(query).detach()
    for i in range(4):  # rebuild every mix by hand from the plan
        for m in range(7):
            a = float(plan.negative_weight[i, m])
            h = a * hard[i, plan.first[i, m]] + (1 - a) * hard[i, plan.second[i, m]]
            torch.testing.assert_close(synthetic[i, m], unit(h.detach()))
        for m in range(9):
            b = float(plan.query_weight[i, m])
            h = b * q[i] + (1 - b) * hard[i, plan.query_mixed[i, m]]
            torch.testing.assert_close(synthetic[i, 7 + m], unit(h.detach()))


def _mochi_reference(query, key, queue, plan, num_hardest, temperature):
    """Naive per-query loop: sort the queue by similarity, mix by hand, -log softmax[positive]."""
    q, k, n = unit(query), unit(key), unit(queue)
    losses = []
    for i in range(q.shape[0]):
        order = sorted(range(n.shape[0]), key=lambda j: -float(q[i] @ n[j]))[:num_hardest]
        hard = n[order].detach()
        negatives = [n[j] for j in range(n.shape[0])]
        for m in range(plan.first.shape[1]):
            a = plan.negative_weight[i, m].double()
            negatives.append(unit(a * hard[plan.first[i, m]] + (1 - a) * hard[plan.second[i, m]]))
        for m in range(plan.query_mixed.shape[1]):
            b = plan.query_weight[i, m].double()
            negatives.append(unit(b * q[i].detach() + (1 - b) * hard[plan.query_mixed[i, m]]))
        positive = torch.exp(q[i] @ k[i] / temperature)
        denominator = positive + sum(torch.exp(q[i] @ h / temperature) for h in negatives)
        losses.append(-torch.log(positive / denominator))
    return torch.stack(losses)


def test_mochi_loss_matches_naive_loop():
    query, key, queue = randn(6, 5, seed=5), randn(6, 5, seed=6), randn(25, 5, seed=7)
    objective = get("mochi", temperature=0.3, num_hardest=6, num_mixed=4, num_query_mixed=3, seed=11)
    plan = draw_mixing_plan(6, 6, 4, 3, generator=torch.Generator().manual_seed(11))
    expected = _mochi_reference(query, key, queue, plan, 6, 0.3).mean()
    torch.testing.assert_close(objective(query, key, keys=queue), expected)


def test_mochi_without_mixing_is_moco_infonce():
    query, key, queue = randn(3, 4, seed=8), randn(3, 4, seed=9), randn(10, 4, seed=10)
    loss = get("mochi", temperature=0.5, num_mixed=0, num_query_mixed=0)(query, key, keys=queue)
    q, k, n = unit(query), unit(key), unit(queue)
    closed = torch.stack([
        -(q[i] @ k[i] / 0.5) + torch.log(torch.exp(q[i] @ k[i] / 0.5) + torch.exp(n @ q[i] / 0.5).sum())
        for i in range(3)
    ]).mean()
    torch.testing.assert_close(loss, closed)


def test_mochi_is_reproducible_and_checks_inputs():
    query, key, queue = randn(4, 3, seed=1), randn(4, 3, seed=2), randn(12, 3, seed=3)
    losses = [get("mochi", num_hardest=5, num_mixed=6, num_query_mixed=2, seed=s)(query, key, keys=queue) for s in (1, 1, 2)]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    with pytest.raises(DataError, match="keys="):
        get("mochi")(query, key)
    with pytest.raises(ConfigError):
        get("mochi", max_query_weight=0.7)


def test_mochi_gradcheck():
    # Query-negative mixes contain the (detached) query, which finite differences would see;
    # negative-negative mixes depend on the query only through the (piecewise constant) choice.
    plan = draw_mixing_plan(3, 4, 5, 0, generator=torch.Generator().manual_seed(0))
    queue = randn(9, 4, seed=12)
    torch.autograd.gradcheck(
        lambda q, k: mochi_loss_per_query(q, k, queue, plan, 4, 0.4),
        (randn(3, 4, seed=13, requires_grad=True), randn(3, 4, seed=14, requires_grad=True)),
    )


# ---------------------------------------------------------------------------------------------- CACR


def _cacr_reference(views, positive_temperature, negative_temperature, alpha, beta):
    z = unit(views)
    batch, num_views = z.shape[:2]
    total = 0.0
    for i in range(batch):
        attraction = []
        for v in range(num_views):
            costs = [((z[i, v] - z[i, u]) ** 2).sum() for u in range(num_views) if u != v]
            weights = torch.softmax(torch.stack(costs) / positive_temperature, 0)
            attraction.append(sum(w * alpha * c for w, c in zip(weights, costs)))
        repulsion = []
        for v in range(num_views):
            for u in range(v + 1, num_views):
                costs = [((z[i, v] - z[j, u]) ** 2).sum() for j in range(batch) if j != i]
                weights = torch.softmax(-torch.stack(costs) / negative_temperature, 0)
                repulsion.append(sum(w * -beta * c for w, c in zip(weights, costs)))
        total = total + sum(attraction) / len(attraction) + sum(repulsion) / len(repulsion)
    return total / batch


@pytest.mark.parametrize("num_views", [2, 3])
def test_cacr_matches_naive_loop(num_views):
    views = randn(5, num_views, 4, seed=num_views)
    objective = get("cacr", positive_temperature=0.5, negative_temperature=2.0, alpha=1.5, beta=0.7)
    expected = _cacr_reference(views, 0.5, 2.0, 1.5, 0.7)
    torch.testing.assert_close(objective(views[:, :1], views[:, 1:]), expected)
    if num_views == 2:
        torch.testing.assert_close(objective(views[:, 0], views[:, 1]), expected)


def test_cacr_two_views_closed_form():
    # Two samples, two views: attraction is the positive cost (one positive, weight 1); the one
    # negative of each anchor also has weight 1.
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = torch.tensor([[math.cos(0.3), math.sin(0.3)], [-1.0, 0.0]], dtype=torch.float64)
    c = lambda x, y: float(((x - y) ** 2).sum())  # noqa: E731
    attraction = (c(z_a[0], z_b[0]) + c(z_a[1], z_b[1])) / 2
    repulsion = -(c(z_a[0], z_b[1]) + c(z_a[1], z_b[0])) / 2
    torch.testing.assert_close(get("cacr")(z_a, z_b).item(), attraction + repulsion)


def test_cacr_gradcheck():
    objective = get("cacr", positive_temperature=0.7, negative_temperature=1.3)
    torch.autograd.gradcheck(objective, (randn(4, 3, seed=1, requires_grad=True), randn(4, 2, 3, seed=2, requires_grad=True)))


# ------------------------------------------------------------------------------------------- iSogCLR


def _inner_term_by_hand(z_a, z_b, temperatures):
    """g_r = mean over the 2B - 2 negatives of exp(s_rj / tau_r), by explicit loops."""
    z = unit(torch.cat([z_a, z_b]))
    batch = z_a.shape[0]
    g = []
    for r in range(2 * batch):
        negatives = [j for j in range(2 * batch) if j % batch != r % batch]
        g.append(sum(math.exp(float(z[r] @ z[j]) / float(temperatures[r % batch])) for j in negatives) / len(negatives))
    return torch.tensor(g, dtype=torch.float64)


def test_isogclr_moving_average_matches_hand_computation():
    objective = get("isogclr", dataset_size=10, gamma=0.8, temperature_init=0.2).double()
    indices = torch.tensor([7, 2, 5])
    z_a1, z_b1, z_a2, z_b2 = (randn(3, 4, seed=s) for s in range(4))
    objective(z_a1, z_b1, indices=indices)
    g1 = _inner_term_by_hand(z_a1, z_b1, torch.full((3,), 0.2))
    u1 = (g1[:3] + g1[3:]) / 2  # first visit: u = g for each view, stored as their mean
    torch.testing.assert_close(objective.inner_estimate[indices], u1)
    assert (objective.inner_estimate[[0, 1, 3, 4, 6, 8, 9]] == 0).all()

    temperatures = objective.temperature[indices].clone()
    objective(z_a2, z_b2, indices=indices)
    g2 = _inner_term_by_hand(z_a2, z_b2, temperatures)
    expected = ((0.2 * u1 + 0.8 * g2[:3]) + (0.2 * u1 + 0.8 * g2[3:])) / 2
    torch.testing.assert_close(objective.inner_estimate[indices], expected)


def _dro_objective(z_a, z_b, temperatures, rho):
    """(1/B) sum over the 2B anchors of tau log mean_j exp((s_rj - s_rp) / tau) + tau rho, by loops."""
    z = unit(torch.cat([z_a, z_b]))
    batch = z_a.shape[0]
    total = 0
    for r in range(2 * batch):
        tau = temperatures[r % batch]
        partner = (r + batch) % (2 * batch)
        terms = [torch.exp((z[r] @ z[j] - z[r] @ z[partner]) / tau) for j in range(2 * batch) if j % batch != r % batch]
        total = total + tau * torch.log(sum(terms) / len(terms)) + tau * rho
    return total / batch


def test_isogclr_gradient_is_the_dro_gradient_when_the_estimate_is_exact():
    # With gamma = 1 (or at a sample's first visit) u equals the batch's inner term, so the
    # surrogate's gradient must be the exact gradient of the DRO objective.
    z_a, z_b = randn(4, 3, seed=20, requires_grad=True), randn(4, 3, seed=21, requires_grad=True)
    objective = get("isogclr", dataset_size=4, gamma=1.0, temperature_init=0.3).double()
    objective(z_a, z_b, indices=torch.arange(4)).backward()
    reference_a, reference_b = z_a.detach().clone().requires_grad_(), z_b.detach().clone().requires_grad_()
    _dro_objective(reference_a, reference_b, torch.full((4,), 0.3, dtype=torch.float64), 0.4).backward()
    torch.testing.assert_close(z_a.grad, reference_a.grad)
    torch.testing.assert_close(z_b.grad, reference_b.grad)


def test_isogclr_temperature_step_follows_the_dro_temperature_gradient():
    z_a, z_b = randn(3, 4, seed=30), randn(3, 4, seed=31)
    tau = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    objective = get("isogclr", dataset_size=3, gamma=1.0, rho=0.4, temperature_lr=0.01, temperature_momentum=0.5).double()
    objective.temperature.copy_(tau)
    objective(z_a, z_b, indices=torch.arange(3))

    # dF/dtau by autograd on the naive objective, one anchor row at a time.
    z = unit(torch.cat([z_a, z_b]))
    per_row = []
    for r in range(6):
        t = tau[r % 3].clone().requires_grad_()
        terms = [torch.exp(z[r] @ z[j] / t) for j in range(6) if j % 3 != r % 3]
        (t * torch.log(sum(terms) / len(terms)) + t * 0.4).backward()
        per_row.append(t.grad)
    autograd_gradient = torch.stack(per_row)
    formula = temperature_gradient(z @ z.T, tau.repeat(2), _inner_term_by_hand(z_a, z_b, tau), 0.4)
    torch.testing.assert_close(formula, autograd_gradient)

    step = ((autograd_gradient[:3] + autograd_gradient[3:]) / 2).clamp(-3, 3)
    momentum = 0.5 * step  # from a zero momentum buffer
    torch.testing.assert_close(objective.temperature_momentum_buffer, momentum)
    torch.testing.assert_close(objective.temperature, (tau - 0.01 * momentum).clamp(0.05, 1.0))


def test_isogclr_temperatures_stay_within_bounds():
    objective = get("isogclr", dataset_size=12, temperature_lr=5.0, temperature_min=0.1, temperature_max=0.4)
    for step in range(6):
        indices = torch.randperm(12, generator=torch.Generator().manual_seed(step))[:6]
        objective(torch.randn(6, 4) * 3, torch.randn(6, 4), indices=indices)
    assert (objective.temperature >= 0.1).all() and (objective.temperature <= 0.4).all()
    assert ((objective.temperature == 0.1) | (objective.temperature == 0.4)).any()  # the bounds were hit


def test_isogclr_checkpoint_round_trip():
    def batches(seed):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(4):
            yield torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator), torch.randperm(9, generator=generator)[:5]

    trained = get("isogclr", dataset_size=9)
    for z_a, z_b, indices in batches(0):
        trained(z_a, z_b, indices=indices)
    restored = get("isogclr", dataset_size=9)
    restored.load_state_dict(trained.state_dict())
    assert set(trained.state_dict()) == {"inner_estimate", "temperature", "temperature_momentum_buffer"}
    for (z_a, z_b, indices) in batches(1):
        assert torch.equal(trained(z_a, z_b, indices=indices), restored(z_a, z_b, indices=indices))
    for name, value in trained.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name


def test_isogclr_eval_mode_leaves_state_alone_and_bad_indices_fail():
    objective = get("isogclr", dataset_size=6).eval()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    objective(torch.randn(3, 2), torch.randn(3, 2), indices=torch.tensor([0, 1, 2]))
    assert all(torch.equal(before[k], v) for k, v in objective.state_dict().items())
    with pytest.raises(DataError, match="dataset_size"):
        objective(torch.randn(3, 2), torch.randn(3, 2), indices=torch.tensor([0, 1, 6]))
    with pytest.raises(DataError, match="indices="):
        objective(torch.randn(3, 2), torch.randn(3, 2))


def imbalanced_digits(frequent: int = 120, rare: int = 10, seed: int = 0):
    """Centred pixel vectors of sklearn's bundled digits: classes 0-4 frequent, 5-9 rare."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in range(10):
        rows = torch.from_numpy(np.flatnonzero(y == label))
        keep.append(rows[torch.randperm(len(rows), generator=generator)[: frequent if label < 5 else rare]])
    keep = torch.cat(keep)
    x = torch.tensor(x, dtype=torch.float32)[keep]
    return x - x.mean(0), torch.from_numpy(y)[keep]


def test_isogclr_gives_frequent_semantics_larger_temperatures():
    # The paper's claim, on fixed features (raw digits pixels, whose classes already cluster) so
    # that only the temperature dynamics run: an anchor whose class is frequent has many similar
    # negatives, and the DRO temperature step flattens its weights with a larger tau.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = imbalanced_digits()
        objective = get("isogclr", dataset_size=len(x), temperature_lr=0.05)
        generator = torch.Generator().manual_seed(0)
        for _ in range(12):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x) - 1, 64):
                rows = order[start : start + 64]
                noise = lambda: 2 * torch.randn(len(rows), x.shape[1], generator=generator)  # noqa: E731
                objective(x[rows] + noise(), x[rows] + noise(), indices=rows)
    finally:
        torch.set_num_threads(threads)
    tau = objective.temperature
    per_class = torch.stack([tau[y == label].mean() for label in range(10)])
    assert per_class[:5].min() > per_class[5:].max(), per_class


def _isogclr_state_worker(rank, world, steps):
    from contrastkit.nn.distributed import GatheredObjective

    objective = get("isogclr", dataset_size=16).double()
    wrapped = GatheredObjective(objective, local_loss=True)
    for z_a, z_b, indices in steps:
        rows = slice(4 * rank, 4 * rank + 4)
        local_a, local_b = z_a[rows].clone().requires_grad_(), z_b[rows].clone().requires_grad_()
        wrapped(local_a, local_b, indices=indices[rows]).backward()
    return {k: v.clone() for k, v in objective.state_dict().items()}


@pytest.mark.distributed
def test_isogclr_state_is_identical_on_two_processes_and_one():
    generator = torch.Generator().manual_seed(3)
    steps = [
        (torch.randn(8, 5, generator=generator, dtype=torch.float64), torch.randn(8, 5, generator=generator, dtype=torch.float64),
         torch.randperm(16, generator=generator)[:8])
        for _ in range(3)
    ]
    per_rank = run_distributed(_isogclr_state_worker, steps)
    single = get("isogclr", dataset_size=16).double()
    for z_a, z_b, indices in steps:
        single(z_a, z_b, indices=indices)
    for name, value in single.state_dict().items():
        assert torch.equal(per_rank[0][name], per_rank[1][name]), name
        torch.testing.assert_close(per_rank[0][name], value, rtol=1e-12, atol=1e-12)
    assert (single.temperature != 0.1).sum() > 0  # the steps did move temperatures


# --------------------------------------------------------------------------------------------- GroCo


@pytest.mark.parametrize("swap", ["logistic", "cauchy"])
def test_relaxed_sort_is_doubly_stochastic_and_consistent(swap):
    values = randn(4, 7, seed=40)
    for steepness in (0.5, 3.0, 50.0):
        sorted_values, permutation = relaxed_odd_even_sort(values, steepness, swap)
        ones = torch.ones(4, 7, dtype=torch.float64)
        torch.testing.assert_close(permutation.sum(1), ones)
        torch.testing.assert_close(permutation.sum(2), ones)
        assert (permutation >= 0).all()
        torch.testing.assert_close(sorted_values, (values.unsqueeze(1) @ permutation).squeeze(1))


@pytest.mark.parametrize("swap", ["logistic", "cauchy"])
def test_relaxed_sort_approaches_the_hard_sort(swap):
    values = randn(6, 8, seed=41)
    hard = F.one_hot(torch.argsort(values, dim=1), 8).transpose(1, 2).double()  # hard[b, i, j]: i at j
    errors = [
        (relaxed_odd_even_sort(values, steepness, swap)[1] - hard).abs().max().item()
        for steepness in (1.0, 10.0, 100.0, 1e4, 1e6)
    ]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3
    sorted_values, _ = relaxed_odd_even_sort(values, 1e6, swap)
    torch.testing.assert_close(sorted_values, values.sort(dim=1).values, atol=1e-4, rtol=0)


def test_relaxed_sort_of_two_values_closed_form():
    a, b, s = 0.3, -0.2, 4.0
    alpha = 1 / (1 + math.exp(-s * (b - a)))  # probability that a <= b
    sorted_values, permutation = relaxed_odd_even_sort(torch.tensor([[a, b]], dtype=torch.float64), s, "logistic")
    torch.testing.assert_close(permutation[0], torch.tensor([[alpha, 1 - alpha], [1 - alpha, alpha]], dtype=torch.float64))
    torch.testing.assert_close(sorted_values[0], torch.tensor([alpha * a + (1 - alpha) * b, (1 - alpha) * a + alpha * b], dtype=torch.float64))


def _naive_relaxed_sort_matrix(values, steepness):
    """Odd-even transposition network on Python lists, logistic comparators: P[i][j]."""
    n = len(values)
    x = list(values)
    p = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for layer in range(n):
        for low in range(layer % 2, n - 1, 2):
            alpha = 1 / (1 + math.exp(-steepness * (x[low + 1] - x[low])))
            x[low], x[low + 1] = alpha * x[low] + (1 - alpha) * x[low + 1], (1 - alpha) * x[low] + alpha * x[low + 1]
            for i in range(n):
                p[i][low], p[i][low + 1] = alpha * p[i][low] + (1 - alpha) * p[i][low + 1], (1 - alpha) * p[i][low] + alpha * p[i][low + 1]
    return p


def _groco_reference(z_a, z_b, num_negatives, steepness):
    z = [unit(z_a), unit(z_b)]
    batch = z_a.shape[0]
    losses = []
    for i in range(batch):
        per_view = []
        for v in (0, 1):
            anchor = z[v][i]
            positive = [float(anchor @ z[1 - v][i])]
            negatives = sorted(float(anchor @ z[v][j]) for j in range(batch) if j != i)[-num_negatives:]
            ordered = sorted(negatives) + positive
            p = _naive_relaxed_sort_matrix(ordered, steepness)
            k = len(negatives)
            bce = 0.0
            for element in range(len(ordered)):
                top = sum(p[element][k:])
                bce += -math.log(top) if element >= k else -math.log(1 - top)
            per_view.append(bce / len(ordered))
        losses.append(sum(per_view) / 2)
    return sum(losses) / batch


def test_groco_matches_naive_loop():
    z_a, z_b = randn(6, 4, seed=42), randn(6, 4, seed=43)
    objective = get("groco", num_negatives=3, steepness=5.0, swap="logistic")
    torch.testing.assert_close(objective(z_a, z_b).item(), _groco_reference(z_a, z_b, 3, 5.0))


def test_groco_one_positive_one_negative_closed_form():
    # Per anchor: x = [negative, positive], alpha = f(s (pos - neg)); both elements' BCE is -log alpha.
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = torch.tensor([[0.8, 0.6], [0.6, 0.8]], dtype=torch.float64)
    s = 2.0
    expected = []
    for anchor, positive, negative in ((z_a[0], z_b[0], z_a[1]), (z_b[0], z_a[0], z_b[1]), (z_a[1], z_b[1], z_a[0]), (z_b[1], z_a[1], z_b[0])):
        difference = float(anchor @ positive - anchor @ negative)
        alpha = math.atan(s * difference) / math.pi + 0.5
        expected.append(-math.log(alpha))
    loss = get("groco", num_negatives=1, steepness=s, swap="cauchy")(z_a, z_b)
    torch.testing.assert_close(loss.item(), sum(expected) / 4)


def test_groco_loss_vanishes_when_positives_lead_by_far():
    positive = torch.tensor([[0.9, 0.95]], dtype=torch.float64)
    negative = torch.tensor([[-0.9, -0.5, 0.0]], dtype=torch.float64)
    assert group_ordering_loss_per_anchor(positive, negative, 1e5, "logistic").item() < 1e-6
    assert group_ordering_loss_per_anchor(negative[:, :2], positive.repeat(1, 1), 1e5, "logistic").item() > 5


def test_groco_gradcheck():
    torch.autograd.gradcheck(
        lambda p, n: group_ordering_loss_per_anchor(p, n, 3.0, "cauchy"),
        (randn(3, 2, seed=44, requires_grad=True), randn(3, 4, seed=45, requires_grad=True)),
    )
    objective = get("groco", num_negatives=2, steepness=2.0, stop_gradient=False)
    torch.autograd.gradcheck(objective, (randn(4, 3, seed=46, requires_grad=True), randn(4, 3, seed=47, requires_grad=True)))


# ---------------------------------------------------------------------------------------- list-wise


def test_ordinal_wasserstein_matches_scipy():
    generator = torch.Generator().manual_seed(50)
    relevance = torch.tensor([[3, 0, 1, 1, 2], [0, 0, 2, 3, 3], [1, 1, 1, 1, 2]], dtype=torch.float64)
    predicted = torch.softmax(torch.randn(3, 5, generator=generator, dtype=torch.float64), 1)
    target = torch.softmax(torch.randn(3, 5, generator=generator, dtype=torch.float64), 1)
    ours = ordinal_wasserstein1(predicted, target, relevance)
    for i in range(3):
        reference = scipy.stats.wasserstein_distance(relevance[i], relevance[i], predicted[i], target[i])
        assert ours[i].item() == pytest.approx(reference, abs=1e-12)
    # hand example: all mass at grade 0 vs all at grade 3 costs 3
    hand = ordinal_wasserstein1(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0, 3]]))
    assert hand.item() == pytest.approx(3.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (covariances of points on the
    simplex are singular, which scipy.linalg.sqrtm warns about)."""
    eigenvalues, eigenvectors = scipy.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def test_gaussian_wasserstein_matches_the_sqrtm_formula():
    generator = torch.Generator().manual_seed(51)
    for batch, length in ((6, 4), (3, 5), (8, 2)):
        p = torch.softmax(torch.randn(batch, length, generator=generator, dtype=torch.float64), 1)
        t = torch.softmax(torch.randn(batch, length, generator=generator, dtype=torch.float64), 1)
        mean_p, mean_t = p.mean(0).numpy(), t.mean(0).numpy()
        cov_p, cov_t = np.cov(p.numpy(), rowvar=False), np.cov(t.numpy(), rowvar=False)
        root_p = _psd_sqrt(cov_p)
        cross = _psd_sqrt(root_p @ cov_t @ root_p)
        expected = np.sum((mean_p - mean_t) ** 2) + np.trace(cov_p + cov_t - 2 * cross)
        assert gaussian_wasserstein2_squared(p, t).item() == pytest.approx(expected, abs=1e-6)
    # one dimension: W2^2 = (mu_1 - mu_2)^2 + (sigma_1 - sigma_2)^2
    x, y = randn(7, 1, seed=52), randn(7, 1, seed=53) * 3 + 1
    closed = (x.mean() - y.mean()) ** 2 + (x.std() - y.std()) ** 2
    torch.testing.assert_close(gaussian_wasserstein2_squared(x, y), closed)


def test_listwise_distributions_and_losses_match_a_loop():
    query, candidates = randn(4, 3, seed=54), randn(4, 5, 3, seed=55)
    relevance = torch.tensor([[3, 2, 1, 0, 0], [0, 1, 0, 2, 3], [1, 1, 0, 0, 3], [2, 0, 0, 0, 0]])
    predicted = torch.stack([
        torch.softmax(torch.stack([F.cosine_similarity(query[i], candidates[i, l], dim=0) for l in range(5)]) / 0.1, 0)
        for i in range(4)
    ])
    target = torch.softmax(relevance.double() / 2.0, 1)
    objective = get("listwise", temperature=0.1, label_temperature=2.0)
    ours_p, ours_t, _ = objective.distributions(query, candidates, relevance)
    torch.testing.assert_close(ours_p, predicted)
    torch.testing.assert_close(ours_t, target)
    torch.testing.assert_close(objective(query, candidates, relevance=relevance), gaussian_wasserstein2_squared(predicted, target))
    w1 = get("listwise", temperature=0.1, label_temperature=2.0, distance="ordinal_w1")(query, candidates, relevance=relevance)
    reference = np.mean([
        scipy.stats.wasserstein_distance(relevance[i], relevance[i], predicted[i], target[i]) for i in range(4)
    ])
    assert w1.item() == pytest.approx(reference, abs=1e-12)


def test_listwise_in_batch_negatives_pad_other_lists_with_relevance_zero():
    query, candidates = randn(3, 4, seed=56), randn(3, 2, 4, seed=57)
    relevance = torch.tensor([[2, 1], [3, 0], [1, 1]])
    objective = get("listwise", in_batch_negatives=True, distance="ordinal_w1")
    predicted, target, full = objective.distributions(query, candidates, relevance)
    assert predicted.shape == (3, 6)
    expected = torch.tensor([[2, 1, 0, 0, 0, 0], [0, 0, 3, 0, 0, 0], [0, 0, 0, 0, 1, 1]])
    assert torch.equal(full, expected)
    cosine = F.cosine_similarity(query[1], candidates[2, 0], dim=0)
    assert predicted[1, 4].item() == pytest.approx((torch.exp(cosine / 0.05) / torch.exp(
        F.cosine_similarity(query[1].expand(6, 4), candidates.reshape(6, 4), dim=1) / 0.05).sum()).item())
    with pytest.raises(ConfigError, match="local_loss=False"):
        get("listwise").loss_terms(query, candidates, relevance=relevance)


@pytest.mark.parametrize("distance", ["gaussian_w2", "ordinal_w1"])
def test_listwise_gradcheck(distance):
    relevance = torch.tensor([[3, 1, 0], [0, 2, 1], [1, 0, 0], [2, 2, 0]])
    objective = get("listwise", temperature=0.5, distance=distance)
    torch.autograd.gradcheck(
        lambda q, c: objective(q, c, relevance=relevance),
        (randn(4, 3, seed=58, requires_grad=True), randn(4, 3, 3, seed=59, requires_grad=True)),
    )


# ---------------------------------------------------------------------------------- quality weights


def _symmetric_infonce_by_hand(z_a, z_b, temperature, i):
    a, b = unit(z_a), unit(z_b)
    ab = -(a[i] @ b[i]) / temperature + torch.log(sum(torch.exp(a[i] @ b[j] / temperature) for j in range(len(a))))
    ba = -(b[i] @ a[i]) / temperature + torch.log(sum(torch.exp(b[i] @ a[j] / temperature) for j in range(len(a))))
    return (ab + ba) / 2


def test_quality_weights_are_a_detached_softmax_with_mean_one():
    quality = torch.tensor([0.2, -0.1, 0.5, 0.0], requires_grad=True)
    weights = quality_weights(quality, sharpness=2.0)
    assert not weights.requires_grad
    expected = torch.tensor([math.exp(2 * q) for q in (0.2, -0.1, 0.5, 0.0)])
    torch.testing.assert_close(weights, 4 * expected / expected.sum())
    assert weights.mean().item() == pytest.approx(1.0)


def test_quality_weighted_loss_matches_a_loop():
    z_a, z_b, quality = randn(5, 3, seed=60), randn(5, 3, seed=61), randn(5, seed=62)
    objective = get("quality_weighted", temperature=0.3, sharpness=1.5)
    weights = [math.exp(1.5 * float(q)) for q in quality]
    weights = [5 * w / sum(weights) for w in weights]
    expected = sum(weights[i] * _symmetric_infonce_by_hand(z_a, z_b, 0.3, i) for i in range(5)) / 5
    torch.testing.assert_close(objective(z_a, z_b, quality=quality), expected)
    uniform = sum(_symmetric_infonce_by_hand(z_a, z_b, 0.3, i) for i in range(5)) / 5
    torch.testing.assert_close(objective(z_a, z_b), uniform)
    torch.testing.assert_close(objective(z_a, z_b, quality=torch.full((5,), 0.7)), uniform)


def test_quality_weighted_gradcheck():
    objective = get("quality_weighted", temperature=0.5)
    quality = randn(4, seed=63)
    torch.autograd.gradcheck(
        lambda a, b: objective(a, b, quality=quality),
        (randn(4, 3, seed=64, requires_grad=True), randn(4, 3, seed=65, requires_grad=True)),
    )


# ----------------------------------------------------------------------------------------------- CLAN


def test_augmented_negatives_likelihood_form_matches_the_formula():
    benign, augmented = randn(5, 4, seed=70), randn(6, 4, seed=71)
    b, a, t = unit(benign), unit(augmented), 0.2
    expected = []
    for i in range(5):
        positive = sum(math.exp(float(b[i] @ b[j]) / t) for j in range(5) if j != i)
        negative = sum(math.exp(float(b[i] @ a[k]) / t) for k in range(6))
        expected.append(-math.log(positive / (positive + negative)))
    torch.testing.assert_close(augmented_negatives_loss_per_anchor(benign, augmented, t), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(get("augmented_negatives", temperature=t)(benign, augmented).item(), sum(expected) / 5)


def test_augmented_negatives_margin_form_matches_the_authors_definition():
    benign, augmented = randn(4, 3, seed=72), randn(4, 3, seed=73)
    b, a = unit(benign), unit(augmented)
    d = lambda x, y: (1 - float(x @ y)) / 2  # noqa: E731
    similar = [d(b[i], b[j]) for i in range(4) for j in range(4) if i != j]
    hinges = [max(0.0, 0.6 - d(b[i], a[k])) for i in range(4) for k in range(4)]
    active = [h for h in hinges if h > 0]
    assert 0 < len(active) < 16  # the margin is active for some pairs only
    expected = 0.3 * sum(similar) / len(similar) + 0.7 * sum(active) / len(active)
    loss = get("augmented_negatives", form="margin", margin=0.6, alpha=0.3)(benign, augmented)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_benign_scores_match_scikit_learn():
    train, test = randn(30, 5, seed=74), randn(12, 5, seed=75)
    for k in (1, 3):
        distances, _ = NearestNeighbors(n_neighbors=k, metric="cosine").fit(train.numpy()).kneighbors(test.numpy())
        ours = benign_distance_score(train, test, k=k, chunk_size=5)
        np.testing.assert_allclose(ours.numpy(), distances.mean(1), atol=1e-6)
    centroid = unit(train).mean(0)
    expected = 1 - F.cosine_similarity(test, centroid.expand_as(test), dim=1)
    torch.testing.assert_close(benign_centroid_score(train, test), expected.float())
    with pytest.raises(ConfigError):
        benign_distance_score(train, test, k=31)


@pytest.mark.parametrize("form", ["likelihood", "margin"])
def test_augmented_negatives_gradcheck(form):
    objective = get("augmented_negatives", form=form, margin=0.7)
    torch.autograd.gradcheck(objective, (randn(4, 3, seed=76, requires_grad=True), randn(4, 3, seed=77, requires_grad=True)))


def test_mochi_checkpoint_round_trip_continues_the_same_draws():
    g = torch.Generator().manual_seed(11)
    query, key = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    queue = torch.randn(32, 8, generator=g)
    first = get("mochi", num_hardest=8, num_mixed=6, num_query_mixed=3, seed=5)
    first(query, key, keys=queue)  # advance the generator by one draw
    saved = first.state_dict()
    expected = first(query, key, keys=queue)
    restored = get("mochi", num_hardest=8, num_mixed=6, num_query_mixed=3, seed=99)
    restored.load_state_dict(saved)
    torch.testing.assert_close(restored(query, key, keys=queue), expected)
    fresh = get("mochi", num_hardest=8, num_mixed=6, num_query_mixed=3, seed=5)
    assert not torch.allclose(fresh(query, key, keys=queue), expected)  # a fresh one draws the first mixes
