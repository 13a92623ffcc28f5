"""GradCache gives the gradients of the uncached loss (dropout on, thanks to the RNG replay), for a
text encoder on token batches and for any embed function on tensor batches (running statistics
kept as one pass per chunk leaves them, mixed precision replayed)."""

from __future__ import annotations

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.encoders import small_random_encoder
from contrastkit.nn.gradcache import cached_embed, chunked_embed, embed_batch, split_batch, split_tokens
from contrastkit.modalities.text.methods import build_text_method
from tests.conftest import requires_minilm, requires_transformers


def requires_text_encoder(test):
    """The tests that run the small random text encoder."""
    return requires_transformers(requires_minilm(test))


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


@requires_text_encoder
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


@requires_text_encoder
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


@requires_text_encoder
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


@requires_text_encoder
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


@requires_text_encoder
def test_no_grad_and_split(encoder):
    tokens = encoder.tokenize(TEXTS)
    chunks = split_tokens(tokens, 4)
    assert [c["input_ids"].shape[0] for c in chunks] == [4, 2]
    for chunk in chunks:  # each chunk trimmed to its own longest row
        assert chunk["attention_mask"][:, -1].any()
    with pytest.raises(ConfigError, match="grad_cache_chunk"):
        split_tokens(tokens, 0)


# -- any embed function over any batch of tensors -------------------------------------------------

class TwoInputTower(torch.nn.Module):
    """Embeds a (features, extra) tuple batch; BatchNorm (running statistics) and dropout inside."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Linear(5, 12, bias=False), torch.nn.BatchNorm1d(12),
                                            torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(12, 6))
        self.extra = torch.nn.Linear(3, 6)

    def forward(self, batch):
        features, extra = batch
        return self.features(features) + self.extra(extra)


def tower_step(tower, embed_of_batch, batch, seed: int = 4):
    """Loss, gradients (by name), buffers and the next random number after one backward pass."""
    tower.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    infonce = objectives.get("infonce", temperature=0.2)
    z = embed_of_batch(batch)
    loss = infonce(z[:5], z[5:])
    loss.backward()
    return (float(loss.detach()), {name: p.grad.clone() for name, p in tower.named_parameters()},
            [b.clone() for b in tower.buffers()], torch.rand(3))


def assert_same_tower_step(reference, cached, tolerance: float = 1e-5):
    assert reference[0] == pytest.approx(cached[0], rel=1e-6)
    for name, grad in reference[1].items():
        assert float((grad - cached[1][name]).abs().max() / grad.abs().max().clamp_min(1e-3)) < tolerance, name
    for a, b in zip(reference[2], cached[2], strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7)
    assert torch.equal(reference[3], cached[3])


@pytest.mark.parametrize("chunk", [4, 6])
def test_tuple_batch_with_batchnorm_and_dropout(chunk):
    torch.manual_seed(0)
    tower = TwoInputTower().train()
    batch = (torch.randn(10, 5), torch.randn(10, 3))
    twin = TwoInputTower().train()
    twin.load_state_dict(tower.state_dict())
    reference = tower_step(twin, lambda b: chunked_embed(twin, b, chunk), batch)
    cached = tower_step(tower, lambda b: cached_embed(tower, b, chunk), batch)
    assert_same_tower_step(reference, cached)
    # BatchNorm's running statistics moved once per chunk, as the uncached chunked pass moves them.
    assert int(tower.features[1].num_batches_tracked) == -(-10 // chunk)
    # A function (not a module) as the encoder: ``modules`` names whose buffers the replay keeps.
    twin.load_state_dict(tower.state_dict())
    again = tower_step(tower, lambda b: cached_embed(lambda x: tower(x), b, chunk, modules=[tower]), batch)
    assert_same_tower_step(tower_step(twin, lambda b: chunked_embed(twin, b, chunk), batch), again)


def test_mixed_precision_replays_under_the_first_pass_autocast():
    torch.manual_seed(0)
    tower = TwoInputTower().train()
    twin = TwoInputTower().train()
    twin.load_state_dict(tower.state_dict())
    batch = (torch.randn(10, 5), torch.randn(10, 3))

    def bf16(embed):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return embed().float()

    # The reference embeds each chunk in its own autocast region, so each chunk has its own bfloat16
    # copy of the weights whose gradient reaches .grad in float32, as each replay's does.
    reference = tower_step(twin, lambda b: torch.cat([bf16(lambda: twin(chunk)) for chunk in split_batch(b, 4)]),
                           batch)
    cached = tower_step(tower, lambda b: bf16(lambda: cached_embed(tower, b, 4)), batch)
    # Replayed in float32 the gradients would be those of other (unrounded) embeddings: ~1e-2 apart.
    assert_same_tower_step(reference, cached, tolerance=1e-4)


def test_split_batch_and_embed_batch():
    rows = torch.arange(10.0).reshape(5, 2)
    assert [c.shape[0] for c in split_batch(rows, 2)] == [2, 2, 1]
    parts = split_batch({"x": rows, "y": rows[:, 0]}, 3)
    assert [sorted(p) for p in parts] == [["x", "y"], ["x", "y"]] and torch.equal(parts[1]["y"], rows[3:, 0])
    pair = split_batch((rows, rows + 1), 4)
    assert isinstance(pair[0], tuple) and torch.equal(pair[1][1], rows[4:] + 1)
    with pytest.raises(ConfigError, match="grad_cache_chunk"):
        split_batch(rows, 0)
    linear = torch.nn.Linear(2, 3)
    with torch.no_grad():  # nothing to cache without a graph: the plain encoder
        assert torch.equal(embed_batch(linear, rows, 2), linear(rows))
    assert embed_batch(linear, rows, None).grad_fn is not None
