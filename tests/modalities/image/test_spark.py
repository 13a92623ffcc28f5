"""SparK (issue 22): the sparse ResNet never reads a masked position, its BatchNorm statistics are
those of the visible positions (a loop over them), the loss counts the masked patches only (a loop
over patches; visible targets perturbed change nothing), training updates the dense encoder that a
run keeps, and ``contrastkit fit --method spark`` trains on CIFAR-10 images.

Every check compares with a second derivation: gradients and perturbations of the input pixels,
explicit Python loops, a dense ResNet rebuilt from the saved weights.
"""

from __future__ import annotations

import copy
import math
import json

import pytest
import torch
from torch import nn

import contrastkit
from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.encoders import build_encoder
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.methods.spark import SparK, masked_patch_loss, masked_patch_rows
from contrastkit.modalities.image.training.run import global_batchnorm_choice
from contrastkit.nn.global_batchnorm import GlobalBatchNorm, convert_to_global_batchnorm
from contrastkit.nn.sparse_conv import (
    MASKED_OUTPUT,
    NORMALISATIONS,
    mask_at,
    random_active_mask,
    visible_only,
    zero_masked,
)
from tests.conftest import data_path
from tests.ddp import run_distributed
from tests.resume_harness import assert_fit_resumes_exactly, load_checkpoint

CIFAR = DataInfo(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)  # CIFAR stem, 4x4 grid
LARGE = DataInfo(channels=3, image_size=96, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)  # ImageNet stem, 3x3



def build(data: DataInfo = CIFAR, backbone: str = "auto", **options) -> SparK:
    torch.manual_seed(0)
    return build_method("spark", FitConfig(method="spark", backbone=backbone, width=0.125,
                                           extra={"spark": options}), data)


def images_and_mask(data: DataInfo, grid: int, batch: int = 4, keep: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, data.channels, data.image_size, data.image_size, generator=generator)
    return images, random_active_mask(batch, grid, grid, keep, generator=generator)


def randomise_batchnorm(model: nn.Module) -> None:
    # Non-trivial affine parameters and running statistics, so that a wrong one would show.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.weight.shape
            with torch.no_grad():
                module.weight.copy_(1 + 0.5 * torch.rand(shape, generator=generator))
                module.bias.copy_(torch.randn(shape, generator=generator))
                module.running_mean.copy_(torch.randn(shape, generator=generator))
                module.running_var.copy_(1 + torch.rand(shape, generator=generator))


# -- the mask ------------------------------------------------------------------------------------------

