"""The core objectives against naive per-anchor loops written here from the papers' formulas.

The references below loop over anchors with plain exp/log on float64 scalars and share no code
with contrastkit.objectives; chunked InfoNCE/DCL are compared with the whole computation;
gradients are checked with torch.autograd.gradcheck; low-precision inputs against float32.
"""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives import OBJECTIVES, clip_terms, get, siglip_terms

CORE = ["infonce", "ntxent", "dcl", "dclw", "hcl", "supcon", "clip", "siglip"]


def _pair(n: int = 5, d: int = 4, seed: int = 0, noise: float = 0.7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g, dtype=dtype)
    z_b = z_a + noise * torch.randn(n, d, generator=g, dtype=dtype)
    return z_a, z_b


def _unit(rows: torch.Tensor) -> list[torch.Tensor]:
    return [r / r.norm() for r in rows]


def _dot(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(sum(float(a) * float(b) for a, b in zip(u, v)))


# ----------------------------------------------------------------------------- naive references


def naive_ntxent(z_a, z_b, tau, keys=None, remove_positive=False, weights=None) -> float:
    n = len(z_a)
    z = _unit(torch.cat([z_a, z_b]))
    queue = _unit(keys) if keys is not None else []
    losses = []
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        w = 1.0 if weights is None else weights[i % n]
        denominator = 0.0
        for j in range(2 * n):
            if j == i or (remove_positive and j == p):
                continue
            denominator += math.exp(_dot(z[i], z[j]) / tau)
        denominator += sum(math.exp(_dot(z[i], k) / tau) for k in queue)
        losses.append(-w * _dot(z[i], z[p]) / tau + math.log(denominator))
    return sum(losses) / len(losses)


def naive_dclw_weights(z_a, z_b, sigma) -> list[float]:
    c = [_dot(u, v) for u, v in zip(_unit(z_a), _unit(z_b))]
    mean = sum(math.exp(x / sigma) for x in c) / len(c)
    return [2 - math.exp(x / sigma) / mean for x in c]


def naive_hcl(z_a, z_b, tau, beta, tau_plus, clamped: list | None = None) -> float:
    # Robinson et al. 2021, the hard-negative estimator in the direct (non-log) form of the paper;
    # the anchors whose Ng is clamped are appended to `clamped`.
    n = len(z_a)
    z = _unit(torch.cat([z_a, z_b]))
    m = 2 * n - 2
    losses = []
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        pos = math.exp(_dot(z[i], z[p]) / tau)
        neg = [math.exp(_dot(z[i], z[j]) / tau) for j in range(2 * n) if j not in (i, p)]
        imp = [x**beta for x in neg]
        reweighted = sum(a * b for a, b in zip(imp, neg)) / (sum(imp) / m)
        unclamped = (-tau_plus * m * pos + reweighted) / (1 - tau_plus)
        ng = max(unclamped, m * math.exp(-1 / tau))
        if clamped is not None and unclamped < ng:
            clamped.append(i)
        losses.append(-math.log(pos / (pos + ng)))
    return sum(losses) / len(losses)


def naive_supcon(z_a, z_b, labels, tau) -> float:
    z = _unit(z_a if z_b is None else torch.cat([z_a, z_b]))
    y = labels.tolist() * (1 if z_b is None else 2)
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(_dot(z[i], z[a]) / tau) for a in range(len(z)) if a != i))
        losses.append(-sum(_dot(z[i], z[p]) / tau - log_denominator for p in positives) / len(positives))
    return sum(losses) / len(losses)


def naive_clip(image, text, scale) -> float:
    u, v = _unit(image), _unit(text)
    n = len(u)
    image_ce = text_ce = 0.0
    for i in range(n):
        row = [scale * _dot(u[i], v[j]) for j in range(n)]
        column = [scale * _dot(u[j], v[i]) for j in range(n)]
        image_ce += -row[i] + math.log(sum(math.exp(x) for x in row))
        text_ce += -column[i] + math.log(sum(math.exp(x) for x in column))
    return (image_ce / n + text_ce / n) / 2


def naive_siglip(image, text, t, b) -> float:
    u, v = _unit(image), _unit(text)
    n = len(u)
    total = 0.0
    for i in range(n):
        for j in range(n):
            label = 1.0 if i == j else -1.0
            total += math.log(1 / (1 + math.exp(-label * (t * _dot(u[i], v[j]) + b))))
    return -total / n


