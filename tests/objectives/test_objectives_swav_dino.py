"""SwAV's Sinkhorn-Knopp codes and swapped prediction, and DINO's self-distillation loss and centre
(issue 21), against references written from the papers with scalar float64 loops that share no code
with contrastkit.objectives.

Sinkhorn-Knopp: the codes equal a scalar loop of the paper's algorithm (Caron et al. 2020, Eq. 3 and
its appendix: Q = exp(S^T / eps), alternately scaled to row sums 1/K and column sums 1/B); run to
convergence, every sample's code sums to 1 and every prototype receives B / K, and the codes have the
form diag(u) exp(S / eps) diag(v) (log codes - S / eps is a sum of a row and a column term), which
characterises the entropic optimal transport plan. SwAV and DINO: values and gradients equal naive
loops over crop pairs; the centre update equals its formula computed by hand; on 2 processes the
centre after two steps equals one process's (the 2-process rows of the one-call loss and gradients are
in tests/objective_cases.py, run by tests/nn/test_distributed.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives import OBJECTIVES, get
from contrastkit.objectives.dino import DINOLoss, dino_terms
from contrastkit.objectives.swav import SwAVLoss, sinkhorn_codes, swapped_prediction_terms
from tests.ddp import run_distributed


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cosine_scores(b: int, k: int, seed: int) -> torch.Tensor:
    """Scores in [-1, 1] like SwAV's (unit embeddings against unit prototypes)."""
    z = torch.nn.functional.normalize(_randn(b, 6, seed=seed), dim=1)
    prototypes = torch.nn.functional.normalize(_randn(k, 6, seed=seed + 100), dim=1)
    return z @ prototypes.T


# ----------------------------------------------------------------------------- Sinkhorn-Knopp


def naive_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> list[list[float]]:
    """The paper's algorithm on Python floats: Q (K x B) = exp(S^T / eps) / sum; per iteration every
    prototype row scaled to 1/K, then every sample column to 1/B; codes = B Q, transposed."""
    b, k = scores.shape
    q = [[math.exp(float(scores[i, j]) / epsilon) for i in range(b)] for j in range(k)]
    total = sum(sum(row) for row in q)
    q = [[value / total for value in row] for row in q]
    for _ in range(iterations):
        for j in range(k):
            row_sum = sum(q[j])
            q[j] = [value / row_sum / k for value in q[j]]
        for i in range(b):
            column_sum = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / column_sum / b
    return [[b * q[j][i] for j in range(k)] for i in range(b)]


@pytest.mark.parametrize("iterations", [1, 3, 10])
@pytest.mark.parametrize(("b", "k"), [(7, 3), (4, 9)])
def test_sinkhorn_equals_a_float64_loop_of_the_papers_algorithm(iterations, b, k):
    scores = _cosine_scores(b, k, seed=b + k)
    codes = sinkhorn_codes(scores, epsilon=0.05, iterations=iterations)
    torch.testing.assert_close(codes, torch.tensor(naive_sinkhorn(scores, 0.05, iterations), dtype=torch.float64),
                               rtol=1e-10, atol=1e-12)
    assert not codes.requires_grad


