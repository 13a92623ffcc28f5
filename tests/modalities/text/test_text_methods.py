"""SimCSE and Contriever losses against naive loops over the embeddings they used; the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.encoders import small_random_encoder
from contrastkit.modalities.text.methods import build_text_method, text_method_names
from tests.conftest import requires_minilm, requires_transformers

pytestmark = [requires_transformers, requires_minilm]  # every test runs the small random encoder

TEXTS = [
    "The cat sat on the mat.",
    "Stem cells divide in the bone marrow of adults.",
    "A man is playing the guitar.",
    "Vaccines reduce the incidence of measles.",
    "Proteins fold into three-dimensional structures.",
]


@pytest.fixture(scope="module")
def encoder():
    return small_random_encoder(hidden_size=32, layers=1, heads=2, seed=0)


def batch(texts=TEXTS, contexts=None):
    result = {"texts": list(texts), "indices": torch.arange(len(texts))}
    if contexts is not None:
        result["contexts"] = list(contexts)
    return result


def recorded_outputs(module: torch.nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output.detach()))
    return outputs, handle


def naive_ntxent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> float:
    """NT-Xent by explicit loops: 2N anchors, each against the 2N - 1 other rows."""
    z = [F.normalize(row, dim=0) for row in torch.cat([z_a, z_b]).double()]
    n = z_a.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[j]) / temperature) for j in range(2 * n) if j != i)
        total += -float(z[i] @ z[positive]) / temperature + math.log(denominator)
    return total / (2 * n)


def naive_moco(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> float:
    """MoCo's InfoNCE by loops: each query against its key and every queued key."""
    total = 0.0
    for q_i, k_i in zip(q.double(), k.double(), strict=True):
        q_i, k_i = F.normalize(q_i, dim=0), F.normalize(k_i, dim=0)
        logits = [float(q_i @ k_i) / temperature] + [float(q_i @ F.normalize(n, dim=0)) / temperature
                                                     for n in queue.double()]
        total += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    return total / q.shape[0]


def test_simcse_loss_is_infonce_over_two_dropout_passes(encoder):
    encoder.train()
    method = build_text_method("simcse", encoder)
    outputs, handle = recorded_outputs(encoder)
    try:
        loss, logs = method.training_loss(batch())
    finally:
        handle.remove()
    assert len(outputs) == 2 and outputs[0].shape == (len(TEXTS), encoder.output_dim)
    assert not torch.allclose(outputs[0], outputs[1])  # dropout made the two passes differ
    assert float(loss.detach()) == pytest.approx(naive_ntxent(outputs[0], outputs[1], 0.05), rel=1e-5)
    assert {"positive_cosine", "negative_cosine"} <= logs.keys()
    loss.backward()
    assert encoder.transformer.embeddings.word_embeddings.weight.grad is not None
    encoder.zero_grad(set_to_none=True)


def test_contriever_in_batch_uses_two_independent_crops(encoder):
    encoder.train()
    method = build_text_method("contriever", encoder, augmentation="none", temperature=0.1)
    outputs, handle = recorded_outputs(encoder)
    seen_tokens = []
    token_handle = encoder.register_forward_pre_hook(lambda _m, args: seen_tokens.append(args[0]))
    try:
        loss, logs = method.training_loss(batch())
    finally:
        handle.remove()
        token_handle.remove()
    assert float(loss.detach()) == pytest.approx(naive_ntxent(outputs[0], outputs[1], 0.1), rel=1e-5)
    full = encoder.tokenize(TEXTS)["attention_mask"].sum(1)
    view_a, view_b = (tokens["attention_mask"].sum(1) for tokens in seen_tokens)
    assert (view_a <= full).all() and (view_b <= full).all() and (view_a < full).any()
    assert not torch.equal(seen_tokens[0]["input_ids"][:, :3], seen_tokens[1]["input_ids"][:, :3])
    assert logs["view_tokens"] == pytest.approx(float(view_a.float().mean()))


def test_contriever_crops_from_the_context_window(encoder):
    method = build_text_method("contriever", encoder, use_context=True, augmentation="none")
    assert method.needs_context
    contexts = [f"neighbour sentence number {i}." for i in range(len(TEXTS))]
    assert method.sources(batch(contexts=contexts))[1] == f"{TEXTS[1]} {contexts[1]}"
    assert method.source_tokens() == 256  # Contriever's chunk length when cropping from a window
    loss, _ = method.training_loss(batch(contexts=contexts))
    assert torch.isfinite(loss)


def test_contriever_queue_path(encoder):
    encoder.train()
    method = build_text_method("contriever", encoder, queue_size=8, momentum=0.9, temperature=0.05)
    assert method.queue.rows.shape == (8, encoder.output_dim)
    optimizer = torch.optim.SGD(method.encoder.parameters(), lr=0.5)
    queue_lengths = []
    for step in range(3):
        before = method.queue.keys().clone()
        queries, q_handle = recorded_outputs(method.encoder)
        keys, k_handle = recorded_outputs(method.key_encoder)
        try:
            loss, logs = method.training_loss(batch())
        finally:
            q_handle.remove()
            k_handle.remove()
        assert len(queries) == 1 and len(keys) == 1  # one query pass with grad, one key pass without
        assert queries[0].shape == keys[0].shape == (len(TEXTS), encoder.output_dim)
        assert float(loss.detach()) == pytest.approx(naive_moco(queries[0], keys[0], before, 0.05), rel=1e-5, abs=1e-6)
        # The batch's keys were enqueued, normalised, after the loss was computed.
        newest = method.queue.keys(in_order=True)[-len(TEXTS):]
        assert torch.allclose(newest, F.normalize(keys[0], dim=1), atol=1e-6)
        queue_lengths.append(logs["queue_length"])
        optimizer.zero_grad()
        loss.backward()
        target_before = [p.clone() for p in method.key_encoder.parameters()]
        optimizer.step()
        method.after_optimizer_step(step + 1, 3)
        for key_param, old, online in zip(method.key_encoder.parameters(), target_before,
                                          method.encoder.parameters(), strict=True):
            assert torch.allclose(key_param, 0.9 * old + 0.1 * online.detach(), atol=1e-6)
    assert queue_lengths == [5.0, 8.0, 8.0]
    assert all(not p.requires_grad for p in method.key_encoder.parameters())


def test_registry_names_and_errors(encoder):
    assert {"simcse", "contriever", "debcse", "whitenedcse", "ccp"} <= set(text_method_names())
    with pytest.raises(ConfigError, match="Did you mean: simcse"):
        build_text_method("simcs", encoder)
    with pytest.raises(ConfigError, match="Did you mean: temperature"):
        build_text_method("simcse", encoder, temprature=0.05)
    with pytest.raises(ConfigError, match="queue_size"):
        build_text_method("contriever", encoder, queue_size=-1)
    with pytest.raises(ConfigError, match="Did you mean: delete"):
        build_text_method("contriever", encoder, augmentation="delet")
    with pytest.raises(ConfigError, match="mochi"):
        build_text_method("simcse", encoder, objective="mochi")
    with pytest.raises(ConfigError, match="grad_cache_chunk"):
        build_text_method("simcse", encoder, grad_cache_chunk=0)
    with pytest.raises(ConfigError, match="momentum"):
        build_text_method("contriever", encoder, queue_size=4, momentum=1.0)
