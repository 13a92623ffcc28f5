"""MMCR's objective and NNCLR's support set and loss, each against a second derivation (issue 20).

- MMCR: the value equals numpy's float64 SVD of the centroid matrix; two closed forms (orthogonal
  centroids of norm r give -B r, plus lambda sqrt(2) (cos + sin) per sample; centroids along one
  direction give -sqrt(B)); gradcheck in float64; the loss_terms of a partition sum to the whole;
  two processes (equal and unequal local batches, both local_loss modes) equal one process on the
  concatenated batch. The catalogue-wide 2-process table (tests/nn/test_distributed.py) runs the
  rows of tests/objective_cases.py as well.
- NNCLR: the support set's neighbour equals a brute-force argmax of cosine similarity (and keys
  from two processes give every process the lookups of one process); the loss equals a naive loop
  over the 2N anchors of NT-Xent in both directions, and on two processes (two steps, the second
  looking up what the first stored) equals one process on the whole batch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.methods.nnclr import nnclr_loss
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.support_set import SupportSet
from contrastkit.objectives import OBJECTIVES, InfoNCE
from contrastkit.objectives.mmcr import MMCRLoss, mmcr_loss, mmcr_terms
from tests.ddp import run_distributed


def random_views(batch: int = 6, k: int = 3, d: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centre = torch.randn(batch, 1, d, generator=generator, dtype=torch.float64)
    return centre + 0.7 * torch.randn(batch, k, d, generator=generator, dtype=torch.float64)


def numpy_mmcr(views: np.ndarray, local_weight: float) -> float:
    unit = views / np.linalg.norm(views, axis=-1, keepdims=True)
    centroid_matrix = unit.mean(axis=1)
    global_term = np.linalg.svd(centroid_matrix, compute_uv=False).sum()
    local_terms = [np.linalg.svd(unit[i], compute_uv=False).sum() for i in range(len(unit))]
    return float(-global_term + local_weight * np.mean(local_terms))


# -- MMCR ---------------------------------------------------------------------------------------------

def test_mmcr_is_registered_and_its_module_equals_the_function():
    views = random_views()
    assert isinstance(OBJECTIVES.build("mmcr"), MMCRLoss)
    torch.testing.assert_close(MMCRLoss(local_weight=0.2)(views), mmcr_loss(views, 0.2))


@pytest.mark.parametrize("local_weight", [0.0, 0.5])
@pytest.mark.parametrize("shape", [(6, 3, 5), (7, 2, 4), (3, 4, 8)])  # B > d, B > d with k = 2, B < d
def test_mmcr_equals_the_singular_values_of_numpy(shape, local_weight):
    views = random_views(*shape)
    expected = numpy_mmcr(views.numpy(), local_weight)
    assert MMCRLoss(local_weight)(views).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_mmcr_closed_form_orthogonal_centroids():
    # Sample i's two views are cos(phi) e_i +- sin(phi) f with f orthogonal to every e_i: the
    # centroids are cos(phi) e_i (orthogonal, norm r = cos(phi)), so ||C||_* = B r; each sample's
    # (2, d) matrix has singular values sqrt(2) cos(phi) and sqrt(2) sin(phi).
    batch, d, phi = 4, 6, 0.4
    eye = torch.eye(d, dtype=torch.float64)
    f = eye[batch]
    views = torch.stack([torch.stack([math.cos(phi) * eye[i] + math.sin(phi) * f,
                                      math.cos(phi) * eye[i] - math.sin(phi) * f]) for i in range(batch)])
    views = views * torch.tensor([0.5, 3.0, 1.0, 7.0], dtype=torch.float64).view(batch, 1, 1)  # norms do not matter
    assert MMCRLoss()(views).item() == pytest.approx(-batch * math.cos(phi), rel=1e-12)
    local = math.sqrt(2) * (math.cos(phi) + math.sin(phi))
    assert MMCRLoss(0.3)(views).item() == pytest.approx(-batch * math.cos(phi) + 0.3 * local, rel=1e-12)
    # unit, orthogonal centroids (all views of a sample equal) reach the minimum -sqrt(B min(B, d)) = -B
    same = eye[:batch].unsqueeze(1).expand(batch, 3, d)
    assert MMCRLoss()(same).item() == pytest.approx(-batch, rel=1e-12)


def test_mmcr_of_centroids_along_one_direction_is_minus_root_b():
    # Rank-1 C with unit rows: the nuclear norm is the Frobenius norm, sqrt(B), whatever the signs.
    u = torch.randn(5, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    views = (signs.view(7, 1, 1) * u).expand(7, 2, 5)
    assert MMCRLoss()(views).item() == pytest.approx(-math.sqrt(7), rel=1e-12)


def test_mmcr_two_view_call_stacks_the_views():
    views = random_views(k=2)
    objective = MMCRLoss(0.1)
    torch.testing.assert_close(objective(views[:, 0], views[:, 1]), objective(views))
    # (B, d) and (B, k, d) inputs mix: the views of z_a come first
    torch.testing.assert_close(objective(random_views(k=3)[:, 0], random_views(k=3)[:, 1:]),
                               objective(random_views(k=3)))


@pytest.mark.parametrize("local_weight", [0.0, 0.4])
def test_mmcr_gradcheck(local_weight):
    views = random_views(5, 3, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: MMCRLoss(local_weight)(v), (views,))
    z_a, z_b = random_views(5, 2, 6).unbind(1)
    inputs = (z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda a, b: MMCRLoss(local_weight)(a, b), inputs)


def test_mmcr_terms_of_a_partition_sum_to_the_whole():
    views = random_views(8, 3, 5)
    whole = mmcr_terms(views, 0.2)
    parts = [mmcr_terms(views, 0.2, anchor_rows=rows) for rows in (slice(0, 3), slice(3, 8))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total)
    assert all(p.count == whole.count == 8 for p in parts)


def test_mmcr_in_float32_and_bfloat16_inputs():
    views = random_views(16, 4, 8)
    reference = MMCRLoss(0.1)(views).item()
    assert MMCRLoss(0.1)(views.float()).item() == pytest.approx(reference, rel=1e-5)
    # bf16 embeddings are upcast: only their rounding (3 significant digits) differs
    assert MMCRLoss(0.1)(views.bfloat16()).item() == pytest.approx(reference, rel=2e-2)


def test_mmcr_refuses_bad_inputs():
    with pytest.raises(ConfigError, match="local_weight"):
        MMCRLoss(local_weight=-1.0)
    with pytest.raises(DataError, match=r"\(B, k, d\)"):
        mmcr_loss(torch.randn(4, 5))


def _mmcr_worker(rank: int, world: int, sizes: list[int], local_weight: float) -> dict:
    views = random_views(sum(sizes), 3, 5, seed=3)
    start = sum(sizes[:rank])
    results = {}
    for local_loss in (False, True):
        mine = views[start:start + sizes[rank]].clone().requires_grad_(True)
        loss = GatheredObjective(MMCRLoss(local_weight), local_loss=local_loss)(mine)
        loss.backward()
        results[local_loss] = (loss.detach(), mine.grad)
    return results


@pytest.mark.distributed
@pytest.mark.parametrize("sizes", [[4, 4], [3, 5]])
def test_mmcr_on_two_processes_equals_one_process_on_the_whole_batch(sizes):
    # Every process gathers the views with their gradient and takes the SVD of the global
    # centroid matrix: the value is the global loss, and the gradient of a process's rows divided
    # by the world size (DDP averages) is the single-process gradient of those rows.
    views = random_views(sum(sizes), 3, 5, seed=3).requires_grad_(True)
    reference = MMCRLoss(0.3)(views)
    reference.backward()
    per_rank = run_distributed(_mmcr_worker, sizes, 0.3, world_size=2)
    for rank, result in enumerate(per_rank):
        rows = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
        for local_loss in (False, True):
            loss, grad = result[local_loss]
            torch.testing.assert_close(loss, reference.detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(grad / 2, views.grad[rows], rtol=1e-8, atol=1e-12)


# -- the support set ---------------------------------------------------------------------------------

def brute_force_nearest(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    best = []
    for q in queries:
        cosines = [float(q @ k / (np.linalg.norm(q) * np.linalg.norm(k))) for k in keys]
        best.append(keys[int(np.argmax(cosines))])
    return np.stack(best)


def test_nearest_is_the_key_of_highest_cosine_similarity():
    generator = torch.Generator().manual_seed(0)
    support = SupportSet(size=12, dim=4).double()
    # keys of very different norms: the nearest by cosine is not the nearest by distance
    keys = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    keys = keys * torch.logspace(-2, 2, 12, dtype=torch.float64).unsqueeze(1)
    support.enqueue(keys[:7])
    support.enqueue(keys[7:])
    queries = torch.randn(9, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    found = support.nearest(queries)
    assert not found.requires_grad
    np.testing.assert_array_equal(found.numpy(), brute_force_nearest(queries.detach().numpy(), keys.numpy()))
    # the distance and the cosine choice differ somewhere here, so the test tells them apart
    by_distance = keys[torch.cdist(queries.detach(), keys).argmin(dim=1)]
    assert not torch.equal(by_distance, found)


def test_nearest_sees_only_the_newest_keys_once_full():
    support = SupportSet(size=3, dim=2).double()
    old = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    support.enqueue(old)
    support.enqueue(torch.tensor([[0.0, 1.0], [-1.0, 0.1], [0.0, -1.0]], dtype=torch.float64))  # drops `old`
    found = support.nearest(torch.tensor([[1.0, 0.05]], dtype=torch.float64))
    torch.testing.assert_close(found, torch.tensor([[0.0, 1.0]], dtype=torch.float64))


def test_an_empty_support_set_returns_each_query_itself_detached():
    support = SupportSet(size=5, dim=3)
    queries = torch.randn(4, 3, requires_grad=True)
    found = support.nearest(queries)
    assert torch.equal(found, queries.detach()) and not found.requires_grad
    with pytest.raises(DataError, match=r"\(batch, 3\)"):
        support.nearest(torch.randn(4, 2))


def test_support_set_state_dict_round_trip():
    support = SupportSet(size=6, dim=3)
    support.enqueue(torch.randn(4, 3))
    restored = SupportSet(size=6, dim=3)
    restored.load_state_dict(support.state_dict())
    queries = torch.randn(5, 3)
    assert torch.equal(restored.nearest(queries), support.nearest(queries)) and len(restored) == 4


def _support_worker(rank: int, world: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(2, 5, 4, generator=generator)
    queries = torch.randn(6, 4, generator=generator)
    support = SupportSet(size=8, dim=4)
    support.enqueue(keys[rank])  # each process stores its own keys; enqueue gathers them
    return support.nearest(queries[3 * rank:3 * rank + 3])


@pytest.mark.distributed
def test_support_set_of_two_processes_answers_as_one_process():
    per_rank = run_distributed(_support_worker, world_size=2)
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(2, 5, 4, generator=generator)
    queries = torch.randn(6, 4, generator=generator)
    support = SupportSet(size=8, dim=4)
    support.enqueue(torch.cat([keys[0], keys[1]]))  # the last 8 of the 10 keys, in rank order
    torch.testing.assert_close(torch.cat(per_rank), support.nearest(queries))


# -- NNCLR's loss ------------------------------------------------------------------------------------

def naive_ntxent(anchors: list[np.ndarray], positives: list[np.ndarray], temperature: float) -> float:
    """NT-Xent over the 2N rows [anchors; positives]: each row's positive is its partner, every other row a negative."""
    rows = [v / np.linalg.norm(v) for v in anchors + positives]
    n = len(anchors)
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        denominator = sum(math.exp(float(rows[i] @ rows[j]) / temperature) for j in range(2 * n) if j != i)
        total += -float(rows[i] @ rows[partner]) / temperature + math.log(denominator)
    return total / (2 * n)


