"""The losses moved into the catalogue (issue 19) against naive per-sample loops, values and gradients.

query_key_infonce, in_batch_softmax, queued_clip (objectives/query_key.py, queued_clip.py),
normalized_mse and negative_cosine (predictive.py), scaled_cosine_error (reconstruction.py),
neighbour_contrast (neighbour.py) and forecast_contrastive (forecasting.py).

Each reference below loops over samples with scalar torch operations in float64 (dot products and
norms written out element by element, no F.normalize / cross_entropy / logsumexp), written from the
papers' formulas and sharing no code with contrastkit.objectives; the gradients are autograd's
through that loop, compared with the library's, and ``torch.autograd.gradcheck`` checks them
against finite differences. The 2-process checks of every registered name are in
tests/nn/test_distributed.py (inputs in tests/objective_cases.py); the one here adds the gradient of
a per-sample input that is itself trained (the forecasts).
"""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives import OBJECTIVES, get
from contrastkit.objectives.forecasting import forecast_contrastive_loss
from contrastkit.objectives.neighbour import neighbour_contrastive_loss
from contrastkit.objectives.predictive import negative_cosine, normalized_mse
from contrastkit.objectives.query_key import in_batch_softmax_loss, query_key_infonce
from contrastkit.objectives.queued_clip import queued_clip_terms
from contrastkit.objectives.reconstruction import scaled_cosine_error

MOVED = ["query_key_infonce", "in_batch_softmax", "queued_clip", "normalized_mse", "negative_cosine",
         "scaled_cosine_error", "neighbour_contrast", "forecast_contrastive"]


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


# ----------------------------------------------------------------------------- scalar helpers


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    total = u.new_zeros(())
    for a, b in zip(u, v):
        total = total + a * b
    return total


def _cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _dot(u, v) / (torch.sqrt(_dot(u, u)) * torch.sqrt(_dot(v, v)))


def _log_sum_exp(values: list[torch.Tensor]) -> torch.Tensor:
    total = values[0].new_zeros(())
    for value in values:
        total = total + torch.exp(value)
    return torch.log(total)


def _check_against(reference_fn, library_fn, inputs: list[torch.Tensor], rtol: float = 1e-10) -> None:
    """Value and gradients of ``library_fn(*inputs)`` equal those of ``reference_fn(*inputs)``."""
    ours, theirs = _leaves(*inputs), _leaves(*inputs)
    value = library_fn(*ours)
    reference = reference_fn(*theirs)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, reference, rtol=rtol, atol=1e-12)
    grads = torch.autograd.grad(value, ours, allow_unused=True)
    reference_grads = torch.autograd.grad(reference, theirs, allow_unused=True)
    for i, (g, r) in enumerate(zip(grads, reference_grads)):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0, f"input {i} has a gradient the formula has not"
        else:
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-11, msg=f"gradient of input {i}")


# ----------------------------------------------------------------------------- naive references


def naive_query_key(queries, keys, tau, queue=None, weights=None):
    n = len(queries)
    losses = []
    for i in range(n):
        s = [_cos(queries[i], keys[j]) / tau for j in range(n)]
        denominator = torch.exp(s[i])
        for j in range(n):
            if j != i:
                denominator = denominator + (1.0 if weights is None else float(weights[i, j])) * torch.exp(s[j])
        for m in range(0 if queue is None else len(queue)):
            denominator = denominator + torch.exp(_cos(queries[i], queue[m].detach()) / tau)
        losses.append(-s[i] + torch.log(denominator))
    return sum(losses) / n


def naive_in_batch_softmax(queries, items, tau, item_ids=None, log_p=None):
    n = len(queries)
    losses = []
    for i in range(n):
        s = [_cos(queries[i], items[j]) / tau - (0.0 if log_p is None else float(log_p[j])) for j in range(n)]
        kept = [s[j] for j in range(n) if j == i or item_ids is None or int(item_ids[j]) != int(item_ids[i])]
        losses.append(-s[i] + _log_sum_exp(kept))
    return sum(losses) / n


def naive_queued_clip(a, b, keys_a, keys_b, logit_scale, queue_a, queue_b):
    n = len(a)
    scale = torch.exp(logit_scale)  # below the clamp of 100 here
    total = a.new_zeros(())
    for r in range(n):
        for query, keys, queue in ((a[r], keys_b, queue_b), (b[r], keys_a, queue_a)):
            logits = [scale * _cos(query, c) for c in list(keys) + list(queue)]
            total = total - logits[r] + _log_sum_exp(logits)
    return total / (2 * n)


