"""CCP: positives come from the contexts, queue negatives per domain (FIFO), BN on the query side."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.methods import ccp
from contrastkit.objectives.query_key import query_key_infonce
from tests.conftest import requires_minilm, requires_transformers
from tests.text_method_fakes import SENTENCES, BagOfWordsEncoder

CONTEXTS = SENTENCES[1:] + SENTENCES[:1]  # each sentence's "neighbour"


def _naive_infonce(queries, keys, queue, temperature):
    """mean_i -log exp(u_i.v_i/t) / (sum_j exp(u_i.v_j/t) + sum_m exp(u_i.n_m/t)), all cosines."""
    total = 0.0
    for i in range(len(queries)):
        positive = float(F.cosine_similarity(queries[i], keys[i], dim=0)) / temperature
        others = [float(F.cosine_similarity(queries[i], k, dim=0)) / temperature for k in keys]
        others += [float(F.cosine_similarity(queries[i], n, dim=0)) / temperature for n in queue]
        total += -positive + math.log(sum(math.exp(v) for v in others))
    return total / len(queries)


def _sides(method, texts, contexts):
    """Keys and queries computed here from the method's parts, as the paper's diagram reads."""
    with torch.no_grad():
        e_c = method.encoder(method.encoder.tokenize(texts))
        e_x = method.encoder(method.encoder.tokenize(contexts))
        k_c, k_x = method.projector(e_c), method.projector(e_x)
        return k_c, k_x, method.predictor(k_c), method.predictor(k_x)


def _method(**options):
    torch.manual_seed(0)
    return ccp.build(BagOfWordsEncoder(dim=8), **options).double().train()


def test_queue_infonce_against_naive_loop():
    generator = torch.Generator().manual_seed(0)
    q, k, n = (torch.randn(s, 4, generator=generator, dtype=torch.float64) for s in (5, 5, 7))
    assert query_key_infonce(q, k, 0.2, n).item() == pytest.approx(_naive_infonce(q, k, n, 0.2), rel=1e-10)
    assert query_key_infonce(q, k, 0.2, n[:0]).item() == pytest.approx(_naive_infonce(q, k, [], 0.2), rel=1e-10)


def test_positives_are_the_contexts_and_the_queue_feeds_the_next_step():
    method = _method(queue_size=64, temperature=0.1)
    assert method.needs_context
    loss_1, _ = method.training_loss({"texts": SENTENCES, "contexts": CONTEXTS})
    k_c, k_x, q_c, q_x = _sides(method, SENTENCES, CONTEXTS)
    expected_1 = (_naive_infonce(q_c, k_x, [], 0.1) + _naive_infonce(q_x, k_c, [], 0.1)) / 2
    assert loss_1.item() == pytest.approx(expected_1, rel=1e-6)
    # Step 2: the negatives now include step 1's keys (contexts' then centres').
    queue_1 = F.normalize(torch.cat([k_x, k_c]), dim=1)
    texts_2, contexts_2 = SENTENCES[::-1], CONTEXTS[::-1]
    loss_2, logs = method.training_loss({"texts": texts_2, "contexts": contexts_2})
    k_c2, k_x2, q_c2, q_x2 = _sides(method, texts_2, contexts_2)
    expected_2 = (_naive_infonce(q_c2, k_x2, queue_1, 0.1) + _naive_infonce(q_x2, k_c2, queue_1, 0.1)) / 2
    assert loss_2.item() == pytest.approx(expected_2, rel=1e-6)
    assert logs["queue_fill"] == pytest.approx(32 / 64)
    # The check can tell: had the centre sentences been their own positives, the loss would differ.
    own = (_naive_infonce(q_c, k_c, [], 0.1) + _naive_infonce(q_x, k_x, [], 0.1)) / 2
    assert abs(own - expected_1) > 1e-3


def test_queue_is_fifo():
    method = _method(queue_size=20)
    batches = [(SENTENCES, CONTEXTS), (SENTENCES[:4], CONTEXTS[:4]), (SENTENCES[2:], CONTEXTS[2:])]
    stored = []
    for texts, contexts in batches:
        method.training_loss({"texts": texts, "contexts": contexts})
        k_c, k_x, _, _ = _sides(method, texts, contexts)
        stored.append(F.normalize(torch.cat([k_x, k_c]), dim=1))
    everything = torch.cat(stored)  # 16 + 8 + 12 = 36 keys, oldest first
    queue = method.queues["default"]
    assert len(queue) == 20
    torch.testing.assert_close(queue.keys(in_order=True), everything[-20:].to(queue.rows.dtype))


def test_each_domain_has_its_own_queue_and_negatives():
    method = _method(domains=["en", "de"], queue_size=32, temperature=0.1)
    domains = ["en", "de"] * 4
    first = {"texts": SENTENCES, "contexts": CONTEXTS, "domains": domains}
    method.training_loss(first)
    k_c, k_x, _, _ = _sides(method, SENTENCES, CONTEXTS)
    rows = {"en": torch.arange(0, 8, 2), "de": torch.arange(1, 8, 2)}
    for name, index in rows.items():
        expected = F.normalize(torch.cat([k_x[index], k_c[index]]), dim=1)
        torch.testing.assert_close(method.queues[name].keys(in_order=True), expected)
    # Step 2: each domain's rows meet only their own domain's in-batch keys and queue.
    queues = {name: method.queues[name].keys(in_order=True).clone() for name in rows}
    loss, _ = method.training_loss(first)
    k_c, k_x, q_c, q_x = _sides(method, SENTENCES, CONTEXTS)
    expected = 0.0
    for name, index in rows.items():
        part = (_naive_infonce(q_c[index], k_x[index], queues[name], 0.1)
                + _naive_infonce(q_x[index], k_c[index], queues[name], 0.1)) / 2
        expected += part * len(index) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_batch_norm_only_on_the_query_side():
    method = _method()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in method.projector.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in method.predictor.modules()) == 1
    # A key depends on its own sentence only; a query on the whole batch (batch statistics).
    k_all, _, q_all, _ = _sides(method, SENTENCES, CONTEXTS)
    k_part, _, q_part, _ = _sides(method, SENTENCES[:4], CONTEXTS[:4])
    torch.testing.assert_close(k_part, k_all[:4])
    assert not torch.allclose(q_part, q_all[:4])


def test_bad_batches_and_options():
    method = _method(domains=["en"])
    with pytest.raises(DataError, match="contexts"):
        method.training_loss({"texts": SENTENCES})
    with pytest.raises(DataError, match="'fr'"):
        method.training_loss({"texts": SENTENCES, "contexts": CONTEXTS, "domains": ["fr"] * 8})
    with pytest.raises(ConfigError, match="queue_sise"):
        ccp.build(BagOfWordsEncoder(), queue_sise=10)
    with pytest.raises(ConfigError, match="domains"):
        ccp.build(BagOfWordsEncoder(), domains=["a.b"])


@requires_transformers
@requires_minilm
def test_smoke_small_random_encoder_backward():
    from contrastkit.modalities.text.encoders import small_random_encoder

    encoder = small_random_encoder(hidden_size=32, layers=1, heads=2)
    method = ccp.build(encoder, queue_size=16).train()
    batch = {"texts": SENTENCES, "contexts": CONTEXTS, "indices": torch.arange(len(SENTENCES))}
    for _ in range(2):  # the second step has queue negatives
        loss, _ = method.training_loss(batch)
        loss.backward()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    assert method.predictor.layers[0].weight.grad.abs().sum() > 0
    assert len(method.queues["default"]) == 16