def test_nnclr_loss_equals_a_naive_loop():
    generator = torch.Generator().manual_seed(4)
    n, d, temperature = 5, 6, 0.3
    z_a, z_b, p_a, p_b = torch.randn(4, n, d, generator=generator, dtype=torch.float64).unbind(0)
    keys = torch.randn(9, d, generator=generator, dtype=torch.float64)
    support = SupportSet(size=16, dim=d).double()
    support.enqueue(keys)
    loss = nnclr_loss(InfoNCE(temperature), support, z_a, z_b, p_a, p_b)

    nn_a = brute_force_nearest(z_a.numpy(), keys.numpy())
    nn_b = brute_force_nearest(z_b.numpy(), keys.numpy())
    expected = 0.5 * (naive_ntxent(list(nn_a), list(p_b.numpy()), temperature)
                      + naive_ntxent(list(nn_b), list(p_a.numpy()), temperature))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_nnclr_gradient_reaches_the_predictions_only():
    generator = torch.Generator().manual_seed(5)
    z_a, z_b, p_a, p_b = (t.clone().requires_grad_(True) for t in torch.randn(4, 6, 4, generator=generator).unbind(0))
    support = SupportSet(size=10, dim=4)
    support.enqueue(torch.randn(10, 4, generator=generator))
    nnclr_loss(InfoNCE(0.5), support, z_a, z_b, p_a, p_b).backward()
    assert z_a.grad is None and z_b.grad is None  # the neighbours are detached
    assert p_a.grad.abs().sum() > 0 and p_b.grad.abs().sum() > 0