def naive_normalized_mse(p, z):
    n = len(p)
    total = p.new_zeros(())
    for i in range(n):
        pn = torch.sqrt(_dot(p[i], p[i]))
        zn = torch.sqrt(_dot(z[i], z[i]))
        total = total + sum((p[i][k] / pn - z[i][k] / zn) ** 2 for k in range(p.shape[1]))
    return total / n


def naive_negative_cosine(p, z):
    return -sum(_cos(p[i], z[i]) for i in range(len(p))) / len(p)


def naive_scaled_cosine_error(reconstruction, target, alpha):
    return sum((1 - _cos(reconstruction[i], target[i])) ** alpha for i in range(len(target))) / len(target)


def naive_neighbour_contrast(z, weights, tau):
    n = len(z)
    losses = []
    for i in range(n):
        positives = [j for j in range(n) if j != i and float(weights[i, j]) > 0]
        if not positives:
            continue
        s = {j: _cos(z[i], z[j]) / tau for j in range(n) if j != i}
        numerator = sum(float(weights[i, j]) * torch.exp(s[j]) for j in positives)
        denominator = sum(torch.exp(s[j]) for j in s)
        losses.append(-torch.log(numerator / denominator))
    return sum(losses) / len(losses)


def naive_ntxent(z_a, z_b, tau):
    n = len(z_a)
    z = list(z_a) + list(z_b)
    losses = []
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        others = [_cos(z[i], z[j]) / tau for j in range(2 * n) if j != i]
        losses.append(-_cos(z[i], z[p]) / tau + _log_sum_exp(others))
    return sum(losses) / (2 * n)


def naive_forecast_contrastive(forecast, target, z_a, z_b, weight, tau):
    squared = [(forecast[i][h] - target[i][h]) ** 2 for i in range(len(forecast)) for h in range(forecast.shape[1])]
    mse = sum(squared) / len(squared)
    return mse + weight * naive_ntxent(z_a, z_b, tau) if weight else mse


# ----------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("with_queue", [False, True])
def test_query_key_infonce_matches_naive_loop(with_queue):
    q, k, queue = _randn(5, 4, seed=0), _randn(5, 4, seed=1), _randn(6, 4, seed=2)
    k = q + 0.7 * k
    extra = queue if with_queue else None
    _check_against(lambda a, b: naive_query_key(a, b, 0.3, extra),
                   lambda a, b: query_key_infonce(a, b, 0.3, extra), [q, k])
    _check_against(lambda a, b: naive_query_key(a, b, 0.3, extra),
                   lambda a, b: get("query_key_infonce", temperature=0.3)(a, b, extra_negatives=extra), [q, k])


