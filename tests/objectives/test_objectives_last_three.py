"""The last three losses moved into the catalogue (issue 19), against naive loops and on 2 processes.

- ``deep_clustering_kl`` (objectives/clustering.py, from modalities/graph/scgc.py): DEC's KL(P || Q)
  with Student-t assignments q and the sharpened target p (Xie et al. 2016, Eqs. 1-3);
- ``masked_token_regression`` (objectives/masked_prediction.py, from modalities/image/methods/jepa.py):
  I-JEPA's latent regression, l2 / D or smooth-L1 (Assran et al. 2023, Eq. 1);
- ``listwise_distillation`` (objectives/distillation.py, from modalities/text/methods/hybrid_distill.py):
  the KL between the softmaxed teacher and student score rows.

Each reference loops over samples with scalar torch operations in float64, written from the
formulas and sharing no code with contrastkit.objectives (no cdist, kl_div, log_softmax, mse_loss);
values and autograd gradients through the loops are compared with the library's (helpers from
test_objectives_moved.py), and gradcheck checks the library against finite differences.

The 2-process test (gloo, CPU, ``tests/ddp.py``) splits the rows of one batch across two processes,
equal ([4, 4]) and unequal ([3, 5]): each process's ``loss_terms`` of its own rows, summed over the
processes and divided by the global count, is the one-process loss; and through
GatheredObjective, in both ``local_loss`` modes, the loss, the input gradients (each process: W
times its rows' share) and the gradient of DEC's centres (averaged over the processes, as DDP
does) are those of one process on the whole batch.
"""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives import OBJECTIVES, get
from contrastkit.objectives.clustering import deep_clustering_kl, student_t_assignments, target_distribution
from contrastkit.objectives.distillation import listwise_distillation
from contrastkit.objectives.masked_prediction import masked_token_regression
from tests.objectives.test_objectives_moved import _check_against, _leaves, _randn

LAST_THREE = ["deep_clustering_kl", "masked_token_regression", "listwise_distillation"]


# ----------------------------------------------------------------------------- naive references


def _squared_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    total = u.new_zeros(())
    for a, b in zip(u, v):
        total = total + (a - b) ** 2
    return total


def naive_soft_assignments(z, centres, v):
    """DEC Eq. 1, row by row: a list of lists q[i][j]."""
    rows = []
    for i in range(len(z)):
        kernel = [(1.0 + _squared_distance(z[i], centres[j]) / v) ** (-(v + 1.0) / 2.0) for j in range(len(centres))]
        norm = sum(kernel)
        rows.append([k / norm for k in kernel])
    return rows


def naive_target(q):
    """DEC Eq. 3 from a list of lists q[i][j]: p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j')."""
    b, k = len(q), len(q[0])
    frequency = [sum(q[i][j] for i in range(b)) for j in range(k)]
    rows = []
    for i in range(b):
        weight = [q[i][j] ** 2 / frequency[j] for j in range(k)]
        norm = sum(weight)
        rows.append([w / norm for w in weight])
    return rows


def naive_deep_clustering_kl(z, centres, v, target=None):
    """DEC Eq. 2: 1/B sum_i sum_j p_ij log(p_ij / q_ij), p from detached inputs unless given."""
    q = naive_soft_assignments(z, centres, v)
    if target is None:
        p = naive_target(naive_soft_assignments(z.detach(), centres.detach(), v))
    else:
        p = [[target[i, j] for j in range(target.shape[1])] for i in range(len(target))]
    total = z.new_zeros(())
    for i in range(len(z)):
        for j in range(len(centres)):
            if float(p[i][j]) > 0:
                total = total + p[i][j] * (torch.log(p[i][j]) - torch.log(q[i][j]))
    return total / len(z)