def _close(value: torch.Tensor, reference: float, tol: float = 1e-9) -> None:
    value = float(value.detach())
    assert abs(value - reference) <= tol * max(1.0, abs(reference)), (value, reference)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_ntxent_matches_naive_loop(tau):
    z_a, z_b = _pair()
    _close(get("ntxent", temperature=tau)(z_a, z_b), naive_ntxent(z_a, z_b, tau))
    _close(get("infonce", temperature=tau)(z_a, z_b), naive_ntxent(z_a, z_b, tau))


def test_ntxent_with_queue_matches_naive_loop():
    z_a, z_b = _pair()
    keys = torch.randn(7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5
    _close(get("infonce", temperature=0.3)(z_a, z_b, keys=keys), naive_ntxent(z_a, z_b, 0.3, keys=keys))


def test_ntxent_closed_form_two_orthogonal_samples():
    # Views identical, the two samples orthogonal: each anchor has its positive at cosine 1,
    # the other sample's two views at cosine 0: loss = -1/tau + log(e^{1/tau} + 2).
    z_a = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    tau = 0.25
    _close(get("ntxent", temperature=tau)(z_a, z_a.clone()), -1 / tau + math.log(math.exp(1 / tau) + 2))


def test_dcl_and_dclw_match_naive_loop():
    z_a, z_b = _pair()
    _close(get("dcl", temperature=0.2)(z_a, z_b), naive_ntxent(z_a, z_b, 0.2, remove_positive=True))
    weights = naive_dclw_weights(z_a, z_b, 0.5)
    assert abs(sum(weights) / len(weights) - 1) < 1e-12  # the weights average to one
    _close(
        get("dclw", temperature=0.2, sigma=0.5)(z_a, z_b),
        naive_ntxent(z_a, z_b, 0.2, remove_positive=True, weights=weights),
    )


def test_dclw_weights_are_detached():
    # Only the positive logit, not its weight, carries gradient: d/dw of the loss is not propagated.
    z_a, z_b = _pair()
    z_a.requires_grad_(True)
    get("dclw", temperature=0.2)(z_a, z_b).backward()
    grad_dclw = z_a.grad.clone()
    z_a.grad = None
    weights = torch.tensor(naive_dclw_weights(z_a.detach(), z_b, 0.5), dtype=torch.float64)
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]), dim=1)
    n = len(z_a)
    logits = z @ z.T / 0.2
    idx = torch.arange(2 * n)
    positive = logits[idx, (idx + n) % (2 * n)] * weights.repeat(2)
    masked = logits.clone()
    masked[idx, idx] = -torch.inf
    masked[idx, (idx + n) % (2 * n)] = -torch.inf
    (torch.logsumexp(masked, 1) - positive).mean().backward()
    torch.testing.assert_close(grad_dclw, z_a.grad)


@pytest.mark.parametrize(("tau", "beta", "tau_plus"), [(0.5, 1.0, 0.1), (0.2, 3.0, 0.05), (0.5, 0.5, 0.0)])
def test_hcl_matches_naive_loop(tau, beta, tau_plus):
    z_a, z_b = _pair()
    _close(get("hcl", temperature=tau, beta=beta, tau_plus=tau_plus)(z_a, z_b), naive_hcl(z_a, z_b, tau, beta, tau_plus))


def test_hcl_clamp_is_active_when_debiasing_overshoots():
    # Views nearly identical and tau_plus large: tau_plus * M * e^{l_ip} exceeds R, so Ng is clamped.
    z_a, z_b = _pair(noise=0.01)
    tau, beta, tau_plus = 0.5, 1.0, 0.9
    clamped: list[int] = []
    reference = naive_hcl(z_a, z_b, tau, beta, tau_plus, clamped)
    assert len(clamped) == 2 * len(z_a)  # every anchor takes the clamped branch here
    z_a.requires_grad_(True)
    loss = get("hcl", temperature=tau, beta=beta, tau_plus=tau_plus)(z_a, z_b)
    _close(loss, reference)
    loss.backward()
    assert torch.isfinite(z_a.grad).all()


def test_hcl_without_hardness_or_debiasing_is_ntxent():
    z_a, z_b = _pair()
    _close(get("hcl", temperature=0.3, beta=0.0, tau_plus=0.0)(z_a, z_b), naive_ntxent(z_a, z_b, 0.3))


def test_supcon_matches_naive_loop():
    z_a, z_b = _pair(n=6)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    _close(get("supcon", temperature=0.2)(z_a, z_b, labels=labels), naive_supcon(z_a, z_b, labels, 0.2))