def test_a_mask_keeps_the_same_number_of_patches_in_every_image_and_repeats_over_each_cell():
    active = random_active_mask(200, 4, 4, keep=6, generator=torch.Generator().manual_seed(0))
    assert active.shape == (200, 1, 4, 4) and bool((active.flatten(1).sum(1) == 6).all())
    counts = active.flatten(1).double().sum(0)  # each cell visible with probability 6/16: 75 of 200
    assert counts.min() > 45 and counts.max() < 105
    fine = mask_at(active, 16, 16)
    for b in range(3):
        for y in range(16):
            for x in range(16):
                assert fine[b, 0, y, x] == active[b, 0, y // 4, x // 4]
    assert build().visible_patches == 6  # round(16 x (1 - 0.6)): the paper's mask ratio by default


# -- the sparse encoder never reads a masked position ----------------------------------------------------

@pytest.mark.parametrize("data", [CIFAR, LARGE], ids=["cifar-stem", "imagenet-stem"])
def test_every_layer_reads_zero_at_masked_positions(data):
    model = build(data)
    images, active = images_and_mask(data, model.grid)
    seen = []

    def record(module, inputs):
        seen.append((type(module).__name__, inputs[0].detach().clone()))
    # Registered before the sparse hooks: each sees its layer's input as the previous layer left it.
    handles = [m.register_forward_pre_hook(record) for m in model.backbone.modules()
               if isinstance(m, MASKED_OUTPUT + NORMALISATIONS)]
    maps = model.sparse_features(images, active)
    for handle in handles:
        handle.remove()
    kinds = {kind for kind, _ in seen}
    assert {"Conv2d", "BatchNorm2d"} <= kinds and ("MaxPool2d" in kinds) == (data is LARGE)
    for kind, x in seen + [("stage map", m) for m in maps]:
        masked = ~mask_at(active, x.shape[2], x.shape[3]).expand_as(x)
        assert bool((x[masked] == 0).all()), kind
        assert bool((x[~masked] != 0).any()), kind


@pytest.mark.parametrize("data", [CIFAR, LARGE], ids=["cifar-stem", "imagenet-stem"])
def test_the_gradient_at_masked_pixels_is_exactly_zero(data):
    model = build(data)
    images, active = images_and_mask(data, model.grid)
    pixels_masked = ~mask_at(active, data.image_size, data.image_size).expand_as(images)
    images.requires_grad_(True)
    generator = torch.Generator().manual_seed(2)
    with visible_only(model.backbone, active):
        pooled = model.backbone(zero_masked(images, active))  # global pooling over visible positions
    outputs = [pooled, *model.sparse_features(images, active), model.reconstruct(images, active)]
    for output in outputs:
        weights = torch.randn(output.shape, generator=generator)
        (gradient,) = torch.autograd.grad((output * weights).sum(), images, retain_graph=True)
        assert bool((gradient[pixels_masked] == 0).all())
        assert bool((gradient[~pixels_masked] != 0).any())
    # The loss reads masked pixels as targets only: with the targets held fixed, none reaches them.
    targets = images.detach().clone()
    loss = masked_patch_loss(model.reconstruct(images, active), targets, active)
    (gradient,) = torch.autograd.grad(loss, images)
    assert bool((gradient[pixels_masked] == 0).all()) and bool((gradient[~pixels_masked] != 0).any())


def test_changing_masked_pixels_changes_nothing_and_outside_the_block_the_network_is_dense():
    model = build()
    images, active = images_and_mask(CIFAR, model.grid)
    pixels_masked = ~mask_at(active, 32, 32).expand_as(images)
    noisy = images.clone()
    noisy[pixels_masked] = 100 * torch.randn(int(pixels_masked.sum()), generator=torch.Generator().manual_seed(3))
    for first, second in zip(model.sparse_features(images, active), model.sparse_features(noisy, active), strict=True):
        assert torch.equal(first, second)
    assert torch.equal(model.reconstruct(images, active), model.reconstruct(noisy, active))
    # Sparsity matters: the dense network on the same zero-filled image fills the holes ...
    dense = model.backbone.stage_features(zero_masked(images, active))[-1]
    assert not bool((dense[~mask_at(active, 4, 4).expand_as(dense)] == 0).all())
    # ... and the hooks are gone after the block: the network equals an untouched copy of itself.
    untouched = copy.deepcopy(model.backbone).eval()
    model.backbone.eval()
    torch.testing.assert_close(model.backbone(images), untouched(images), rtol=0, atol=0)


def test_other_layers_are_refused_by_name():
    with pytest.raises(ConfigError, match="Linear"):
        with visible_only(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2)), torch.ones(1, 1, 1, 1, dtype=torch.bool)):
            pass


# -- sparse BatchNorm: the statistics of the visible positions ----------------------------------------

def loop_statistics(x: torch.Tensor, visible: torch.Tensor) -> tuple[list[float], list[float], int]:
    """Per channel: the mean and the biased variance over visible positions, by explicit loops; the count."""
    batch, channels, height, width = x.shape
    means, variances, count = [], [], 0
    for c in range(channels):
        values = [float(x[b, c, i, j]) for b in range(batch) for i in range(height) for j in range(width)
                  if bool(visible[b, 0, i, j])]
        mean = sum(values) / len(values)
        means.append(mean)
        variances.append(sum((v - mean) ** 2 for v in values) / len(values))
        count = len(values)
    return means, variances, count


