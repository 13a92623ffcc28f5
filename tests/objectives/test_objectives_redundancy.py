"""Barlow Twins, VICReg and TiCo (issue 20) against naive loops and closed forms, values and gradients.

Each reference below loops over dimensions and samples with scalar torch operations in float64 (means,
variances, correlations and dot products written out element by element, no matrix products, no
F.normalize / mse_loss / var), written from the papers' formulas and sharing no code with
contrastkit.objectives; the gradients are autograd's through that loop, compared with the library's,
and ``torch.autograd.gradcheck`` checks the library's against finite differences. The closed forms
are inputs whose loss is known by hand (whitened identical views, opposite views, orthonormal rows).

The 2-process rows of the three names are in tests/objective_cases.py (run by
tests/nn/test_distributed.py); here: unequal local batches, and TiCo's running covariance over two
steps on 2 processes (what its 2-process version means: every rank updates the buffer from the
whole gathered batch, so after each step the buffer, the loss and the gradients equal one process
on the concatenated batch).
"""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives import OBJECTIVES, get
from contrastkit.objectives.barlow_twins import barlow_twins_loss
from contrastkit.objectives.tico import tico_terms
from contrastkit.objectives.vicreg import covariance_term, invariance_term, variance_term, vicreg_terms
from tests.ddp import run_distributed
from tests.nn.test_distributed import _catalogue_worker, _check

