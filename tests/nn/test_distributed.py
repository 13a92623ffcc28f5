"""Two processes (gloo, CPU) must give the loss and gradients of one process on the whole batch.

For every objective of the catalogue (tests/objective_cases.py supplies the inputs), and both
``local_loss`` modes of GatheredObjective: the loss on every rank equals the single-process loss
on the concatenated batch, the input gradient on rank r divided by the world size equals the
single-process gradient of rank r's rows, and the objective's parameter gradients averaged over
the ranks (what DDP does) equal the single-process parameter gradients.
"""

from __future__ import annotations

import traceback

import pytest
import torch
import torch.distributed as dist

from contrastkit.nn import distributed
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.core.errors import ConfigError
from contrastkit.objectives import OBJECTIVES
from tests.ddp import run_distributed
from tests.objective_cases import all_case_labels, case_for, make_inputs

pytestmark = pytest.mark.distributed

WORLD = 2
DIM = 5
LABELS = all_case_labels(OBJECTIVES.names())


def _build(name: str, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)  # objectives with randomly initialised parameters start identical
    return OBJECTIVES.build(name, **kwargs).double()


def _split_rows(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _local_inputs(objective, z_a, z_b, extra, rows: slice):
    per_sample = getattr(objective, "per_sample_inputs", ())
    local_extra = {k: (v[rows] if k in per_sample else v) for k, v in extra.items()}
    z_a = z_a[rows].clone().requires_grad_(True)
    z_b = None if z_b is None else z_b[rows].clone().requires_grad_(True)  # None: a one-view objective
    return z_a, z_b, local_extra


def _loss_and_grads(objective, z_a, z_b, extra):
    loss = objective(z_a, z_b, **extra)
    loss.backward()
    inner = getattr(objective, "objective", objective)  # the parameters of a GatheredObjective's objective
    params = {k: p.grad.clone() for k, p in inner.named_parameters() if p.grad is not None}
    grad_b = None if z_b is None else z_b.grad
    return {"loss": loss.detach(), "grad_a": z_a.grad, "grad_b": grad_b, "params": params}


def _modes(distributed_kind: str) -> list[bool]:
    return [False] if distributed_kind == "full_only" else [False, True]


def _catalogue_worker(rank: int, world: int, labels: list[str], sizes: list[int]) -> dict:
    results: dict = {}
    for label in labels:
        name, case = case_for(label)
        for local_loss in _modes(case.distributed):
            try:
                objective = _build(name, case.kwargs)
                z_a, z_b, extra = make_inputs(sum(sizes), DIM, case)
                z_a, z_b, extra = _local_inputs(objective, z_a, z_b, extra, _split_rows(sizes, rank))
                wrapped = GatheredObjective(objective, local_loss=local_loss)
                results[label, local_loss] = _loss_and_grads(wrapped, z_a, z_b, extra)
            except Exception:  # reported by the test of this label, not as a crash of all of them
                results[label, local_loss] = traceback.format_exc()
    return results


def _single_process(label: str, n: int) -> dict:
    name, case = case_for(label)
    objective = _build(name, case.kwargs)
    z_a, z_b, extra = make_inputs(n, DIM, case)
    z_a, z_b, extra = _local_inputs(objective, z_a, z_b, extra, slice(0, n))
    return _loss_and_grads(objective, z_a, z_b, extra)


def _check(label: str, local_loss: bool, per_rank: list, sizes: list[int], atol: float = 1e-10) -> None:
    name, case = case_for(label)
    for result in per_rank:
        assert not isinstance(result, str), f"{label} (local_loss={local_loss}) failed on a rank:\n{result}"
    if case.distributed == "not_exact":
        for result in per_rank:
            assert torch.isfinite(result["loss"]) and torch.equal(result["loss"], per_rank[0]["loss"])
            assert all(g is None or torch.isfinite(g).all() for g in (result["grad_a"], result["grad_b"]))
        return
    reference = _single_process(label, sum(sizes))
    for rank, result in enumerate(per_rank):
        rows = _split_rows(sizes, rank)
        torch.testing.assert_close(result["loss"], reference["loss"], atol=atol, rtol=1e-9)
        for key in ("grad_a", "grad_b"):
            if reference[key] is None:  # an objective may not back-propagate into one input
                assert result[key] is None, f"{label}: {key} has a gradient only under DDP"
            else:
                torch.testing.assert_close(result[key] / WORLD, reference[key][rows], atol=atol, rtol=1e-8)
    assert per_rank[0]["params"].keys() == reference["params"].keys()
    for key, grad in reference["params"].items():
        averaged = sum(result["params"][key] for result in per_rank) / WORLD
        torch.testing.assert_close(averaged, grad, atol=atol, rtol=1e-8, msg=f"{label}: parameter {key}")


@pytest.fixture(scope="module")
def catalogue_results() -> list[dict]:
    # One pair of processes runs every objective: spawning costs seconds, the objectives do not.
    return run_distributed(_catalogue_worker, LABELS, [4, 4], world_size=WORLD)


@pytest.mark.parametrize("local_loss", [False, True], ids=["full", "local"])
@pytest.mark.parametrize("label", LABELS)
def test_two_processes_equal_one(catalogue_results, label, local_loss):
    _, case = case_for(label)
    if local_loss not in _modes(case.distributed):
        pytest.skip(f"{label} has no loss_terms; only local_loss=False is supported ({case.note})")
    _check(label, local_loss, [r[label, local_loss] for r in catalogue_results], [4, 4])


UNEQUAL_LABELS = ["ntxent", "supcon", "clip", "siglip", "dclw", "infonce[queue]",
                  "query_key_infonce[queue]", "in_batch_softmax", "queued_clip", "neighbour_contrast",
                  "forecast_contrastive"]


def test_unequal_local_batches():
    sizes = [3, 5]
    per_rank = run_distributed(_catalogue_worker, UNEQUAL_LABELS, sizes, world_size=WORLD)
    for label in UNEQUAL_LABELS:
        for local_loss in (False, True):
            _check(label, local_loss, [r[label, local_loss] for r in per_rank], sizes)


def _gather_worker(rank: int, world: int) -> dict:
    x = torch.full((rank + 1, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
    gathered = distributed.gather_with_grad(x)
    # A different loss on each rank: the gradient of rank r's rows must be the sum over ranks.
    weights = torch.arange(gathered.numel(), dtype=torch.float64).reshape(gathered.shape) * (rank + 1)
    (gathered * weights).sum().backward()
    labels = distributed.gather_no_grad(torch.tensor([10 * rank + i for i in range(rank + 1)]))
    return {
        "gathered": gathered.detach(),
        "grad": x.grad,
        "labels": labels,
        "world": distributed.world_size(),
        "rank": distributed.rank(),
        "offset": distributed.rank_offset(rank + 1),
    }


def test_gather_with_grad_sums_gradients_over_ranks():
    per_rank = run_distributed(_gather_worker, world_size=WORLD)
    expected = torch.tensor([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    # sum over ranks r of (r + 1) * arange = 3 * arange, rows of rank 0: [0], of rank 1: [1, 2].
    total_weights = 3 * torch.arange(6, dtype=torch.float64).reshape(3, 2)
    for rank, result in enumerate(per_rank):
        assert result["world"] == 2 and result["rank"] == rank
        assert result["offset"] == [0, 1][rank]
        torch.testing.assert_close(result["gathered"], expected)
        assert result["labels"].tolist() == [0, 10, 11]
        rows = [slice(0, 1), slice(1, 3)][rank]
        torch.testing.assert_close(result["grad"], total_weights[rows])


def test_single_process_is_identity():
    assert not dist.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x
    assert distributed.rank_offset(3) == 0
    objective = OBJECTIVES.build("ntxent")
    z_a, z_b = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(GatheredObjective(objective)(z_a, z_b), objective(z_a, z_b))


def test_local_loss_needs_loss_terms():
    class Plain(torch.nn.Module):
        def forward(self, z_a, z_b):
            return (z_a - z_b).pow(2).mean()

    with pytest.raises(ConfigError, match="local_loss=False"):
        GatheredObjective(Plain(), local_loss=True)
    GatheredObjective(Plain(), local_loss=False)