def test_sparse_batchnorm_normalises_with_a_loop_over_visible_positions():
    generator = torch.Generator().manual_seed(4)
    norm = nn.BatchNorm2d(3, momentum=0.3).double()
    randomise_batchnorm(norm)
    running_mean, running_var = norm.running_mean.clone(), norm.running_var.clone()
    active = random_active_mask(3, 2, 2, keep=2, generator=generator)
    x = zero_masked(torch.randn(3, 3, 6, 6, generator=generator, dtype=torch.float64), active)
    with visible_only(nn.Sequential(norm), active):
        y = norm(x).detach()
    visible = mask_at(active, 6, 6)
    means, variances, count = loop_statistics(x, visible)
    assert count == 3 * 2 * 9
    weight, bias = norm.weight.detach(), norm.bias.detach()
    for b in range(3):
        for c in range(3):
            for i in range(6):
                for j in range(6):
                    expected = 0.0
                    if visible[b, 0, i, j]:
                        expected = ((float(x[b, c, i, j]) - means[c]) / (variances[c] + norm.eps) ** 0.5
                                    * float(weight[c]) + float(bias[c]))
                    assert float(y[b, c, i, j]) == pytest.approx(expected, abs=1e-9)
    unbiased = torch.tensor(variances, dtype=torch.float64) * count / (count - 1)
    torch.testing.assert_close(norm.running_mean, 0.7 * running_mean + 0.3 * torch.tensor(means, dtype=torch.float64))
    torch.testing.assert_close(norm.running_var, 0.7 * running_var + 0.3 * unbiased)
    # In eval mode the running statistics normalise the visible positions; masked ones stay 0.
    norm.eval()
    with visible_only(nn.Sequential(norm), active):
        y = norm(x)
    dense = nn.functional.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    torch.testing.assert_close(y, dense * visible)


def test_batchnorm_inside_the_resnet_uses_the_visible_positions_of_its_own_resolution():
    model = build()
    randomise_batchnorm(model.backbone)
    norm = model.backbone.stages[2][0].branch[0][1]  # stage 3, 8x8 maps at 32 pixels
    before = norm.running_mean.clone()
    captured = {}

    def record_input(module, inputs):
        captured["x"] = inputs[0].detach().clone()

    def record_output(module, inputs, output):  # returns None: the output goes on unchanged
        captured["y"] = output.detach().clone()
    handle = norm.register_forward_pre_hook(record_input)  # before the sparse hooks: the dense input
    images, active = images_and_mask(CIFAR, model.grid)
    with visible_only(model.backbone, active):
        out = norm.register_forward_hook(record_output)  # after them: the scattered output
        model.backbone.stage_features(zero_masked(images, active))
        out.remove()
    handle.remove()
    x, y = captured["x"], captured["y"]
    visible = mask_at(active, x.shape[2], x.shape[3])
    rows = x.permute(0, 2, 3, 1)[visible[:, 0]]  # boolean indexing: (visible positions, C)
    mean, variance = rows.mean(0), rows.var(0, unbiased=False)
    expected = ((x - mean[:, None, None]) / (variance[:, None, None] + norm.eps).sqrt() * norm.weight[:, None, None]
                + norm.bias[:, None, None]) * visible
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.running_mean, 0.9 * before + 0.1 * mean, rtol=1e-5, atol=1e-6)


# -- the loss: masked patches only -------------------------------------------------------------------

def loop_loss(reconstruction: torch.Tensor, images: torch.Tensor, active: torch.Tensor) -> float:
    """Mean over masked patches of the mean squared error to the patch-normalised image, by loops."""
    batch, _, size, _ = images.shape
    grid = active.shape[2]
    patch = size // grid
    errors = []
    for b in range(batch):
        for i in range(grid):
            for j in range(grid):
                if bool(active[b, 0, i, j]):
                    continue
                cells = (b, slice(None), slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch))
                target = [float(v) for v in images[cells].flatten()]
                predicted = [float(v) for v in reconstruction[cells].flatten()]
                mean = sum(target) / len(target)
                std = (sum((t - mean) ** 2 for t in target) / (len(target) - 1) + 1e-6) ** 0.5
                errors.append(sum((p - (t - mean) / std) ** 2 for p, t in zip(predicted, target)) / len(target))
    return sum(errors) / len(errors)