NAMES = ["barlow_twins", "vicreg", "tico"]


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _views(n: int = 7, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    z_a = _randn(n, d, seed=seed)
    return z_a, z_a + _randn(n, d, seed=seed + 1, scale=0.5)


# ----------------------------------------------------------------------------- naive references


def _column(z: torch.Tensor, k: int) -> list[torch.Tensor]:
    return [z[i, k] for i in range(z.shape[0])]


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    total = values[0].new_zeros(())
    for value in values:
        total = total + value
    return total / len(values)


def _sum_of_squared_deviations(values: list[torch.Tensor]) -> torch.Tensor:
    mean = _mean(values)
    total = values[0].new_zeros(())
    for value in values:
        total = total + (value - mean) ** 2
    return total


def _unit_rows(z: torch.Tensor) -> list[list[torch.Tensor]]:
    rows = []
    for i in range(z.shape[0]):
        norm = torch.sqrt(sum(z[i, k] ** 2 for k in range(z.shape[1])))
        rows.append([z[i, k] / norm for k in range(z.shape[1])])
    return rows


def naive_barlow_twins(z_a: torch.Tensor, z_b: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """Zbontar et al. 2021, Eq. 1-2: each column standardised over the batch (divisor N), C = Z_a^T Z_b / N."""
    n, d = z_a.shape

    def standardised(z, k):
        column = _column(z, k)
        mean, std = _mean(column), torch.sqrt(_sum_of_squared_deviations(column) / n + eps)
        return [(value - mean) / std for value in column]

    a = [standardised(z_a, k) for k in range(d)]
    b = [standardised(z_b, k) for k in range(d)]
    loss = z_a.new_zeros(())
    for k in range(d):
        for l in range(d):
            c_kl = sum(a[k][i] * b[l][i] for i in range(n)) / n
            loss = loss + ((1 - c_kl) ** 2 if k == l else lam * c_kl**2)
    return loss


def naive_vicreg(z_a: torch.Tensor, z_b: torch.Tensor, lam: float = 25.0, mu: float = 25.0, nu: float = 1.0,
                 eps: float = 1e-4) -> torch.Tensor:
    """Bardes et al. 2022: lam * MSE + mu * (v(Z_a) + v(Z_b)) / 2 + nu * (c(Z_a) + c(Z_b)), divisor N - 1."""
    n, d = z_a.shape
    invariance = sum((z_a[i, k] - z_b[i, k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

    def variance(z):
        hinge = z.new_zeros(())
        for k in range(d):
            std = torch.sqrt(_sum_of_squared_deviations(_column(z, k)) / (n - 1) + eps)
            hinge = hinge + torch.clamp(1 - std, min=0)
        return hinge / d

    def covariance(z):
        means = [_mean(_column(z, k)) for k in range(d)]
        total = z.new_zeros(())
        for k in range(d):
            for l in range(d):
                if k != l:
                    cov = sum((z[i, k] - means[k]) * (z[i, l] - means[l]) for i in range(n)) / (n - 1)
                    total = total + cov**2
        return total / d

    return lam * invariance + mu * (variance(z_a) + variance(z_b)) / 2 + nu * (covariance(z_a) + covariance(z_b))


def naive_tico_step(z_a: torch.Tensor, z_b: torch.Tensor, previous: list[list[float]], beta: float, rho: float):
    """Zhu et al. 2022: C_t = beta C_{t-1} + (1 - beta) mean_i u_i u_i^T (no gradient), then
    -mean_i u_i . v_i + rho mean_i u_i^T C_t u_i. Returns (loss, C_t as nested lists of floats)."""
    n, d = z_a.shape
    u, v = _unit_rows(z_a), _unit_rows(z_b)
    constant = [[float(value.detach()) for value in row] for row in u]  # C_t carries no gradient
    covariance = [[beta * previous[k][l] + (1 - beta) * sum(constant[i][k] * constant[i][l] for i in range(n)) / n
                   for l in range(d)] for k in range(d)]
    loss = z_a.new_zeros(())
    for i in range(n):
        loss = loss - sum(u[i][k] * v[i][k] for k in range(d)) / n
        quadratic = sum(u[i][k] * covariance[k][l] * u[i][l] for k in range(d) for l in range(d))
        loss = loss + rho * quadratic / n
    return loss, covariance


def _value_and_grads(fn, z_a, z_b):
    a, b = _leaves(z_a, z_b)
    loss = fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


def _assert_same(ours, reference):
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- against the loops


@pytest.mark.parametrize("lam", [5e-3, 0.3])
def test_barlow_twins_equals_the_loop(lam):
    z_a, z_b = _views()
    objective = get("barlow_twins", redundancy_weight=lam).double()
    _assert_same(_value_and_grads(objective, z_a, z_b),
                 _value_and_grads(lambda a, b: naive_barlow_twins(a, b, lam, 1e-5), z_a, z_b))


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 3.0, 0.5)])
@pytest.mark.parametrize("scale", [0.4, 1.0])  # small embeddings: every variance hinge is active
def test_vicreg_equals_the_loop(weights, scale):
    z_a, z_b = _views(seed=3)
    z_a, z_b = scale * z_a, scale * z_b
    lam, mu, nu = weights
    objective = get("vicreg", invariance_weight=lam, variance_weight=mu, covariance_weight=nu).double()
    _assert_same(_value_and_grads(objective, z_a, z_b),
                 _value_and_grads(lambda a, b: naive_vicreg(a, b, lam, mu, nu), z_a, z_b))


def test_tico_equals_the_loop_over_three_steps_and_keeps_the_running_covariance():
    beta, rho, d = 0.7, 3.0, 4
    objective = get("tico", covariance_momentum=beta, covariance_weight=rho).double()
    previous = [[0.0] * d for _ in range(d)]
    for step in range(3):
        z_a, z_b = _views(n=6, d=d, seed=10 * step)
        ours = _value_and_grads(objective, z_a, z_b)
        holder = {}

        def reference(a, b, previous=previous):
            loss, holder["covariance"] = naive_tico_step(a, b, previous, beta, rho)
            return loss

        _assert_same(ours, _value_and_grads(reference, z_a, z_b))
        previous = holder["covariance"]
        torch.testing.assert_close(objective.covariance, torch.tensor(previous, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-14)


def test_tico_leaves_its_covariance_alone_in_eval_mode_and_with_a_given_dim():
    objective = get("tico", dim=4).double()
    assert objective.covariance.shape == (4, 4) and not objective.covariance.any()
    z_a, z_b = _views(n=6, d=4)
    objective.eval()
    first = objective(z_a, z_b)
    assert not objective.covariance.any()
    torch.testing.assert_close(objective(z_a, z_b), first)  # the same C_t = (1 - beta) B each time
    objective.train()
    objective(z_a, z_b)
    assert objective.covariance.any()


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_gradcheck(name):
    objective = get(name).double()
    z_a, z_b = _views(n=5, d=3, seed=7)
    assert torch.autograd.gradcheck(lambda a, b: objective(a, b), _leaves(z_a, z_b))


def test_gradcheck_tico_for_a_given_covariance():
    # TiCo's C_t depends on z_a but carries no gradient, so finite differences (which move C_t)
    # can only check the terms for a fixed C.
    z_a, z_b = _views(n=5, d=3, seed=7)
    covariance = _randn(3, 3, seed=8)
    covariance = covariance @ covariance.T
    assert torch.autograd.gradcheck(lambda a, b: tico_terms(a, b, covariance, 2.0).mean(), _leaves(z_a, z_b))


@pytest.mark.parametrize("name", NAMES)
def test_loss_terms_of_a_partition_add_up_to_the_loss(name):
    z_a, z_b = _views(n=7, d=4, seed=5)
    objective = get(name).double().eval()
    whole = objective.loss_terms(z_a, z_b)
    parts = [objective.loss_terms(z_a, z_b, anchor_rows=s) for s in (slice(0, 3), slice(3, 4), slice(4, 7))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total, rtol=1e-12, atol=1e-13)
    assert all(float(p.count) == float(whole.count) == 7 for p in parts)
    torch.testing.assert_close(objective(z_a, z_b), whole.total / whole.count, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- closed forms


def _whitened(n: int, d: int, seed: int, divisor: int) -> torch.Tensor:
    """(n, d) with column means 0 and Z^T Z / divisor = I (so every std is 1 with that divisor)."""
    x = _randn(n, d, seed=seed)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))  # orthonormal columns, still with mean 0
    return q * math.sqrt(divisor)


def test_barlow_twins_is_zero_for_identical_whitened_views():
    z = _whitened(16, 5, seed=1, divisor=16)
    torch.testing.assert_close(barlow_twins_loss(z, z, redundancy_weight=1.0, eps=0.0),
                               torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    # With BatchNorm's eps every diagonal entry is 1 / sqrt(1 + eps)^2: d (1 - 1 / (1 + eps))^2.
    expected = 5 * (1 - 1 / (1 + 1e-5)) ** 2
    torch.testing.assert_close(barlow_twins_loss(z, z), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-15, rtol=1e-6)


def test_barlow_twins_of_opposite_views_is_4d_and_ignores_scale_and_shift():
    z = _whitened(16, 5, seed=2, divisor=16)
    torch.testing.assert_close(barlow_twins_loss(z, -z, eps=0.0), torch.tensor(20.0, dtype=torch.float64))
    z_a, z_b = _views(n=9, d=4, seed=4)
    shifted = 3.0 * z_a + _randn(1, 4, seed=5)  # standardisation removes per-column scale and shift
    scale = torch.tensor([0.5, 2.0, 7.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(barlow_twins_loss(shifted * scale, z_b, eps=0.0),
                               barlow_twins_loss(z_a, z_b, eps=0.0))


def test_vicreg_terms_by_hand():
    wide = _randn(12, 6, seed=8, scale=3.0)
    assert (wide.var(dim=0) >= 1).all()
    assert variance_term(wide).item() == 0.0  # every std >= 1: the hinge is off
    constant = torch.ones(12, 6, dtype=torch.float64)
    torch.testing.assert_close(variance_term(constant), torch.tensor(1 - math.sqrt(1e-4), dtype=torch.float64))
    assert covariance_term(constant).item() == 0.0
    z = _whitened(12, 6, seed=9, divisor=11)  # covariance (divisor N - 1) is the identity
    torch.testing.assert_close(covariance_term(z), torch.tensor(0.0, dtype=torch.float64), atol=1e-24, rtol=0)
    assert variance_term(z).item() == 0.0  # std = sqrt(1 + eps) >= 1
    assert invariance_term(z, z).item() == 0.0
    torch.testing.assert_close(vicreg_terms(z, z).mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-22, rtol=0)
    # Collapse to one point costs mu * (1 - sqrt(eps)) = 25 * 0.99 with the paper's weights.
    torch.testing.assert_close(get("vicreg")(constant, constant), torch.tensor(25 * 0.99, dtype=torch.float64))


def test_tico_first_step_with_orthonormal_identical_rows():
    # C_0 = 0, rows e_1..e_N (N <= d): C_1 = (1 - beta) I_N / N on their span, so
    # loss = -1 + rho (1 - beta) / N.
    z = torch.eye(6, dtype=torch.float64)[:4] * 3.0
    beta, rho = 0.9, 8.0
    objective = get("tico", covariance_momentum=beta, covariance_weight=rho).double()
    torch.testing.assert_close(objective(z, z), torch.tensor(-1 + rho * (1 - beta) / 4, dtype=torch.float64))
    # A second step on the same batch: C_2 = beta C_1 + (1 - beta) B = (1 - beta^2) B.
    torch.testing.assert_close(objective(z, z), torch.tensor(-1 + rho * (1 - beta**2) / 4, dtype=torch.float64))


# ----------------------------------------------------------------------------- options, errors, registry


def test_registered_usable_on_view_pairs_and_checked():
    for name in NAMES:
        assert name in OBJECTIVES.names()
        assert not OBJECTIVES.factory(name).not_for_view_pairs, name
    with pytest.raises(ConfigError, match="redundancy_weight"):
        get("barlow_twins", redundancy_weight=-1.0)
    with pytest.raises(ConfigError, match="variance_weight"):
        get("vicreg", variance_weight=-1.0)
    with pytest.raises(ConfigError, match="covariance_momentum"):
        get("tico", covariance_momentum=1.0)
    for name in NAMES:
        with pytest.raises(DataError, match="at least 2 samples"):
            get(name)(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(DataError, match="dim=3"):
        get("tico", dim=4)(torch.randn(5, 3), torch.randn(5, 3))


def test_tico_buffer_round_trips_a_state_dict_when_allocated_lazily():
    trained = get("tico")
    trained(torch.randn(6, 3), torch.randn(6, 3))
    fresh = get("tico")
    assert fresh.covariance.shape == (0, 0)
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.covariance, trained.covariance)


# ----------------------------------------------------------------------------- two processes


@pytest.mark.distributed
def test_unequal_local_batches_equal_one_process():
    labels, sizes = ["barlow_twins", "vicreg", "tico", "barlow_twins[lambda 0.2]"], [3, 5]
    per_rank = run_distributed(_catalogue_worker, labels, sizes, world_size=2)
    for label in labels:
        for local_loss in (False, True):
            _check(label, local_loss, [r[label, local_loss] for r in per_rank], sizes)


def _two_tico_steps(objective, batches, rows: slice) -> list[dict]:
    results = []
    for z_a, z_b in batches:
        a, b = _leaves(z_a[rows], z_b[rows])
        loss = objective(a, b)
        loss.backward()
        inner = getattr(objective, "objective", objective)
        results.append({"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad,
                        "covariance": inner.covariance.clone()})
    return results


def _tico_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [_views(n=n, d=4, seed=20 + 2 * step) for step in range(2)]


def _tico_worker(rank: int, world: int, sizes: list[int], local_loss: bool) -> list[dict]:
    start = sum(sizes[:rank])
    objective = GatheredObjective(get("tico", covariance_momentum=0.5).double(), local_loss=local_loss)
    return _two_tico_steps(objective, _tico_batches(sum(sizes)), slice(start, start + sizes[rank]))


@pytest.mark.distributed
@pytest.mark.parametrize("local_loss", [False, True], ids=["full", "local"])
def test_tico_running_covariance_on_two_processes_equals_one_process(local_loss):
    sizes = [3, 5]
    per_rank = run_distributed(_tico_worker, sizes, local_loss, world_size=2)
    reference = _two_tico_steps(get("tico", covariance_momentum=0.5).double(), _tico_batches(8), slice(0, 8))
    for rank, steps in enumerate(per_rank):
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        for mine, single in zip(steps, reference, strict=True):
            torch.testing.assert_close(mine["loss"], single["loss"], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(mine["covariance"], single["covariance"], rtol=1e-12, atol=1e-14)
            for key in ("grad_a", "grad_b"):  # DDP averages over the 2 ranks
                torch.testing.assert_close(mine[key] / 2, single[key][rows], rtol=1e-10, atol=1e-12)
