"""GradCache on images (``--grad-cache-chunk``): the bounded-memory step equals the whole-batch step
with the backbone's BatchNorm over chunks, derived a second way (the loss written out over the
chunks, with an ordinary graph and no caching); BatchNorm's running statistics move once per chunk;
a run through the engine equals the uncached chunked run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import GRAD_CACHE_METHODS, FitConfig, validate
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo

IMAGE_SIZE = 16
DATA = DataInfo(channels=3, image_size=IMAGE_SIZE, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)


def tiny_method(name: str, chunk: int | None, **options) -> nn.Module:
    """The method on a ResNet-18 at width 1/8 (BatchNorm in every block), 16-pixel images."""
    torch.manual_seed(0)
    config = FitConfig(method=name, backbone="resnet18", width=0.125, projection_dim=16, grad_cache_chunk=chunk,
                       **options)
    return build_method(name, config, DATA).train()


def image_batch(rows: int = 10) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (rows, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    return {"image": images, "index": torch.arange(rows), "label": torch.full((rows,), -1)}


def one_step(method: nn.Module, loss_of_batch, seed: int = 7):
    """Loss, every parameter's gradient, every buffer and the next random number after one backward
    pass of ``loss_of_batch()`` from a fixed random state."""
    method.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_of_batch()
    loss.backward()
    gradients = [(name, p.grad.clone()) for name, p in method.named_parameters() if p.requires_grad]
    buffers = [(name, b.clone()) for name, b in method.named_buffers()]
    return float(loss.detach()), gradients, buffers, torch.rand(3)


def assert_same_step(reference, cached, tolerance: float = 1e-5):
    loss_a, grads_a, buffers_a, after_a = reference
    loss_b, grads_b, buffers_b, after_b = cached
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert len(grads_a) == len(grads_b) > 20
    for (name, a), (_, b) in zip(grads_a, grads_b, strict=True):
        assert b is not None, name
        scale = a.abs().max().clamp_min(1e-3)
        assert float((a - b).abs().max() / scale) < tolerance, name
    for (name, a), (_, b) in zip(buffers_a, buffers_b, strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name
    assert torch.equal(after_a, after_b)  # the replay leaves the random stream where it was


@pytest.mark.parametrize("chunk", [4, 7])
def test_simclr_gradients_equal_the_loss_written_out_over_chunks(chunk):
    batch = image_batch(10)  # 20 view rows: chunks straddle the two views, the last one is short
    cached = tiny_method("simclr", chunk)
    reference = copy.deepcopy(cached)  # same weights and running statistics

    def written_out():
        view_a, view_b = reference.views.two_views(batch["image"])
        rows = torch.cat([view_a, view_b])
        features = torch.cat([reference.backbone(rows[start:start + chunk]) for start in range(0, len(rows), chunk)])
        z_a, z_b = reference.projection(features).chunk(2)
        return reference.objective(z_a, z_b)

    expected = one_step(reference, written_out)
    got = one_step(cached, lambda: cached.training_loss(batch)[0])
    assert_same_step(expected, got)
    # Running statistics moved once per chunk (the replay in the backward pass left them alone).
    chunks = -(-20 // chunk)
    tracked = [int(b) for name, b in got[2] if name.startswith("backbone") and name.endswith("num_batches_tracked")]
    assert tracked and set(tracked) == {chunks}
    # BatchNorm over chunks is not BatchNorm over the batch: the comparison above can tell them apart.
    whole = tiny_method("simclr", None)  # the same initial weights
    assert one_step(whole, lambda: whole.training_loss(batch)[0])[0] != pytest.approx(got[0], rel=1e-6)


class ChunkedBackbone(nn.Module):
    """A backbone run over consecutive chunks with an ordinary graph: the uncached reference."""

    def __init__(self, backbone: nn.Module, chunk: int):
        super().__init__()
        self.backbone, self.chunk = backbone, chunk

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.backbone(part) for part in views.split(self.chunk)])


def uncached_chunked(method: nn.Module, chunk: int) -> nn.Module:
    """A copy of ``method`` whose backbones (online, and MoCo's key backbone) run in chunks without GradCache."""
    reference = copy.deepcopy(method)
    reference.grad_cache_chunk = None
    for name in ("backbone", "key_backbone"):
        if hasattr(reference, name):
            setattr(reference, name, ChunkedBackbone(getattr(reference, name), chunk))
    return reference


@pytest.mark.parametrize("name", ["moco", "nnclr", "barlowtwins", "vicreg"])
def test_other_methods_equal_their_uncached_chunked_step(name):
    batch = image_batch(10)
    options = {"extra": {"moco": {"symmetric": True}}} if name == "moco" else {}
    cached = tiny_method(name, 4, **options)
    reference = uncached_chunked(cached, 4)
    assert_same_step(one_step(reference, lambda: reference.training_loss(batch)[0]),
                     one_step(cached, lambda: cached.training_loss(batch)[0]))


def test_option_checks():
    assert set(GRAD_CACHE_METHODS) == {"simclr", "moco", "nnclr", "barlowtwins", "vicreg"}
    with pytest.raises(ConfigError, match="does not apply to byol"):
        validate(FitConfig(method="byol", grad_cache_chunk=64))
    with pytest.raises(ConfigError, match="one process"):
        validate(FitConfig(method="simclr", grad_cache_chunk=64, devices=2))
    with pytest.raises(ConfigError, match="positive number of rows"):
        validate(FitConfig(method="simclr", grad_cache_chunk=0))
    from contrastkit.fit_command import parse_fit

    parsed = parse_fit(["--method", "simclr", "--data", "digits", "--grad-cache-chunk", "32"], modality="image")
    assert parsed.args.grad_cache_chunk == 32


def test_two_engine_steps_equal_the_uncached_chunked_run(tmp_path, monkeypatch):
    from contrastkit.modalities.image.training import run

    built, initial = {}, {}

    def build(reference: bool):
        def builder(name, config, data):
            method = build_method(name, config, data)
            initial[reference] = copy.deepcopy(method.state_dict())
            built[reference] = uncached_chunked(method, config.grad_cache_chunk) if reference else method
            return built[reference]
        return builder

    quick = dict(data="digits", limit=96, holdout=0.0, batch_size=48, max_steps=2, width=0.25, report=False,
                 probe_every=0, baselines=False, grad_cache_chunk=20)
    for reference in (False, True):
        monkeypatch.setattr(run, "build_method", build(reference))
        run.fit(FitConfig(**quick, out=str(tmp_path / f"run-{reference}")))
    cached, uncached = built[False], built[True]
    assert cached.grad_cache_chunk == 20 and uncached.grad_cache_chunk is None
    for a, b in zip(initial[False].values(), initial[True].values(), strict=True):
        assert torch.equal(a, b)  # both runs start from the same weights
    moved = 0
    for (name, a), (_, b), start in zip(cached.state_dict().items(), uncached.state_dict().items(),
                                        initial[False].values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), name
        moved += not torch.equal(a, start)
    assert moved > 10  # two steps trained (weights, running statistics and step counts moved)
