"""GradCache on two towers (``--grad-cache-chunk``): the bounded-memory step equals the whole-batch
loss written out over the chunks (ordinary graph, no caching), with dropout and BatchNorm in the
towers; with momentum keys, queues and harmonized gradients it equals the uncached chunked model;
two steps through the engine equal the uncached chunked run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.pairs.harmonization import GradientHarmonizer
from contrastkit.modalities.pairs.method import TwoTowerMethod
from contrastkit.modalities.pairs.pairs import Pairs
from contrastkit.modalities.pairs.towers import TensorInput
from contrastkit.modalities.pairs.train import TrainOptions, train_two_tower
from contrastkit.modalities.pairs.two_tower import TwoTowerOptions, build_two_tower

ROWS, CHUNK = 10, 4  # chunks of 4, 4 and 2 rows


def tower(in_dim: int) -> nn.Module:
    """A tower with what makes caching hard: dropout (replayed) and BatchNorm (statistics per chunk)."""
    # No bias before BatchNorm: its gradient is zero up to rounding, which Adam turns into steps of size lr.
    return nn.Sequential(nn.Linear(in_dim, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(16, 8))


def jitter(batch: torch.Tensor, generator) -> torch.Tensor:
    return batch + 0.1 * torch.randn(batch.shape, generator=generator)


def two_towers(chunk: int | None, harmonizer: GradientHarmonizer | None = None,
               **options) -> tuple[TwoTowerMethod, list]:
    torch.manual_seed(0)
    model = build_two_tower(tower(6), tower(5), TwoTowerOptions(grad_cache_chunk=chunk, **options), dim_a=8, dim_b=8)
    method = TwoTowerMethod(model, TensorInput(jitter), TensorInput(jitter), harmonizer)
    pairs = [(torch.randn(6), torch.randn(5)) for _ in range(ROWS)]
    return method.train(), pairs


def one_step(method: TwoTowerMethod, loss_of_batch, seed: int = 3):
    """Loss, every gradient and buffer, and the next random number after one step's backward pass."""
    method.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_of_batch()
    method.backward_loss(loss)
    gradients = [(name, None if p.grad is None else p.grad.clone()) for name, p in method.named_parameters()
                 if p.requires_grad]
    buffers = [(name, b.clone()) for name, b in method.named_buffers()]
    return float(loss.detach()), gradients, buffers, torch.rand(3)


def assert_same_step(reference, cached, tolerance: float = 1e-5):
    assert reference[0] == pytest.approx(cached[0], rel=1e-6)
    assert len(reference[1]) == len(cached[1]) > 8
    for (name, a), (_, b) in zip(reference[1], cached[1], strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            assert float((a - b).abs().max() / a.abs().max().clamp_min(1e-3)) < tolerance, name
    for (name, a), (_, b) in zip(reference[2], cached[2], strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name
    assert torch.equal(reference[3], cached[3])  # the replay leaves the random stream where it was


def test_two_towers_equal_the_loss_written_out_over_chunks():
    cached, pairs = two_towers(CHUNK, in_modality_weights=(0.5, 0.0))
    reference = copy.deepcopy(cached)
    model = reference.model

    def over_chunks(encoder: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoder(batch[start:start + CHUNK]) for start in range(0, ROWS, CHUNK)])

    def written_out():  # TwoTowerMethod.training_loss, each encoder pass over the chunks
        batch_a = reference.input_a.collate([a for a, _ in pairs])
        batch_b = reference.input_b.collate([b for _, b in pairs])
        view_a, _ = reference.input_a.augment(batch_a, None), reference.input_b.augment(batch_b, None)
        z_a = model.head_a(over_chunks(model.encoder_a, batch_a))
        z_b = model.head_b(over_chunks(model.encoder_b, batch_b))
        cross = model.cross(z_a, z_b)
        second_a = model.head_a(over_chunks(model.encoder_a, view_a))
        return cross + 0.5 * model.in_modality(z_a, second_a)

    expected = one_step(reference, written_out)
    got = one_step(cached, lambda: cached.training_loss(pairs)[0])
    assert_same_step(expected, got)
    # Running statistics moved once per chunk: 3 chunks of the features, 3 of the second view.
    assert int(cached.model.encoder_a[1].num_batches_tracked) == 6
    assert int(cached.model.encoder_b[1].num_batches_tracked) == 3
    # Dropout did draw: without the replay the second pass would differ (a check that can fail).
    with torch.no_grad():
        x = torch.randn(4, 6)
        assert not torch.equal(cached.model.encoder_a(x), cached.model.encoder_a(x))


class ChunkedEncoder(nn.Module):
    """An encoder run over consecutive chunks with an ordinary graph: the uncached reference."""

    def __init__(self, encoder: nn.Module, chunk: int):
        super().__init__()
        self.encoder, self.chunk = encoder, chunk

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encoder(part) for part in batch.split(self.chunk)])


def uncached_chunked(method: TwoTowerMethod, chunk: int) -> TwoTowerMethod:
    reference = copy.deepcopy(method)
    model = reference.model
    model.grad_cache_chunk = None
    for owner in (model, model.momentum_branch):
        if owner is not None:
            owner.encoder_a = ChunkedEncoder(owner.encoder_a, chunk)
            owner.encoder_b = ChunkedEncoder(owner.encoder_b, chunk)
    return reference


def test_momentum_queues_and_harmonized_gradients():
    harmonizer = GradientHarmonizer(realign=True, curriculum_share=0.2, curriculum_floor=0.5)
    cached, pairs = two_towers(CHUNK, momentum=0.9, queue_size=6, in_modality_weights=(0.5, 0.5),
                               harmonizer=harmonizer)
    reference = uncached_chunked(cached, CHUNK)
    for _ in range(2):  # the second step has queued keys from the first
        assert_same_step(one_step(reference, lambda: reference.training_loss(pairs)[0]),
                         one_step(cached, lambda: cached.training_loss(pairs)[0]))


def test_two_engine_steps_equal_the_uncached_chunked_run():
    data = Pairs([torch.randn(6).numpy() for _ in range(24)], [torch.randn(5).numpy() for _ in range(24)],
                 [str(i) for i in range(24)])
    options = TrainOptions(max_steps=2, batch_size=12, lr=1e-2, head_lr=1e-2)
    cached, _ = two_towers(5, in_modality_weights=(0.5, 0.5))
    reference = uncached_chunked(cached, 5)
    start = copy.deepcopy(cached.model.state_dict())
    for method in (cached, reference):
        train_two_tower(method.model, data, method.input_a, method.input_b, options, progress_bar=False)
    moved = 0
    for (name, a), (_, b), before in zip(cached.model.state_dict().items(), reference.model.state_dict().items(),
                                         start.values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), name
        moved += not torch.equal(a, before)
    assert moved > 8


def test_option_checks():
    with pytest.raises(ConfigError, match="positive number of rows"):
        TwoTowerOptions(grad_cache_chunk=0).check()
    method, _ = two_towers(4)
    data = Pairs([torch.randn(6).numpy()] * 8, [torch.randn(5).numpy()] * 8, [str(i) for i in range(8)])
    with pytest.raises(ConfigError, match="one process"):
        train_two_tower(method.model, data, method.input_a, method.input_b, TrainOptions(devices=2, batch_size=2))
    from contrastkit.fit_command import parse_fit

    parsed = parse_fit(["--method", "clip", "--data", "code-docstring", "--out", "x", "--grad-cache-chunk", "16"],
                       modality="pairs")
    assert parsed.args.grad_cache_chunk == 16