def test_supcon_single_view_leaves_out_anchors_without_positive():
    z_a, _ = _pair(n=6)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])  # class 2 occurs once: that anchor is left out
    _close(get("supcon", temperature=0.2)(z_a, None, labels=labels), naive_supcon(z_a, None, labels, 0.2))


def test_supcon_with_distinct_labels_is_ntxent():
    z_a, z_b = _pair()
    _close(get("supcon", temperature=0.2)(z_a, z_b, labels=torch.arange(5)), naive_ntxent(z_a, z_b, 0.2))


def test_clip_matches_naive_loop_and_initial_scale():
    image, text = _pair()
    objective = get("clip").double()
    assert float(objective.logit_scale.detach().exp()) == pytest.approx(1 / 0.07)
    # (the parameter is float32, so the reference takes its rounded value)
    _close(objective(image, text), naive_clip(image, text, float(objective.logit_scale.detach().exp())))


def test_clip_logit_scale_is_clamped_at_100():
    image, text = _pair()
    logit_scale = torch.tensor(math.log(1000.0), dtype=torch.float64, requires_grad=True)
    loss = clip_terms(image, text, logit_scale).mean()
    _close(loss, naive_clip(image, text, 100.0))
    loss.backward()
    assert logit_scale.grad == 0  # beyond the clamp the scale no longer learns
    below = torch.tensor(math.log(50.0), dtype=torch.float64, requires_grad=True)
    clip_terms(image, text, below).mean().backward()
    assert below.grad != 0


def test_siglip_matches_double_loop():
    image, text = _pair()
    objective = get("siglip").double()
    assert float(objective.log_temperature.detach().exp()) == pytest.approx(10.0) and float(objective.bias.detach()) == -10.0
    t = float(objective.log_temperature.detach().exp())  # the float32 parameter's rounded value
    _close(objective(image, text), naive_siglip(image, text, t, -10.0))
    t, b = torch.tensor(math.log(3.0), dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    _close(siglip_terms(image, text, t, b).mean(), naive_siglip(image, text, 3.0, 0.5))


# ----------------------------------------------------------------------------- anchors protocol


def _call_kwargs(name: str, n: int) -> dict:
    return {"labels": torch.tensor([0, 1, 0, 1, 2, 0, 1][:n])} if name == "supcon" else {}


@pytest.mark.parametrize("name", CORE)
def test_loss_terms_of_a_partition_add_up(name):
    z_a, z_b = _pair(n=7)
    objective = get(name).double()
    extra = _call_kwargs(name, 7)
    whole = objective.loss_terms(z_a, z_b, **extra)
    parts = [objective.loss_terms(z_a, z_b, anchor_rows=s, **extra) for s in (slice(0, 3), slice(3, 4), slice(4, 7))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total)
    assert all(float(p.count) == float(whole.count) for p in parts)
    torch.testing.assert_close(objective(z_a, z_b, **extra), whole.total / whole.count)


# ----------------------------------------------------------------------------- gradients


# dclw is left out: its weights are detached on purpose, so finite differences (which see the
# weights move) and its gradient differ; test_dclw_weights_are_detached checks that gradient.
@pytest.mark.parametrize("name", [name for name in CORE if name != "dclw"])
def test_gradcheck(name):
    z_a, z_b = _pair(n=4, d=3)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    objective = get(name, **({"temperature": 0.5} if name not in ("clip", "siglip") else {})).double()
    extra = _call_kwargs(name, 4)
    assert torch.autograd.gradcheck(lambda a, b: objective(a, b, **extra), (z_a, z_b))


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_gradcheck_learned_temperature(name):
    image, text = _pair(n=4, d=3)
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    if name == "clip":
        assert torch.autograd.gradcheck(lambda s: clip_terms(image, text, s).mean(), (scale,))
    else:
        assert torch.autograd.gradcheck(lambda s, b: siglip_terms(image, text, s, b).mean(), (scale, bias))


# ----------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 100])
@pytest.mark.parametrize("name", ["infonce", "dcl", "dclw"])
def test_chunked_equals_whole(name, chunk_size):
    # 2N = 14 anchors: chunk sizes 3 and 4 leave a partial last block.
    z_a, z_b = _pair(n=7, d=5)
    keys = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    extra = {"keys": keys} if name == "infonce" else {}
    results = []
    for chunk in (None, chunk_size):
        a, b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
        keys.grad = None
        loss = get(name, temperature=0.1, chunk_size=chunk).double()(a, b, **extra)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad, None if keys.grad is None else keys.grad.clone()))
    (whole, *whole_grads), (chunked, *chunked_grads) = results
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for g_chunked, g_whole in zip(chunked_grads, whole_grads):
        if g_whole is not None:
            torch.testing.assert_close(g_chunked, g_whole, rtol=1e-10, atol=1e-12)