def _nnclr_steps(z_a, z_b, p_a, p_b, objective) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Two steps of NNCLR's loss on this process's rows: (loss, grad of p_a, grad of p_b) of each,
    the second step looking up the support set that the first step's z_b filled."""
    support = SupportSet(size=12, dim=z_a.shape[-1]).double()
    support.enqueue(torch.linspace(-1, 1, 4 * z_a.shape[-1], dtype=torch.float64).view(4, -1))  # same everywhere
    results = []
    for step in range(2):
        preds = [p_a[step].clone().requires_grad_(True), p_b[step].clone().requires_grad_(True)]
        loss = nnclr_loss(objective, support, z_a[step], z_b[step], *preds)
        loss.backward()
        results.append((loss.detach(), preds[0].grad, preds[1].grad))
        support.enqueue(z_b[step])
    return results


def _nnclr_inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(6)
    return torch.randn(4, 2, 8, 5, generator=generator, dtype=torch.float64).unbind(0)  # (step, sample, dim) each


def _nnclr_worker(rank: int, world: int) -> list:
    rows = slice(4 * rank, 4 * rank + 4)
    z_a, z_b, p_a, p_b = (t[:, rows] for t in _nnclr_inputs())
    return _nnclr_steps(z_a, z_b, p_a, p_b, GatheredObjective(InfoNCE(0.2)))


@pytest.mark.distributed
def test_nnclr_loss_on_two_processes_equals_one_process_on_the_whole_batch():
    # Each process looks up its own rows in the support set (the same on every process, since
    # enqueue gathers), and the wrapped NT-Xent gathers the neighbours and predictions: loss and
    # prediction gradients (divided by the world size, as DDP averages) equal one process's, at
    # both steps.
    reference = _nnclr_steps(*_nnclr_inputs(), InfoNCE(0.2))
    per_rank = run_distributed(_nnclr_worker, world_size=2)
    for rank, result in enumerate(per_rank):
        rows = slice(4 * rank, 4 * rank + 4)
        for (loss, grad_a, grad_b), (ref_loss, ref_grad_a, ref_grad_b) in zip(result, reference, strict=True):
            torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(grad_a / 2, ref_grad_a[rows], rtol=1e-8, atol=1e-12)
            torch.testing.assert_close(grad_b / 2, ref_grad_b[rows], rtol=1e-8, atol=1e-12)