def test_query_key_infonce_negative_weights_match_naive_loop():
    q, k = _randn(5, 4, seed=3), _randn(5, 4, seed=4)
    weights = torch.rand(5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    weights[0, 3] = 0.0  # a removed (false) negative
    _check_against(lambda a, b: naive_query_key(a, b, 0.2, weights=weights),
                   lambda a, b: query_key_infonce(a, b, 0.2, negative_weights=weights), [q, k])


@pytest.mark.parametrize("corrections", ["none", "logq", "duplicates", "both"])
def test_in_batch_softmax_matches_naive_loop(corrections):
    q, v = _randn(6, 4, seed=6), _randn(6, 4, seed=7)
    ids = torch.tensor([3, 1, 3, 0, 1, 5]) if corrections in ("duplicates", "both") else None
    log_p = -3 * torch.rand(6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    log_p = log_p if corrections in ("logq", "both") else None
    _check_against(lambda a, b: naive_in_batch_softmax(a, b, 0.2, ids, log_p),
                   lambda a, b: in_batch_softmax_loss(a, b, 0.2, ids, log_p), [q, v])
    objective = get("in_batch_softmax", temperature=0.2)
    _check_against(lambda a, b: naive_in_batch_softmax(a, b, 0.2, ids, log_p),
                   lambda a, b: objective(a, b, item_ids=ids, log_item_probability=log_p), [q, v])


def test_in_batch_softmax_without_corrections_is_the_query_key_infonce():
    q, v = _randn(6, 4, seed=9), _randn(6, 4, seed=10)
    torch.testing.assert_close(in_batch_softmax_loss(q, v, 0.1), query_key_infonce(q, v, 0.1), rtol=1e-14, atol=0)


def test_queued_clip_matches_naive_loop_with_the_scale_gradient():
    a, b, keys_a, keys_b = (_randn(5, 4, seed=s) for s in (11, 12, 13, 14))
    queue_a, queue_b = _randn(3, 4, seed=15), _randn(4, 4, seed=16)
    logit_scale = torch.tensor(math.log(1 / 0.2), dtype=torch.float64)
    _check_against(lambda *x: naive_queued_clip(*x, queue_a, queue_b),
                   lambda *x: queued_clip_terms(*x, queue_a, queue_b).mean(),
                   [a, b, keys_a, keys_b, logit_scale])
    objective = get("queued_clip", init_temperature=0.2).double()
    learned = objective.logit_scale.detach()  # log(1 / 0.2) rounded to float32 at construction
    _check_against(lambda *x: naive_queued_clip(*x, learned, queue_a, queue_b),
                   lambda *x: objective(x[0], x[1], keys_a=x[2], keys_b=x[3], queue_a=queue_a, queue_b=queue_b),
                   [a, b, keys_a, keys_b])


def test_queued_clip_with_online_keys_and_no_queue_is_clip():
    a, b = _randn(6, 4, seed=17), _randn(6, 4, seed=18)
    queued, clip = get("queued_clip").double(), get("clip").double()
    torch.testing.assert_close(queued(a, b, keys_a=a, keys_b=b), clip(a, b), rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", ["normalized_mse", "negative_cosine"])
def test_prediction_losses_match_naive_loops(name):
    p, z = _randn(5, 4, seed=19), _randn(5, 4, seed=20)
    function, naive = {"normalized_mse": (normalized_mse, naive_normalized_mse),
                       "negative_cosine": (negative_cosine, naive_negative_cosine)}[name]
    _check_against(naive, function, [p, z])
    _check_against(naive, get(name), [p, z])


def test_normalized_mse_is_two_minus_twice_the_negated_negative_cosine():
    p, z = _randn(5, 4, seed=21), _randn(5, 4, seed=22)
    torch.testing.assert_close(normalized_mse(p, z), 2 + 2 * negative_cosine(p, z), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_prediction_losses_compute_low_precision_inputs_in_float32(dtype):
    # As before the move: the cosines of float32 copies of the inputs, bit for bit.
    p, z = _randn(8, 6, seed=23).to(dtype), _randn(8, 6, seed=24).to(dtype)
    cosines = torch.nn.functional.cosine_similarity(p.float(), z.float(), dim=-1)
    assert torch.equal(normalized_mse(p, z), (2.0 - 2.0 * cosines).mean())
    assert torch.equal(negative_cosine(p, z), -cosines.mean())


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_scaled_cosine_error_matches_naive_loop(alpha):
    reconstruction, target = _randn(6, 5, seed=25), _randn(6, 5, seed=26)
    _check_against(lambda r, t: naive_scaled_cosine_error(r, t, alpha),
                   lambda r, t: scaled_cosine_error(r, t, alpha), [reconstruction, target])
    _check_against(lambda r, t: naive_scaled_cosine_error(r, t, alpha),
                   get("scaled_cosine_error", alpha=alpha), [reconstruction, target])


def _neighbour_weights(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(n, n, generator=generator, dtype=torch.float64) * (torch.rand(n, n, generator=generator) < 0.5)
    weights[:, 0] += 0.3  # node 0 is a positive of every other anchor...
    weights[2] = 0.0
    weights[2, 2] = 1.0  # ...but anchor 2's only weight is on itself, which is ignored: it has no positive
    return weights


@pytest.mark.parametrize("tau", [0.5, 4.0])
def test_neighbour_contrast_matches_naive_loop(tau):
    z, weights = _randn(7, 4, seed=27), _neighbour_weights(7, 28)
    _check_against(lambda x: naive_neighbour_contrast(x, weights, tau),
                   lambda x: neighbour_contrastive_loss(x, weights, tau), [z])
    objective = get("neighbour_contrast", temperature=tau)
    _check_against(lambda x: naive_neighbour_contrast(x, weights, tau), lambda x: objective(x, weights=weights), [z])


def test_neighbour_contrast_without_positives_is_a_zero_with_a_gradient():
    z = _leaves(_randn(4, 3, seed=29))[0]
    loss = neighbour_contrastive_loss(z, torch.eye(4, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(z.grad) == 0
    terms = get("neighbour_contrast").loss_terms(z, weights=torch.zeros(4, 4, dtype=torch.float64))
    assert float(terms.total.detach()) == 0.0 and float(terms.count) == 1


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_forecast_contrastive_matches_naive_loop(weight):
    forecast, target = _randn(5, 3, seed=30), _randn(5, 3, seed=31)
    z_a, z_b = _randn(5, 4, seed=32), _randn(5, 4, seed=33)
    _check_against(lambda *x: naive_forecast_contrastive(*x, weight, 0.2),
                   lambda *x: forecast_contrastive_loss(*x, weight, 0.2)[0], [forecast, target, z_a, z_b])
    objective = get("forecast_contrastive", contrastive_weight=weight, temperature=0.2)
    _check_against(lambda *x: naive_forecast_contrastive(*x, weight, 0.2),
                   lambda f, t, a, b: objective(a, b, forecast=f, target=t), [forecast, target, z_a, z_b])
    terms = objective.loss_terms(z_a, z_b, forecast=forecast, target=target)
    reference = naive_forecast_contrastive(forecast, target, z_a, z_b, weight, 0.2)
    torch.testing.assert_close(terms.total / terms.count, reference)


def test_forecast_contrastive_reports_its_two_terms():
    forecast, target = _randn(5, 3, seed=34), _randn(5, 3, seed=35)
    z_a, z_b = _randn(5, 4, seed=36), _randn(5, 4, seed=37)
    loss, mse, contrastive = forecast_contrastive_loss(forecast, target, z_a, z_b, 0.3, 0.2)
    torch.testing.assert_close(mse, ((forecast - target) ** 2).mean())
    torch.testing.assert_close(contrastive, naive_ntxent(z_a, z_b, 0.2))
    torch.testing.assert_close(loss, mse + 0.3 * contrastive)
    loss, mse, contrastive = forecast_contrastive_loss(forecast, target, None, None, 0.3, 0.2)
    assert torch.equal(loss, mse) and float(contrastive) == 0.0


# ----------------------------------------------------------------------------- the catalogue's contract


def _inputs(name: str, n: int = 7, d: int = 4) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    z_a, z_b = _randn(n, d, seed=40), _randn(n, d, seed=41)
    extra: dict = {}
    if name == "in_batch_softmax":
        extra = {"item_ids": torch.tensor([0, 1, 0, 2, 1, 3, 4][:n]), "log_item_probability": -_randn(n, seed=39).abs()}
    elif name == "queued_clip":
        extra = {"keys_a": _randn(n, d, seed=42), "keys_b": _randn(n, d, seed=43), "queue_a": _randn(3, d, seed=44),
                 "queue_b": _randn(2, d, seed=45)}
    elif name == "neighbour_contrast":
        z_b, extra = None, {"weights": _neighbour_weights(n, 46)}
    elif name == "forecast_contrastive":
        extra = {"forecast": _randn(n, 3, seed=47), "target": _randn(n, 3, seed=48)}
    elif name == "query_key_infonce":
        extra = {"extra_negatives": _randn(4, d, seed=49)}
    return z_a, z_b, extra


def test_every_moved_loss_is_registered():
    assert set(MOVED) <= set(OBJECTIVES.names())


@pytest.mark.parametrize("name", MOVED)
def test_loss_terms_of_a_partition_add_up_to_the_loss(name):
    objective = get(name).double()
    z_a, z_b, extra = _inputs(name)
    whole = objective.loss_terms(z_a, z_b, **extra)
    parts = [objective.loss_terms(z_a, z_b, anchor_rows=s, **extra) for s in (slice(0, 3), slice(3, 4), slice(4, 7))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total, rtol=1e-12, atol=1e-13)
    assert all(float(p.count) == float(whole.count) for p in parts)
    torch.testing.assert_close(objective(z_a, z_b, **extra), whole.total / whole.count, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", MOVED)
def test_gradcheck(name):
    objective = get(name).double()
    z_a, z_b, extra = _inputs(name, n=4, d=3)
    if z_b is None:
        assert torch.autograd.gradcheck(lambda a: objective(a, None, **extra), _leaves(z_a))
    else:
        assert torch.autograd.gradcheck(lambda a, b: objective(a, b, **extra), _leaves(z_a, z_b))


def test_objectives_that_need_more_than_view_pairs_say_why():
    for name in ("queued_clip", "normalized_mse", "negative_cosine", "scaled_cosine_error", "neighbour_contrast",
                 "forecast_contrastive"):
        assert OBJECTIVES.factory(name).not_for_view_pairs, name
    for name in ("query_key_infonce", "in_batch_softmax"):
        assert not OBJECTIVES.factory(name).not_for_view_pairs, name


def test_errors_name_the_shape_or_option():
    with pytest.raises(DataError, match=r"\(4, 4\)"):
        get("neighbour_contrast")(_randn(5, 3, seed=50), weights=torch.ones(4, 4))
    with pytest.raises(DataError, match="one view"):
        get("neighbour_contrast")(_randn(5, 3, seed=50), _randn(5, 3, seed=51), weights=torch.ones(5, 5))
    with pytest.raises(DataError, match="item_ids"):
        in_batch_softmax_loss(_randn(5, 3, seed=52), _randn(5, 3, seed=53), 0.1, item_ids=torch.arange(4))
    with pytest.raises(DataError, match="same shape"):
        normalized_mse(_randn(5, 3, seed=54), _randn(4, 3, seed=55))
    with pytest.raises(ConfigError, match="alpha"):
        get("scaled_cosine_error", alpha=0.5)
    with pytest.raises(ConfigError, match="temperature"):
        get("query_key_infonce", temperature=0.0)
    with pytest.raises(ConfigError, match="contrastive_weight"):
        get("forecast_contrastive", contrastive_weight=-1.0)


def test_the_old_import_places_give_the_catalogue_functions():
    from contrastkit import objectives
    from contrastkit.modalities.graph.graphmae import scaled_cosine_error as graphmae_sce
    from contrastkit.modalities.graph.scgc import neighbour_contrastive_loss as scgc_loss
    from contrastkit.nn import predictors

    assert graphmae_sce is objectives.scaled_cosine_error
    assert scgc_loss is objectives.neighbour_contrastive_loss
    assert predictors.normalized_mse is objectives.normalized_mse
    assert predictors.negative_cosine is objectives.negative_cosine


# ----------------------------------------------------------------------------- 2 processes: trained per-sample inputs


def _forecast_worker(rank: int, world: int, inputs: dict, local_loss: bool) -> dict:
    from contrastkit.nn.distributed import GatheredObjective

    rows = slice(4 * rank, 4 * rank + 4)
    z_a, z_b, forecast = (inputs[k][rows].clone().requires_grad_(True) for k in ("z_a", "z_b", "forecast"))
    objective = GatheredObjective(get("forecast_contrastive", contrastive_weight=0.3, temperature=0.2),
                                  local_loss=local_loss)
    loss = objective(z_a, z_b, forecast=forecast, target=inputs["target"][rows])
    loss.backward()
    return {"loss": loss.detach(), "z_a": z_a.grad, "z_b": z_b.grad, "forecast": forecast.grad}


def _forecast_modes_worker(rank: int, world: int, inputs: dict) -> list[dict]:
    return [_forecast_worker(rank, world, inputs, local_loss) for local_loss in (False, True)]


@pytest.mark.distributed
def test_forecast_contrastive_on_two_processes_trains_the_forecasts_as_one():
    from tests.ddp import run_distributed

    inputs = {"z_a": _randn(8, 4, seed=60), "z_b": _randn(8, 4, seed=61), "forecast": _randn(8, 3, seed=62),
              "target": _randn(8, 3, seed=63)}
    z_a, z_b, forecast = _leaves(inputs["z_a"], inputs["z_b"], inputs["forecast"])
    reference = get("forecast_contrastive", contrastive_weight=0.3, temperature=0.2)(
        z_a, z_b, forecast=forecast, target=inputs["target"])
    reference.backward()
    expected = {"z_a": z_a.grad, "z_b": z_b.grad, "forecast": forecast.grad}
    per_rank = run_distributed(_forecast_modes_worker, inputs)
    for rank, modes in enumerate(per_rank):
        rows = slice(4 * rank, 4 * rank + 4)
        for result in modes:  # local_loss False, True
            torch.testing.assert_close(result["loss"], reference.detach(), rtol=1e-12, atol=1e-12)
            for key, grad in expected.items():
                # Each process's input gradient is W times its share of the one-process gradient.
                torch.testing.assert_close(result[key] / 2, grad[rows], rtol=1e-9, atol=1e-12, msg=key)
