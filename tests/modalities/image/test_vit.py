"""The project's ViT (issue 22): shapes for every size and channel count, the default patch size,
position tables resized bicubically when the image size changes (against a bicubic interpolation
written out with the cubic convolution kernel), visible-patch encoding (equal to encoding every
patch with attention restricted to the visible ones, then gathering; masked pixels never reach the
output), the optional timm path, and the ViT under the methods that take a backbone (SimCLR, BYOL)
and under JEPA and MSN."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.encoders import build_encoder
from contrastkit.modalities.image.encoders.vit import SIZES, VisionTransformer, default_patch_size
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.nn.patch_transformer import gather_tokens
from tests.conftest import data_path
from tests.resume_harness import load_checkpoint

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)
COLOUR = DataInfo(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)



def images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


# -- shapes and sizes --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "channels", "size", "width"), [
    ("vit-micro", 1, 8, 1.0), ("vit-micro", 3, 32, 0.5), ("vit-micro", 4, 48, 0.25),
    ("vit-tiny", 3, 32, 0.25), ("vit-small", 2, 16, 0.125),
])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_every_size_gives_its_width_for_any_channels_and_size(name, channels, size, width, pooling):
    dim, depth, heads = SIZES[name]
    torch.manual_seed(0)
    encoder = build_encoder(name, in_channels=channels, image_size=size, width=width, pooling=pooling)
    expected_dim = max(4 * heads, round(dim * width / (4 * heads)) * 4 * heads)
    assert encoder.output_dim == expected_dim and len(encoder.blocks.layers) == depth and encoder.heads == heads
    assert encoder.num_patches == (size // default_patch_size(size)) ** 2
    x = images(3, channels, size)
    assert encoder(x).shape == (3, expected_dim)
    assert encoder.tokens(x).shape == (3, encoder.num_patches, expected_dim)


def test_full_width_sizes_and_default_patch_sizes():
    assert [build_encoder(n, 3, 32).output_dim for n in ("vit-micro", "vit-tiny", "vit-small")] == [128, 192, 384]
    # 2 px at 8 (no 1-pixel patches), a grid of at most 8 up to 64 px, ViT's 16-px patches at 224.
    assert [default_patch_size(s) for s in (8, 28, 32, 48, 64, 96, 224)] == [2, 4, 4, 6, 8, 8, 16]
    vit = build_encoder("vit-micro", 3, 224, width=0.125)
    assert vit.patch_size == 16 and vit.grid == 14


def test_mean_pooling_is_the_mean_of_the_tokens_and_cls_is_the_first_output():
    torch.manual_seed(0)
    x = images(2, 3, 32)
    mean_vit = VisionTransformer(3, 32, 16, 2, 2, pooling="mean")
    torch.testing.assert_close(mean_vit(x), mean_vit.tokens(x).mean(dim=1))
    cls_vit = VisionTransformer(3, 32, 16, 2, 2, pooling="cls")
    encoded = cls_vit.encode(x)
    assert encoded.shape[1] == cls_vit.num_patches + 1
    torch.testing.assert_close(cls_vit(x), encoded[:, 0])
    torch.testing.assert_close(cls_vit.tokens(x), encoded[:, 1:])


def test_feature_map_lays_the_patch_tokens_on_their_grid_and_a_remainder_is_left_out():
    torch.manual_seed(0)
    vit = build_encoder("vit-micro", in_channels=3, image_size=32, width=0.25)
    x = images(2, 3, 32)
    maps, tokens = vit.feature_map(x), vit.tokens(x)
    assert maps.shape == (2, vit.output_dim, 8, 8)
    for r, c in ((0, 0), (2, 5), (7, 7)):
        torch.testing.assert_close(maps[:, :, r, c], tokens[:, 8 * r + c], atol=0, rtol=0)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), vit(x))
    # 34 px: the last 2 rows and columns are not a whole patch and are left out, as the convolution does.
    wider = torch.cat([x, torch.randn(2, 3, 32, 2)], dim=3)
    wider = torch.cat([wider, torch.randn(2, 3, 2, 34)], dim=2)
    torch.testing.assert_close(vit(wider), vit(x), atol=0, rtol=0)


def test_bad_sizes_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="must divide the image size"):
        build_encoder("vit-micro", 3, 32, patch_size=5)
    vit = build_encoder("vit-micro", 3, 32, width=0.125)
    with pytest.raises(DataError, match="smaller than one patch"):
        vit(images(1, 3, 3))
    with pytest.raises(ConfigError, match="pooling"):
        build_encoder("vit-micro", 3, 32, pooling="max")
    with pytest.raises(ConfigError, match="width"):
        build_encoder("vit-tiny", 3, 32, width=0.0)


# -- positions resized to another image size ---------------------------------------------------------

def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for a fraction t
    (a = -0.75, the kernel of PyTorch's and OpenCV's bicubic)."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]


def bicubic_by_hand(grid: np.ndarray, out_rows: int, out_cols: int) -> np.ndarray:
    """(rows, cols, D) -> (out_rows, out_cols, D): separable cubic convolution, pixel centres aligned
    (source = (target + 0.5) * in / out - 0.5), edge samples repeated."""

    def resize_axis(values: np.ndarray, size: int) -> np.ndarray:  # along axis 0
        n = values.shape[0]
        out = np.zeros((size, *values.shape[1:]))
        for i in range(size):
            source = (i + 0.5) * n / size - 0.5
            base = math.floor(source)
            for tap, weight in zip(range(base - 1, base + 3), cubic_weights(source - base), strict=True):
                out[i] += weight * values[min(max(tap, 0), n - 1)]
        return out

    rows_done = resize_axis(grid, out_rows)
    return resize_axis(rows_done.transpose(1, 0, 2), out_cols).transpose(1, 0, 2)


@pytest.mark.parametrize("positions", ["sincos", "learned"])
def test_positions_are_the_table_at_the_trained_size_and_bicubic_on_the_grid_at_another(positions):
    torch.manual_seed(0)
    vit = build_encoder("vit-micro", in_channels=3, image_size=32, width=0.25, positions=positions)
    if positions == "learned":
        assert any(name == "position_table" for name, _ in vit.named_parameters())
    table = vit.position_table.detach()
    x32, x48 = images(2, 3, 32), images(2, 3, 48, seed=1)
    conv = vit.patch_embed
    # At the trained size: the table itself, added to each patch's embedding.
    torch.testing.assert_close(vit.embed_patches(x32), conv(x32).flatten(2).transpose(1, 2) + table, atol=0, rtol=0)
    # At 48 px: a 12 x 12 grid, each channel of the 8 x 8 table resized bicubically.
    expected = bicubic_by_hand(table[0].reshape(8, 8, -1).double().numpy(), 12, 12).reshape(144, -1)
    resized = vit.positions((12, 12))[0].detach()
    np.testing.assert_allclose(resized.double().numpy(), expected, atol=1e-5)
    torch.testing.assert_close(vit.embed_patches(x48) - conv(x48).flatten(2).transpose(1, 2), resized.expand(2, -1, -1),
                               atol=1e-6, rtol=1e-5)
    assert vit(x48).shape == (2, vit.output_dim)
    # A non-square image gets a rectangular grid.
    assert vit.positions((8, 12)).shape == (1, 96, vit.output_dim)
    assert vit(torch.randn(1, 3, 32, 48)).shape == (1, vit.output_dim)


# -- encoding visible patches only -------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_visible_tokens_equal_all_tokens_with_attention_restricted_to_the_visible(pooling):
    torch.manual_seed(0)
    vit = build_encoder("vit-micro", in_channels=3, image_size=32, width=0.25, pooling=pooling).train()
    x = images(4, 3, 32)
    keep = torch.rand(4, vit.num_patches, generator=torch.Generator().manual_seed(3)).argsort(dim=1)[:, :20]
    visible = vit.tokens(x, keep_index=keep)
    # Second derivation: every patch in the sequence, the masked ones hidden from attention as padding.
    tokens = vit.embed_patches(x)
    hidden = torch.ones(4, vit.num_patches, dtype=torch.bool).scatter(1, keep, False)
    if vit.cls_token is not None:
        tokens = torch.cat([vit.cls_token.expand(4, -1, -1), tokens], dim=1)
        hidden = torch.cat([torch.zeros(4, 1, dtype=torch.bool), hidden], dim=1)
    encoded = vit.norm(vit.blocks(tokens, src_key_padding_mask=hidden))
    patch_outputs = encoded if vit.cls_token is None else encoded[:, 1:]
    torch.testing.assert_close(visible, gather_tokens(patch_outputs, keep), atol=1e-5, rtol=1e-5)
    pooled = encoded[:, 0] if pooling == "cls" else gather_tokens(patch_outputs, keep).mean(dim=1)
    torch.testing.assert_close(vit(x, keep_index=keep), pooled, atol=1e-5, rtol=1e-5)


def test_masked_pixels_do_not_reach_the_output_and_visible_ones_do():
    torch.manual_seed(0)
    vit = build_encoder("vit-micro", in_channels=3, image_size=32, width=0.25)
    x = images(2, 3, 32)
    keep = torch.tensor([[0, 5, 9, 63], [1, 2, 30, 40]])
    before = vit.tokens(x, keep_index=keep)

    def perturbed(patch_of_image: list[int]) -> torch.Tensor:
        changed = x.clone()
        for b, patch in enumerate(patch_of_image):
            row, col = divmod(patch, vit.grid)
            changed[b, :, 4 * row: 4 * row + 4, 4 * col: 4 * col + 4] += 10 * torch.randn(3, 4, 4)
        return vit.tokens(changed, keep_index=keep)

    torch.testing.assert_close(perturbed([7, 3]), before, atol=0, rtol=0)  # patches 7 and 3 are masked
    assert not torch.allclose(perturbed([9, 30]), before, atol=1e-3)  # visible ones


# -- timm, optional -----------------------------------------------------------------------------------

def test_timm_vit_builds_where_timm_imports():
    try:
        available = importlib.util.find_spec("timm") is not None
        if available:
            import timm  # noqa: F401  (it imports torchvision, which may not import beside this torch)
    except Exception as error:  # noqa: BLE001 - any import failure means the optional path is unavailable
        available = False
        reason = f"timm does not import here ({type(error).__name__}: {error})"
    else:
        reason = "timm is not installed"
    if not available:
        pytest.skip(f"{reason}; the built-in vit-* backbones stand in for it")
    encoder = build_encoder("timm:vit_tiny_patch16_224", in_channels=3, image_size=32, img_size=32, patch_size=4)
    assert encoder(images(2, 3, 32)).shape == (2, encoder.output_dim)


# -- the ViT under methods -----------------------------------------------------------------------------

def batch(n: int, data: DataInfo, seed: int = 0) -> dict[str, torch.Tensor]:
    shape = (n, data.channels, data.image_size, data.image_size)
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return {"image": pixels, "index": torch.arange(n), "label": torch.full((n,), -1)}


@pytest.mark.parametrize(("method", "extra"), [
    ("simclr", {}), ("byol", {}), ("vicregl", {}), ("jepa", {}), ("msn", {}), ("mae", {}),
    ("dino", {"dino": {"local_crops": 2}}),  # 14-px local crops: a 3 x 3 grid of the 8 x 8 table, resized
])
def test_methods_train_every_weight_of_a_vit_backbone(method, extra):
    torch.manual_seed(0)
    config = FitConfig(method=method, backbone="vit-micro", width=0.125, projection_dim=16, extra=extra)
    model = build_method(method, config, COLOUR)
    vit = getattr(model, "backbone", None) or model.encoder
    assert isinstance(vit, VisionTransformer) and vit.output_dim == 16
    loss, _ = model.training_loss(batch(8, COLOUR))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vit.parameters() if p.requires_grad)
    assert model.embed(batch(4, COLOUR)["image"]).shape == (4, 16)


def test_masked_methods_refuse_a_cnn_and_sizing_options_beside_a_named_vit():
    for method in ("jepa", "msn", "mae"):
        with pytest.raises(ConfigError, match="vision transformer"):
            build_method(method, FitConfig(method=method, backbone="resnet18"), COLOUR)
        with pytest.raises(ConfigError, match="sets the ViT's size"):
            build_method(method, FitConfig(method=method, backbone="vit-micro", extra={method: {"depth": 2}}), COLOUR)


def test_jepa_on_a_named_vit_keeps_its_patch_rule():
    model = build_method("jepa", FitConfig(method="jepa", backbone="vit-micro", width=0.125), TINY)
    assert model.encoder.patch_size == 1 and model.masks.grid == 8  # JEPA's latent targets allow 1-px patches


@pytest.mark.parametrize(("method", "data", "limit"), [("simclr", "digits", 128), ("jepa", "cifar10-test", 64)])
def test_two_steps_from_the_command_line_with_a_vit(tmp_path, method, data, limit):
    if data != "digits":
        data_path(data)
    out = tmp_path / method
    assert main(["fit", "--method", method, "--backbone", "vit-micro", "--data", data, "--holdout", "0",
                 "--batch-size", "32", "--width", "0.25", "--optimizer", "adamw", "--max-steps", "2",
                 "--max-epochs", "1", "--limit", str(limit), "--no-report", "--no-baselines", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["collapse"]["n_samples"] == limit
    assert load_checkpoint(out)["global_step"] == 2