def test_the_loss_is_a_loop_over_masked_patches_and_ignores_visible_targets():
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(3, 3, 16, 16, generator=generator, dtype=torch.float64)
    reconstruction = torch.randn(3, 3, 16, 16, generator=generator, dtype=torch.float64)
    active = random_active_mask(3, 4, 4, keep=7, generator=generator)
    loss = masked_patch_loss(reconstruction, images, active)
    assert float(loss) == pytest.approx(loop_loss(reconstruction, images, active), rel=1e-9)
    pixels_visible = mask_at(active, 16, 16).expand_as(images)
    perturbed = images + 5 * torch.randn(images.shape, generator=generator, dtype=torch.float64) * pixels_visible
    assert torch.equal(masked_patch_loss(reconstruction, perturbed, active), loss)
    assert torch.equal(masked_patch_loss(reconstruction * ~pixels_visible, images, active), loss)
    masked_perturbed = images + torch.randn(images.shape, generator=generator, dtype=torch.float64) * ~pixels_visible
    assert not torch.equal(masked_patch_loss(reconstruction, masked_perturbed, active), loss)


# -- the method ----------------------------------------------------------------------------------------

def batch_of(data: DataInfo, n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    shape = (n, data.channels, data.image_size, data.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


def test_builds_with_the_papers_settings_and_refuses_what_does_not_fit():
    model = build()
    assert model.grid == 4 and model.decoder.positions == [0, 1, 2, 3]  # strides 8, 4, 2, 1 of the CIFAR stem
    assert build(LARGE, "resnet50").decoder.positions == [0, 1, 2, 3] and build(LARGE).grid == 3  # strides 32..4
    with pytest.raises(ConfigError, match="resnet18 or resnet50"):
        build(backbone="small-cnn")
    with pytest.raises(ConfigError, match="mask_ratio"):
        build(mask_ratio=1.0)
    with pytest.raises(ConfigError, match="image-size"):
        build(DataInfo(channels=1, image_size=8, mean=(0.5,), std=(0.5,), num_samples=8))  # one 8-pixel patch
    with pytest.raises(ConfigError, match="multiple of 8"):
        build(DataInfo(channels=1, image_size=28, mean=(0.5,), std=(0.5,), num_samples=8))
    with pytest.raises(ConfigError, match="extra.spark"):
        build(mask_ration=0.5)
    with pytest.raises(ConfigError, match="crop_scale"):
        build(crop_scale=0.5)


def test_training_updates_the_dense_encoder_that_users_keep():
    model = build()
    # One copy of the encoder: every encoder weight is under backbone., nothing else holds a copy.
    encoder_keys = set(model.backbone.state_dict())
    state = model.state_dict()
    assert {k.removeprefix("backbone.") for k in state if k.startswith("backbone.")} == encoder_keys
    assert not [k for k in state if not k.startswith(("backbone.", "decoder.", "views.", "eval_view.", "objective."))]
    initial = copy.deepcopy(model.backbone.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    torch.manual_seed(0)
    for _ in range(3):
        loss, _ = model.training_loss(batch_of(CIFAR))
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, initial[k])]
    assert len(changed) == len(initial)  # every weight and running statistic moved
    # A dense ResNet rebuilt from the method's weights embeds like the method: the trained encoder.
    dense = build_encoder("resnet18", in_channels=3, image_size=32, width=0.125)
    dense.load_state_dict({k.removeprefix("backbone."): v for k, v in model.state_dict().items()
                           if k.startswith("backbone.")})
    model.eval()
    dense.eval()
    images = batch_of(CIFAR, 8, seed=1)["image"]
    torch.testing.assert_close(model.embed(images), dense(model.eval_view(images)), rtol=0, atol=0)


def test_two_steps_from_the_command_line_on_cifar10(tmp_path):
    data_path("cifar10-test")
    out = tmp_path / "spark"
    assert main(["fit", "--method", "spark", "--data", "cifar10-test", "--holdout", "0", "--batch-size", "32",
                 "--width", "0.125", "--optimizer", "adamw", "--max-steps", "2", "--max-epochs", "1", "--limit", "128",
                 "--no-report", "--no-baselines", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    checkpoint = load_checkpoint(out)
    assert summary["method"] == "spark" and checkpoint["global_step"] == 2
    saved = {k.removeprefix("method.backbone."): v for k, v in checkpoint["state_dict"].items()
             if k.startswith("method.backbone.")}
    dense = build_encoder("resnet18", in_channels=3, image_size=32, width=0.125)
    dense.load_state_dict(saved)
    dense.eval()
    model = contrastkit.load(out)
    images = batch_of(CIFAR, 8, seed=2)["image"]
    torch.testing.assert_close(model.embed(images), dense(model.eval_view(images)), rtol=0, atol=0)
    # The exported encoder (safetensors, reloaded without the training code) is that dense ResNet.
    assert main(["export", "--checkpoint", str(out / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "exported")]) == 0
    with torch.no_grad():
        torch.testing.assert_close(contrastkit.load(tmp_path / "exported")(images), model.embed(images), rtol=0, atol=0)


@pytest.mark.slow
def test_killed_between_checkpoints_resumes_exactly(tmp_path):
    # The masks are drawn from the global random stream on the device: a resumed run draws the same.
    options = ["--method", "spark", "--data", "digits", "--image-size", "16", "--limit", "320", "--holdout", "0",
               "--batch-size", "64", "--width", "0.125", "--optimizer", "adamw", "--epochs", "3", "--no-report",
               "--no-baselines", "--seed", "6", "--checkpoint-every-steps", "2"]
    assert_fit_resumes_exactly(tmp_path, options, kill_after_step=6, seed=7)


# -- data parallel: sparse BatchNorm over the visible positions of every process ----------------------

def sparse_step(rank: int, world_size: int, images: torch.Tensor, active: torch.Tensor, convert: bool) -> dict:
    """The loss and gradients of this rank's slice (the masks given, not drawn); gradients averaged
    over the ranks as DDP does."""
    model = build()
    if convert:
        convert_to_global_batchnorm(model)
    share = len(images) // world_size
    rows = slice(rank * share, (rank + 1) * share)
    predictions, targets = masked_patch_rows(model.reconstruct(images[rows], active[rows]), images[rows], active[rows])
    loss = model.objective(predictions, targets)
    loss.backward()
    grads = {}
    for name, parameter in model.named_parameters():
        grad = parameter.grad.clone()
        if world_size > 1:
            torch.distributed.all_reduce(grad)
            grad /= world_size
        grads[name] = grad
    running = {name: b.clone() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))}
    return {"loss": loss.detach(), "grads": grads, "running": running,
            "global_bn": sum(isinstance(m, GlobalBatchNorm) for m in model.modules())}


def two_process_sparse_step(rank: int, world_size: int, images: torch.Tensor, active: torch.Tensor) -> dict:
    config = FitConfig(method="spark", width=0.125, devices=world_size)
    convert, _ = global_batchnorm_choice(config, build())  # what `fit` decides: the recipe's global BatchNorm
    return sparse_step(rank, world_size, images, active, convert)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one_on_the_concatenated_batch():
    images, active = images_and_mask(CIFAR, 4, batch=8, keep=6, seed=7)
    single = sparse_step(0, 1, images, active, convert=False)
    ranks = run_distributed(two_process_sparse_step, images, active)
    for result in ranks:
        assert result["global_bn"] > 0
        torch.testing.assert_close(result["loss"], single["loss"], rtol=1e-5, atol=1e-6)
        for name, grad in single["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-3, atol=1e-5, msg=name)
        for name, value in single["running"].items():
            torch.testing.assert_close(result["running"][name], value, rtol=1e-5, atol=1e-6, msg=name)