def test_chunked_gradcheck_and_local_anchors():
    z_a, z_b = _pair(n=4, d=3)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    objective = get("infonce", temperature=0.5, chunk_size=3).double()
    assert torch.autograd.gradcheck(lambda a, b: objective(a, b), (z_a, z_b))
    assert torch.autograd.gradcheck(lambda a, b: objective.loss_terms(a, b, anchor_rows=slice(1, 3)).total, (z_a, z_b))


# ----------------------------------------------------------------------------- low precision


def _hard_pair(dtype=torch.float32, n=16, d=32):
    # Norm ~1e3 and near-duplicate views: at tau = 0.01 the logits reach +-100.
    z_a, z_b = _pair(n=n, d=d, noise=0.05, dtype=torch.float64)
    z_a = z_a / z_a.norm(dim=1, keepdim=True) * 1e3
    z_b = z_b / z_b.norm(dim=1, keepdim=True) * 1e3
    return z_a.to(dtype), z_b.to(dtype)


def _tiny_temperature(name: str) -> dict:
    return {} if name in ("clip", "siglip") else {"temperature": 0.01}


@pytest.mark.parametrize("name", CORE)
def test_autocast_bf16_matches_float32_at_tau_001(name):
    z_a, z_b = _hard_pair()
    objective = get(name, **_tiny_temperature(name))
    extra = {"labels": torch.arange(16) % 5} if name == "supcon" else {}
    reference = objective(z_a, z_b, **extra)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
        loss = objective(a, b, **extra)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", CORE)
def test_half_precision_inputs_at_tau_001_and_norm_1e3(name, dtype):
    z_a, z_b = _hard_pair()
    objective = get(name, **_tiny_temperature(name))
    extra = {"labels": torch.arange(16) % 5} if name == "supcon" else {}
    a, b = z_a.to(dtype).requires_grad_(True), z_b.to(dtype).requires_grad_(True)
    loss = objective(a, b, **extra)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert a.grad.dtype == dtype
    # Same rounded inputs in float32: identical maths; the unrounded inputs: close.
    torch.testing.assert_close(loss, objective(a.detach().float(), b.detach().float(), **extra), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, objective(z_a, z_b, **extra), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", ["infonce", "dcl", "hcl", "supcon"])
def test_duplicate_and_zero_rows_stay_finite(name):
    z_a = torch.zeros(4, 3)
    z_a[1] = 1e3
    z_a[2] = 1e3  # duplicate of row 1
    z_b = z_a.clone()
    z_a.requires_grad_(True)
    extra = {"labels": torch.tensor([0, 1, 1, 2])} if name == "supcon" else {}
    loss = get(name, temperature=0.01)(z_a, z_b, **extra)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z_a.grad).all()


# ----------------------------------------------------------------------------- catalogue and errors


def test_catalogue_registers_the_core_names():
    assert set(CORE) <= set(OBJECTIVES.names())
    assert type(get("ntxent")) is type(get("infonce"))


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="infonce"):
        get("infonc")


def test_user_errors_name_the_shape_or_option():
    with pytest.raises(DataError, match=r"\(3, 4\)"):
        get("ntxent")(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(DataError, match="labels"):
        get("supcon")(torch.randn(3, 4), torch.randn(3, 4), labels=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="temperature"):
        get("dcl", temperature=0.0)
    with pytest.raises(ConfigError, match="tau_plus"):
        get("hcl", tau_plus=1.0)


@pytest.mark.parametrize("name", ["ntxent", "dcl"])
def test_whole_path_in_several_blocks_matches_naive_loop_and_one_block(name, monkeypatch):
    # The unchunked path keeps the logits but still walks them in row blocks of _BLOCK_ELEMENTS
    # entries; at test sizes that is one block, so force several (3 rows each, a partial last one).
    from contrastkit.objectives import chunked

    z_a, z_b = _pair()
    one_a, one_b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    one = get(name, temperature=0.2)(one_a, one_b)
    one.backward()
    monkeypatch.setattr(chunked, "_BLOCK_ELEMENTS", 3 * 2 * len(z_a))
    many_a, many_b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    many = get(name, temperature=0.2)(many_a, many_b)
    many.backward()
    _close(many, naive_ntxent(z_a, z_b, 0.2, remove_positive=(name == "dcl")))
    torch.testing.assert_close(many_a.grad, one_a.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(many_b.grad, one_b.grad, rtol=1e-12, atol=1e-12)
