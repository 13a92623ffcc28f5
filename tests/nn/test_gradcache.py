"""GradCache gives the gradients of the uncached loss (dropout on, thanks to the RNG replay)."""

from __future__ import annotations

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.encoders import small_random_encoder
from contrastkit.nn.gradcache import cached_embed, chunked_embed, split_tokens
from contrastkit.modalities.text.methods import build_text_method
from tests.conftest import requires_minilm, requires_transformers

pytestmark = [requires_transformers, requires_minilm]  # every test runs the small random encoder

TEXTS = [f"sentence {i} says " + "something rather long " * (i % 4) + "and ends." for i in range(6)]


@pytest.fixture(scope="module")
def encoder():
    return small_random_encoder(hidden_size=32, layers=2, heads=2, seed=0)


def parameter_gradients(encoder, loss_of_embed, seed: int):
    """Gradients of ``loss_of_embed(embed)`` w.r.t. the encoder, from a fixed RNG state; also the
    loss and the next random number (to see whether the random stream was left as it would be)."""
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_of_embed()
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
    return float(loss.detach()), gradients, torch.rand(3)


def assert_same_gradients(reference, cached, tolerance: float = 1e-5):
    loss_a, grads_a, after_a = reference
    loss_b, grads_b, after_b = cached
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        scale = grads_a[name].abs().max().clamp_min(1e-3)
        assert (grads_a[name] - grads_b[name]).abs().max() / scale < tolerance, name
    assert torch.equal(after_a, after_b)  # the replay leaves the random stream where it was


@pytest.mark.parametrize("chunk", [1, 4])
def test_two_view_infonce_with_dropout(encoder, chunk):
    encoder.train()  # dropout on: the two passes differ, the replay must reproduce them
    tokens = encoder.tokenize(TEXTS)
    infonce = objectives.get("infonce", temperature=0.05)

    def loss(embed):
        return lambda: infonce(embed(tokens), embed(tokens))

    reference = parameter_gradients(encoder, loss(lambda t: chunked_embed(encoder, t, chunk)), seed=11)
    cached = parameter_gradients(encoder, loss(lambda t: cached_embed(encoder, t, chunk)), seed=11)
    assert_same_gradients(reference, cached)
    # The two passes did draw different dropout masks (otherwise the test would prove little).
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.allclose(encoder(tokens), encoder(tokens))


def test_queue_loss_and_nonlinear_use_of_embeddings(encoder):
    encoder.train()
    tokens = encoder.tokenize(TEXTS)
    keys = torch.randn(7, encoder.output_dim)
    mochi = objectives.get("mochi", temperature=0.1, num_mixed=0, num_query_mixed=0)

    def loss(embed):
        def compute():
            z = embed(tokens)
            return mochi(z, torch.tanh(z.detach() + 0.1), keys=keys) + z.pow(2).mean()
        return compute

    reference = parameter_gradients(encoder, loss(lambda t: chunked_embed(encoder, t, 4)), seed=5)
    cached = parameter_gradients(encoder, loss(lambda t: cached_embed(encoder, t, 4)), seed=5)
    assert_same_gradients(reference, cached)


def test_without_dropout_chunks_equal_the_whole_batch(encoder):
    encoder.eval()  # no randomness: a chunked pass must equal one pass over the whole batch
    try:
        tokens = encoder.tokenize(TEXTS)
        infonce = objectives.get("infonce", temperature=0.1)
        whole = parameter_gradients(encoder, lambda: infonce(encoder(tokens), encoder(tokens).flip(0)), seed=0)
        cached = parameter_gradients(
            encoder, lambda: infonce(cached_embed(encoder, tokens, 3), cached_embed(encoder, tokens, 3).flip(0)), seed=0
        )
        assert_same_gradients(whole, cached, tolerance=1e-4)
    finally:
        encoder.train()


def test_simcse_option_gives_the_same_gradients(encoder):
    encoder.eval()  # dropout off, so the uncached method (one pass per view) is comparable
    try:
        batch = {"texts": TEXTS, "indices": torch.arange(len(TEXTS))}
        plain = build_text_method("simcse", encoder)
        cached = build_text_method("simcse", encoder, grad_cache_chunk=4)
        assert_same_gradients(
            parameter_gradients(encoder, lambda: plain.training_loss(batch)[0], seed=1),
            parameter_gradients(encoder, lambda: cached.training_loss(batch)[0], seed=1),
            tolerance=1e-4,
        )
    finally:
        encoder.train()


def test_no_grad_and_split(encoder):
    tokens = encoder.tokenize(TEXTS)
    chunks = split_tokens(tokens, 4)
    assert [c["input_ids"].shape[0] for c in chunks] == [4, 2]
    for chunk in chunks:  # each chunk trimmed to its own longest row
        assert chunk["attention_mask"][:, -1].any()
    with pytest.raises(ConfigError, match="grad_cache_chunk"):
        split_tokens(tokens, 0)