@pytest.mark.parametrize(("b", "k"), [(12, 4), (5, 8)])
def test_converged_codes_have_both_marginals_and_the_scaling_form(b, k):
    scores = _cosine_scores(b, k, seed=3)
    epsilon = 0.3  # milder than 0.05, so that a few hundred iterations converge to 1e-10
    codes = sinkhorn_codes(scores, epsilon=epsilon, iterations=500)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(b, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(codes.sum(dim=0), torch.full((k,), b / k, dtype=torch.float64), rtol=0, atol=1e-9)
    # The entropic transport plan is diag(u) exp(S / eps) diag(v): its log minus S / eps has rank-1
    # additive structure, r_i + c_j, so every 2 x 2 "interaction" vanishes.
    residual = codes.log() - scores / epsilon
    interaction = residual[:, None, :, None] - residual[None, :, :, None] - residual[:, None, None, :] \
        + residual[None, :, None, :]
    assert interaction.abs().max() < 1e-9
    # After the few iterations SwAV uses, the samples' marginals hold exactly and the prototypes' are
    # closer to B / K than the plain softmax's.
    few, softmax = sinkhorn_codes(scores, epsilon, 3), sinkhorn_codes(scores, epsilon, 0)
    torch.testing.assert_close(few.sum(dim=1), torch.ones(b, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (few.sum(dim=0) - b / k).abs().max() < (softmax.sum(dim=0) - b / k).abs().max()


def test_sinkhorn_is_shift_invariant_and_zero_iterations_is_a_softmax():
    scores = _cosine_scores(6, 4, seed=5)
    torch.testing.assert_close(sinkhorn_codes(scores + 7.0, 0.05, 3), sinkhorn_codes(scores, 0.05, 3))
    torch.testing.assert_close(sinkhorn_codes(scores, 0.05, 0), torch.softmax(scores / 0.05, dim=1))
    # Large scores do not overflow (the max is subtracted before exp).
    assert torch.isfinite(sinkhorn_codes(100 * scores.float(), 0.05, 3)).all()


# ----------------------------------------------------------------------------- SwAV loss


def naive_swav(scores: torch.Tensor, num_global: int, temperature: float, epsilon: float, iterations: int,
               queue: torch.Tensor | None = None) -> torch.Tensor:
    """Caron et al. 2020, Eq. 1 over the multi-crop pairs: for each global crop i, its codes (the
    loop above, on the batch and the queue, keeping the batch's rows), predicted by every other crop v:
    -sum_k q_ik log softmax(s_v / tau)_k, averaged over samples, crops v and crops i."""
    b, v, k = scores.shape
    total = scores.new_zeros(())
    for i in range(num_global):
        rows = scores[:, i].detach()
        if queue is not None:
            rows = torch.cat([rows, queue[:, i]])
        codes = naive_sinkhorn(rows, epsilon, iterations)[:b]
        for other in range(v):
            if other == i:
                continue
            for sample in range(b):
                logits = [scores[sample, other, j] / temperature for j in range(k)]
                log_norm = torch.logsumexp(torch.stack(logits), dim=0)
                for j in range(k):
                    total = total - codes[sample][j] * (logits[j] - log_norm)
    return total / (b * num_global * (v - 1))


@pytest.mark.parametrize(("crops", "num_global", "queue_rows"), [(2, 2, 0), (5, 2, 0), (4, 2, 6), (3, 1, 0)])
def test_swav_loss_and_gradients_equal_a_naive_loop(crops, num_global, queue_rows):
    b, k = 5, 4
    scores = torch.stack([_cosine_scores(b, k, seed=10 + c) for c in range(crops)], dim=1)
    queue = torch.stack([_cosine_scores(queue_rows, k, seed=50 + c) for c in range(num_global)], dim=1) \
        if queue_rows else None
    mine, reference = (scores.clone().requires_grad_(True) for _ in range(2))
    objective = SwAVLoss(num_global=num_global, temperature=0.2, epsilon=0.1, sinkhorn_iterations=3)
    loss = objective(mine, queue_scores=queue)
    expected = naive_swav(reference, num_global, 0.2, 0.1, 3, queue)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-9, atol=1e-12)


def test_swav_two_views_are_two_global_crops_and_terms_partition():
    a, b = _cosine_scores(6, 5, seed=1), _cosine_scores(6, 5, seed=2)
    objective = get("swav")
    torch.testing.assert_close(objective(a, b), objective(torch.stack([a, b], dim=1)))
    scores = torch.stack([a, b, _cosine_scores(6, 5, seed=3)], dim=1)
    whole = swapped_prediction_terms(scores, 2)
    parts = [swapped_prediction_terms(scores, 2, anchor_rows=rows) for rows in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(sum(part.total for part in parts), whole.total)
    assert all(part.count == whole.count == 6 * 2 * 2 for part in parts)


def test_swav_gradcheck_on_the_crops_that_make_no_codes():
    # The codes carry no gradient by definition, so finite differences agree with the gradient only
    # where the scores do not move the codes: the local crops.
    global_scores = torch.stack([_cosine_scores(4, 3, seed=s) for s in range(2)], dim=1)
    local_scores = torch.stack([_cosine_scores(4, 3, seed=s) for s in range(2, 4)], dim=1).requires_grad_(True)
    objective = SwAVLoss(epsilon=0.2)
    assert torch.autograd.gradcheck(lambda local: objective(torch.cat([global_scores, local], dim=1)), (local_scores,))


def test_swav_checks_its_inputs_and_options():
    with pytest.raises(DataError, match="queue_scores"):
        get("swav")(torch.randn(4, 3, 5), queue_scores=torch.randn(6, 3, 5))
    with pytest.raises(DataError, match="B, V, K"):
        get("swav")(torch.randn(4, 5))
    with pytest.raises(ConfigError, match="sinkhorn_iterations"):
        SwAVLoss(sinkhorn_iterations=-1)
    with pytest.raises(ConfigError, match="epsilon"):
        SwAVLoss(epsilon=0.0)


# ----------------------------------------------------------------------------- DINO loss and centre


def naive_dino(student: torch.Tensor, teacher: torch.Tensor, center: list[float], tau_s: float,
               tau_t: float) -> torch.Tensor:
    """Caron et al. 2021, Algorithm 1 over every (teacher global crop i, student crop v != i) pair:
    -sum_k softmax((t_i - c) / tau_t)_k log softmax(s_v / tau_s)_k, averaged over samples and pairs."""
    b, v, k = student.shape
    g = teacher.shape[1]
    total, pairs = student.new_zeros(()), 0
    for i in range(g):
        for other in range(v):
            if other == i:
                continue
            pairs += 1
            for sample in range(b):
                t = [math.exp((float(teacher[sample, i, j]) - center[j]) / tau_t) for j in range(k)]
                t = [value / sum(t) for value in t]
                logits = torch.stack([student[sample, other, j] / tau_s for j in range(k)])
                log_norm = torch.logsumexp(logits, dim=0)
                for j in range(k):
                    total = total - t[j] * (logits[j] - log_norm)
    return total / (b * pairs)


def naive_center(teacher: torch.Tensor, center: list[float], momentum: float) -> list[float]:
    """c_j <- m c_j + (1 - m) (1 / (B G)) sum_b sum_i t_bij."""
    b, g, k = teacher.shape
    return [momentum * center[j] + (1 - momentum) * sum(float(teacher[s, i, j]) for s in range(b) for i in range(g))
            / (b * g) for j in range(k)]


@pytest.mark.parametrize(("crops", "globals_", "tau_t"), [(2, 2, 0.04), (5, 2, 0.07), (4, 1, 0.05)])
def test_dino_loss_gradients_and_centre_equal_naive_loops_over_two_steps(crops, globals_, tau_t):
    b, k, momentum = 4, 5, 0.8
    objective = DINOLoss(output_dim=k, student_temperature=0.1, teacher_temperature=0.5,
                         center_momentum=momentum).double()
    center = [0.0] * k
    for step in range(2):
        student = _randn(b, crops, k, seed=step)
        teacher = _randn(b, globals_, k, seed=10 + step, scale=0.3)
        mine, reference = (student.clone().requires_grad_(True) for _ in range(2))
        loss = objective(mine, teacher, teacher_temperature=tau_t)
        expected = naive_dino(reference, teacher, center, 0.1, tau_t)
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-9, atol=1e-12)
        center = naive_center(teacher, center, momentum)  # the update comes after this step's loss
        torch.testing.assert_close(objective.center, torch.tensor(center, dtype=torch.float64), rtol=1e-12, atol=0)


def test_dino_centre_is_left_in_eval_mode_and_teacher_gets_no_gradient():
    objective = DINOLoss(output_dim=3).double()
    student = _randn(4, 3, 3, seed=1).requires_grad_(True)
    teacher = _randn(4, 2, 3, seed=2).requires_grad_(True)
    objective.eval()(student, teacher)
    assert not objective.center.any()
    objective.train()(student, teacher).backward()
    assert objective.center.any() and teacher.grad is None and student.grad is not None
    # Momentum 1 keeps the centre at zero (no centring).
    frozen = DINOLoss(output_dim=3, center_momentum=1.0).double()
    frozen(student, teacher)
    assert not frozen.center.any()


def test_dino_default_temperature_lazy_centre_and_checks():
    student, teacher = _randn(3, 4, 6, seed=1), _randn(3, 2, 6, seed=2)
    objective = DINOLoss(teacher_temperature=0.06).double()
    assert objective.center.numel() == 0
    expected = naive_dino(student, teacher, [0.0] * 6, 0.1, 0.06)
    torch.testing.assert_close(objective(student, teacher), expected, rtol=1e-10, atol=1e-12)
    restored = DINOLoss().double()
    restored.load_state_dict(objective.state_dict())
    torch.testing.assert_close(restored.center, objective.center)
    torch.testing.assert_close(dino_terms(student, teacher, objective.center * 0).mean(),
                               naive_dino(student, teacher, [0.0] * 6, 0.1, 0.04), rtol=1e-10, atol=1e-12)
    with pytest.raises(DataError, match="output_dim"):
        DINOLoss(output_dim=5)(student, teacher)
    with pytest.raises(DataError, match="B, G, K"):
        DINOLoss()(student, _randn(3, 5, 6, seed=3))
    with pytest.raises(ConfigError, match="center_momentum"):
        DINOLoss(center_momentum=1.5)


def test_dino_gradcheck():
    student = _randn(3, 3, 4, seed=4).requires_grad_(True)
    teacher = _randn(3, 2, 4, seed=5)
    objective = DINOLoss(output_dim=4).double().eval()  # a fixed centre
    assert torch.autograd.gradcheck(lambda s: objective(s, teacher, teacher_temperature=0.3), (student,))


def test_both_are_registered():
    assert {"swav", "dino"} <= set(OBJECTIVES.names())


# ----------------------------------------------------------------------------- 2 processes over steps


def _dino_two_steps(rank: int, world: int, sizes: list[int]) -> dict:
    torch.manual_seed(0)
    objective = GatheredObjective(DINOLoss(output_dim=5, center_momentum=0.7).double())
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    losses, grads = [], []
    for step in range(2):
        student = _randn(sum(sizes), 4, 5, seed=step)[rows].clone().requires_grad_(True)
        teacher = _randn(sum(sizes), 2, 5, seed=10 + step)[rows]
        loss = objective(student, teacher, teacher_temperature=0.05)
        loss.backward()
        losses.append(loss.detach())
        grads.append(student.grad / world)
    return {"losses": losses, "grads": grads, "center": objective.objective.center.clone()}


@pytest.mark.distributed
def test_dino_centre_loss_and_gradients_on_two_processes_equal_one_over_two_steps():
    sizes = [3, 5]
    per_rank = run_distributed(_dino_two_steps, sizes)
    objective = DINOLoss(output_dim=5, center_momentum=0.7).double()
    for step in range(2):
        student = _randn(8, 4, 5, seed=step).requires_grad_(True)
        loss = objective(student, _randn(8, 2, 5, seed=10 + step), teacher_temperature=0.05)
        loss.backward()
        for rank, result in enumerate(per_rank):
            rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
            torch.testing.assert_close(result["losses"][step], loss.detach(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(result["grads"][step], student.grad[rows], rtol=1e-9, atol=1e-12)
    for result in per_rank:
        torch.testing.assert_close(result["center"], objective.center, rtol=1e-12, atol=1e-14)