def _smooth_l1(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x**2 if abs(float(x.detach())) < 1.0 else abs(x) - 0.5


def naive_masked_token_regression(predictions, targets, kind):
    """1/(rows * tokens * D) sum of e(s_hat - s_y) over every element: mean_tokens ||.||^2 / D for l2."""
    flat_p, flat_t = predictions.reshape(-1), targets.reshape(-1)
    total = predictions.new_zeros(())
    for a, b in zip(flat_p, flat_t):
        total = total + ((a - b) ** 2 if kind == "l2" else _smooth_l1(a - b))
    return total / len(flat_p)


def naive_listwise_distillation(student, teacher, tau, teacher_tau):
    """1/Q sum_q sum_j p_qj (log p_qj - log softmax(s_q / tau)_j), p_q = softmax(t_q / tau_t)."""
    total = student.new_zeros(())
    for s_row, t_row in zip(student, teacher):
        teacher_norm = sum(torch.exp(t / teacher_tau) for t in t_row)
        student_norm = sum(torch.exp(s / tau) for s in s_row)
        for s, t in zip(s_row, t_row):
            p = torch.exp(t / teacher_tau) / teacher_norm
            total = total + p * (torch.log(p) - (s / tau - torch.log(student_norm)))
    return total / len(student)


# ----------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("v", [1.0, 2.5])
def test_deep_clustering_kl_matches_naive_loop(v):
    z, centres = _randn(7, 4, seed=0), _randn(3, 4, seed=1, scale=1.5)

    def chain(a, b):  # SCGC's use: p from the batch's own q, without gradient
        q = student_t_assignments(a, b, v)
        return deep_clustering_kl(q, target_distribution(q.detach()))

    _check_against(lambda a, b: naive_deep_clustering_kl(a, b, v), chain, [z, centres])
    objective = get("deep_clustering_kl", degrees_of_freedom=v)
    _check_against(lambda a, b: naive_deep_clustering_kl(a, b, v), lambda a, b: objective(a, centres=b), [z, centres])


def test_deep_clustering_kl_with_dec_target_given():
    # DEC's P computed elsewhere (over the data set, refreshed every T iterations): only q is trained.
    z, centres = _randn(6, 3, seed=2), _randn(4, 3, seed=3)
    target = torch.rand(6, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.05
    target = target / target.sum(dim=1, keepdim=True)
    objective = get("deep_clustering_kl")
    _check_against(lambda a, b: naive_deep_clustering_kl(a, b, 1.0, target),
                   lambda a, b: objective(a, centres=b, target=target), [z, centres])


def test_deep_clustering_target_is_sharper_and_carries_no_gradient():
    z, centres = _leaves(_randn(8, 3, seed=5), _randn(3, 3, seed=6))
    q = student_t_assignments(z, centres)
    p = target_distribution(q.detach())
    torch.testing.assert_close(q.sum(dim=1), torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(p.sum(dim=1), torch.ones(8, dtype=torch.float64))
    assert not p.requires_grad
    # Squaring sharpens: each row's largest assignment gains weight (before the frequency division).
    assert bool((q.pow(2) / q.pow(2).sum(dim=1, keepdim=True)).amax(dim=1).gt(q.amax(dim=1)).all())


@pytest.mark.parametrize("kind", ["l2", "smooth_l1"])
@pytest.mark.parametrize("shape", [(4, 3, 5), (6, 5)], ids=["blocks", "tokens"])
def test_masked_token_regression_matches_naive_loop(kind, shape):
    # Scale 1.2 so that smooth-L1 meets both of its branches (|x| < 1 and >= 1).
    predictions, targets = _randn(*shape, seed=7, scale=1.2), _randn(*shape, seed=8, scale=1.2)
    assert bool(((predictions - targets).abs() < 1).any() and ((predictions - targets).abs() > 1).any())
    _check_against(lambda a, b: naive_masked_token_regression(a, b, kind),
                   lambda a, b: masked_token_regression(a, b, kind), [predictions, targets])
    _check_against(lambda a, b: naive_masked_token_regression(a, b, kind), get("masked_token_regression", loss=kind),
                   [predictions, targets])


def test_masked_token_regression_l2_is_the_mean_token_distance_over_the_width():
    # I-JEPA Eq. 1 (per block: the mean over its tokens of ||s_hat - s_y||^2), divided by D.
    predictions, targets = _randn(3, 4, 6, seed=9), _randn(3, 4, 6, seed=10)
    per_block = [sum(float(((predictions[r, t] - targets[r, t]) ** 2).sum()) for t in range(4)) / 4 for r in range(3)]
    assert float(masked_token_regression(predictions, targets)) == pytest.approx(sum(per_block) / 3 / 6, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_masked_token_regression_computes_low_precision_inputs_in_float32(dtype):
    predictions, targets = _randn(5, 3, 8, seed=11).to(dtype), _randn(5, 3, 8, seed=12).to(dtype)
    for kind, reference in (("l2", torch.nn.functional.mse_loss), ("smooth_l1", torch.nn.functional.smooth_l1_loss)):
        value = masked_token_regression(predictions, targets, kind)
        assert value.dtype == torch.float32
        assert torch.equal(value, reference(predictions.float(), targets.float()))


@pytest.mark.parametrize("tau, teacher_tau", [(0.05, 0.05), (0.3, 0.1)])
def test_listwise_distillation_matches_naive_loop(tau, teacher_tau):
    student = torch.rand(4, 7, generator=torch.Generator().manual_seed(13), dtype=torch.float64) * 2 - 1
    teacher = torch.rand(4, 7, generator=torch.Generator().manual_seed(14), dtype=torch.float64) * 2 - 1
    _check_against(lambda s, t: naive_listwise_distillation(s, t, tau, teacher_tau),
                   lambda s, t: listwise_distillation(s, t, tau, teacher_tau), [student, teacher])
    objective = get("listwise_distillation", temperature=tau, teacher_temperature=teacher_tau)
    _check_against(lambda s, t: naive_listwise_distillation(s, t, tau, teacher_tau), objective, [student, teacher])


def test_listwise_distillation_is_zero_when_the_student_ranks_as_the_teacher():
    teacher = _randn(3, 6, seed=15)
    # The same scores at twice the temperature, shifted per row: the same softmax, no loss.
    assert float(listwise_distillation(2 * teacher + 1.5, teacher, 0.1, 0.05)) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- the catalogue's contract


def _inputs(name: str, n: int = 7) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    if name == "deep_clustering_kl":
        return _randn(n, 4, seed=20), None, {"centres": _randn(3, 4, seed=21)}
    if name == "masked_token_regression":
        return _randn(n, 3, 4, seed=22, scale=1.2), _randn(n, 3, 4, seed=23, scale=1.2), {}
    return _randn(n, 6, seed=24), _randn(n, 6, seed=25), {}


def test_every_last_loss_is_registered_and_exported():
    from contrastkit import objectives

    assert set(LAST_THREE) <= set(OBJECTIVES.names())
    for name in ("DeepClusteringKL", "deep_clustering_kl", "student_t_assignments", "target_distribution",
                 "MaskedTokenRegression", "masked_token_regression", "ListwiseDistillation", "listwise_distillation"):
        assert name in objectives.__all__ and hasattr(objectives, name), name


@pytest.mark.parametrize("name, kwargs", [(name, {}) for name in LAST_THREE]
                         + [("masked_token_regression", {"loss": "smooth_l1"})])
def test_loss_terms_of_a_partition_add_up_to_the_loss(name, kwargs):
    objective = get(name, **kwargs).double()
    z_a, z_b, extra = _inputs(name)
    whole = objective.loss_terms(z_a, z_b, **extra)
    parts = [objective.loss_terms(z_a, z_b, anchor_rows=s, **extra) for s in (slice(0, 3), slice(3, 4), slice(4, 7))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total, rtol=1e-12, atol=1e-13)
    assert all(float(p.count) == float(whole.count) for p in parts)
    torch.testing.assert_close(objective(z_a, z_b, **extra), whole.total / whole.count, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", LAST_THREE)
def test_gradcheck(name):
    objective = get(name).double()
    z_a, z_b, extra = _inputs(name, n=4)
    if name == "deep_clustering_kl":  # the gradient of the centres too
        # p is a target without gradient: finite differences must not move it, so it is fixed here
        # (at the value the loss computes from the batch's own q, whose gradient the tests above check).
        target = target_distribution(student_t_assignments(z_a, extra["centres"]))
        assert torch.autograd.gradcheck(lambda a, c: objective(a, centres=c, target=target),
                                        _leaves(z_a, extra["centres"]))
    else:
        assert torch.autograd.gradcheck(lambda a, b: objective(a, b), _leaves(z_a, z_b))


def test_none_of_them_takes_view_pairs_and_each_says_why():
    for name in LAST_THREE:
        assert OBJECTIVES.factory(name).not_for_view_pairs, name


def test_errors_name_the_shape_or_option():
    with pytest.raises(DataError, match="one view"):
        get("deep_clustering_kl")(_randn(5, 3, seed=30), _randn(5, 3, seed=31), centres=_randn(2, 3, seed=32))
    with pytest.raises(DataError, match=r"\(2, 4\)"):
        get("deep_clustering_kl")(_randn(5, 3, seed=30), centres=_randn(2, 4, seed=32))
    with pytest.raises(DataError, match=r"\(5, 2\)"):
        get("deep_clustering_kl")(_randn(5, 3, seed=30), centres=_randn(2, 3, seed=32), target=torch.ones(5, 3))
    with pytest.raises(ConfigError, match="degrees_of_freedom"):
        get("deep_clustering_kl", degrees_of_freedom=0.0)
    with pytest.raises(DataError, match="same shape"):
        masked_token_regression(_randn(4, 3, 2, seed=33), _randn(4, 2, 2, seed=34))
    with pytest.raises(ConfigError, match="smooth_l1"):
        get("masked_token_regression", loss="l1")
    with pytest.raises(DataError, match=r"\(4, 6\)"):
        get("listwise_distillation")(_randn(4, 6, seed=35), _randn(4, 5, seed=36))
    with pytest.raises(ConfigError, match="teacher_temperature"):
        get("listwise_distillation", teacher_temperature=0.0)


def test_the_old_import_places_give_the_catalogue_functions():
    from contrastkit import objectives
    from contrastkit.modalities.graph import scgc
    from contrastkit.modalities.image.methods import jepa
    from contrastkit.modalities.text.methods import hybrid_distill

    assert scgc.student_t_assignments is objectives.student_t_assignments
    assert scgc.target_distribution is objectives.target_distribution
    assert scgc.clustering_kl is objectives.deep_clustering_kl
    assert jepa.masked_token_regression is objectives.masked_token_regression
    assert hybrid_distill.listwise_distillation is objectives.listwise_distillation


# ----------------------------------------------------------------------------- 2 processes

SPLITS = ([4, 4], [3, 5])


def _two_process_cases() -> dict[str, tuple[str, dict, torch.Tensor, torch.Tensor | None, dict, tuple[str, ...]]]:
    """label -> (name, options, z_a, z_b, extra, extra inputs that are trained): a global batch of 8 rows."""
    target = torch.rand(8, 3, generator=torch.Generator().manual_seed(46), dtype=torch.float64) + 0.05
    return {
        "deep_clustering_kl": ("deep_clustering_kl", {}, _randn(8, 4, seed=40), None,
                               {"centres": _randn(3, 4, seed=41)}, ("centres",)),
        "deep_clustering_kl[v 2, DEC target]": ("deep_clustering_kl", {"degrees_of_freedom": 2.0},
                                                _randn(8, 4, seed=40), None,
                                                {"centres": _randn(3, 4, seed=41),
                                                 "target": target / target.sum(dim=1, keepdim=True)}, ("centres",)),
        "masked_token_regression": ("masked_token_regression", {}, _randn(8, 3, 5, seed=42),
                                    _randn(8, 3, 5, seed=43), {}, ()),
        "masked_token_regression[smooth_l1]": ("masked_token_regression", {"loss": "smooth_l1"},
                                               _randn(8, 3, 5, seed=42, scale=1.5),
                                               _randn(8, 3, 5, seed=43, scale=1.5), {}, ()),
        "listwise_distillation": ("listwise_distillation", {"temperature": 0.1, "teacher_temperature": 0.05},
                                  _randn(8, 6, seed=44), _randn(8, 6, seed=45), {}, ()),
    }


def _prepare(objective, z_a, z_b, extra, trained, rows: slice):
    per_sample = objective.per_sample_inputs
    z_a = z_a[rows].clone().requires_grad_(True)
    z_b = None if z_b is None else z_b[rows].clone().requires_grad_(True)
    extra = {k: (v[rows] if k in per_sample else v).clone().requires_grad_(k in trained) for k, v in extra.items()}
    return z_a, z_b, extra


def _grads(loss, z_a, z_b, extra, trained) -> dict:
    loss.backward()
    result = {"loss": loss.detach(), "z_a": z_a.grad, "z_b": None if z_b is None else z_b.grad}
    result.update({k: extra[k].grad for k in trained})
    return result


def _last_three_worker(rank: int, world: int) -> dict:
    import torch.distributed as dist

    from contrastkit.nn.distributed import GatheredObjective, gather_no_grad

    results: dict = {}
    for sizes in SPLITS:
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        for label, (name, kwargs, z_a, z_b, extra, trained) in _two_process_cases().items():
            objective = get(name, **kwargs).double()
            # Terms by hand: the gathered batch, this process's rows' terms, their sum over processes.
            a, b, x = _prepare(objective, z_a, z_b, extra, trained, rows)
            gathered = {k: (gather_no_grad(v) if k in objective.per_sample_inputs else v) for k, v in x.items()}
            terms = objective.loss_terms(gather_no_grad(a), None if b is None else gather_no_grad(b),
                                         anchor_rows=rows, **gathered)
            total = terms.total.detach().clone()
            dist.all_reduce(total)
            results[label, tuple(sizes), "terms"] = {"total": total, "count": float(terms.count)}
            for local_loss in (False, True):
                a, b, x = _prepare(objective, z_a, z_b, extra, trained, rows)
                loss = GatheredObjective(objective, local_loss=local_loss)(a, b, **x)
                results[label, tuple(sizes), local_loss] = _grads(loss, a, b, x, trained)
    return results


@pytest.mark.distributed
def test_two_processes_equal_one_for_the_last_three():
    from tests.ddp import run_distributed

    per_rank = run_distributed(_last_three_worker, world_size=2)
    for label, (name, kwargs, z_a, z_b, extra, trained) in _two_process_cases().items():
        objective = get(name, **kwargs).double()
        a, b, x = _prepare(objective, z_a, z_b, extra, trained, slice(0, 8))
        reference = _grads(objective(a, b, **x), a, b, x, trained)
        for sizes in SPLITS:
            for rank, results in enumerate(per_rank):
                terms = results[label, tuple(sizes), "terms"]
                # The processes' summed terms over the global count: the one-process loss.
                torch.testing.assert_close(terms["total"] / terms["count"], reference["loss"], rtol=1e-12,
                                           atol=1e-14, msg=f"{label} {sizes}: terms")
                assert math.isclose(terms["count"], float(objective.loss_terms(a, b, **x).count))
                rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
                for local_loss in (False, True):
                    result = results[label, tuple(sizes), local_loss]
                    where = f"{label} {sizes} local_loss={local_loss} rank {rank}"
                    torch.testing.assert_close(result["loss"], reference["loss"], rtol=1e-12, atol=1e-14, msg=where)
                    for key in ("z_a", "z_b"):
                        if reference[key] is None:
                            assert result[key] is None, where
                        else:  # each process: W times its rows' share of the one-process gradient
                            torch.testing.assert_close(result[key] / 2, reference[key][rows], rtol=1e-9, atol=1e-13,
                                                       msg=f"{where}: {key}")
            for local_loss in (False, True):
                for key in trained:  # a parameter of the model (DEC's centres): DDP averages its gradients
                    averaged = sum(results[label, tuple(sizes), local_loss][key] for results in per_rank) / 2
                    torch.testing.assert_close(averaged, reference[key], rtol=1e-9, atol=1e-13,
                                               msg=f"{label} {sizes} local_loss={local_loss}: {key}")
