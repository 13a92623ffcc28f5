"""Encoders: output shapes, parameter counts against torchvision's published counts and a
closed-form count, channels-last equivalence, stems, zero-init, and user errors."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from contrastkit.modalities.image.encoders import ENCODERS, build_encoder
from contrastkit.modalities.image.encoders.resnet import BasicBlock, Bottleneck, StridedPointwiseConv
from contrastkit.core.errors import ConfigError


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_bn_count(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + 2 * c_out


def resnet_count(
    in_channels: int, width: float, blocks: tuple[int, ...], expansion: int, cifar_stem: bool
) -> int:
    """Parameters of a ResNet without fc, summed layer by layer from the paper's table 1."""
    channels = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
    total = conv_bn_count(3 if cifar_stem else 7, in_channels, channels[0])
    c_in = channels[0]
    for stage, (c, depth) in enumerate(zip(channels, blocks, strict=True)):
        for position in range(depth):
            stride = 2 if stage > 0 and position == 0 else 1
            c_out = c * expansion
            if expansion == 1:
                total += conv_bn_count(3, c_in, c) + conv_bn_count(3, c, c)
            else:
                total += conv_bn_count(1, c_in, c) + conv_bn_count(3, c, c)
                total += conv_bn_count(1, c, c_out)
            if stride != 1 or c_in != c_out:
                total += conv_bn_count(1, c_in, c_out)
            c_in = c_out
    return total


# torchvision's published totals, and what the fc layer and the 7x7 stem conv contribute.
TORCHVISION_RESNET18_10_CLASSES = 11_181_642
FC_512_TO_10 = 512 * 10 + 10  # 5,130
STEM_7X7 = 7 * 7 * 3 * 64  # 9,408
STEM_3X3 = 3 * 3 * 3 * 64  # 1,728
TORCHVISION_RESNET50 = 25_557_032
FC_2048_TO_1000 = 2048 * 1000 + 1000


def test_closed_form_count_reproduces_torchvision() -> None:
    # The formula is validated against the published counts before it is used at other widths.
    assert resnet_count(3, 1.0, (2, 2, 2, 2), 1, cifar_stem=False) == (
        TORCHVISION_RESNET18_10_CLASSES - FC_512_TO_10
    )
    assert resnet_count(3, 1.0, (3, 4, 6, 3), 4, cifar_stem=False) == (
        TORCHVISION_RESNET50 - FC_2048_TO_1000
    )


def test_resnet18_cifar_stem_parameter_count() -> None:
    model = build_encoder("resnet18", in_channels=3, image_size=32)
    expected = TORCHVISION_RESNET18_10_CLASSES - FC_512_TO_10 - STEM_7X7 + STEM_3X3
    assert expected == 11_168_832
    assert count_parameters(model) == expected
    assert model.output_dim == 512


def test_resnet50_imagenet_stem_parameter_count() -> None:
    model = build_encoder("resnet50", in_channels=3, image_size=224)
    assert count_parameters(model) == 23_508_032 == TORCHVISION_RESNET50 - FC_2048_TO_1000
    assert model.output_dim == 2048


@pytest.mark.parametrize(
    ("name", "blocks", "expansion"), [("resnet18", (2, 2, 2, 2), 1), ("resnet50", (3, 4, 6, 3), 4)]
)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_width_eighth_parameter_count(name, blocks, expansion, in_channels) -> None:
    model = build_encoder(name, in_channels=in_channels, image_size=32, width=0.125)
    expected = resnet_count(in_channels, 0.125, blocks, expansion, cifar_stem=True)
    assert count_parameters(model) == expected
    assert model.output_dim == 64 * expansion
    channels = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert channels[0] == 8 and max(channels) == 64 * expansion


def test_resnet18_eighth_width_is_about_180k_parameters() -> None:
    count = count_parameters(build_encoder("resnet18", in_channels=3, image_size=32, width=0.125))
    assert 170_000 < count < 190_000  # the ~0.18 M quoted in ANCHORS.md


ENCODER_CASES = [("small-cnn", 1.0), ("resnet18", 0.125), ("resnet50", 0.125)]
INPUT_CASES = [(1, 8), (1, 28), (3, 32), (3, 96)]


@pytest.mark.parametrize(("name", "width"), ENCODER_CASES)
@pytest.mark.parametrize(("channels", "size"), INPUT_CASES)
def test_output_shapes(name, width, channels, size) -> None:
    torch.manual_seed(0)
    model = build_encoder(name, in_channels=channels, image_size=size, width=width)
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, model.output_dim)
    assert torch.isfinite(out).all()
    # Not collapsed: different images give different features.
    assert (out[0] - out[1]).abs().max() > 0


@pytest.mark.parametrize(("size", "final_side"), [(8, 4), (28, 7), (32, 4), (96, 12)])
def test_small_cnn_keeps_at_least_4x4_map(size, final_side) -> None:
    model = build_encoder("small-cnn", in_channels=1, image_size=size)
    feature_map = model.features(torch.randn(2, 1, size, size))
    assert feature_map.shape[-2:] == (final_side, final_side)
    assert model.output_dim == 256
    assert build_encoder("small-cnn", in_channels=1, image_size=size, width=0.5).output_dim == 128


@pytest.mark.parametrize(("image_size", "kernel"), [(32, 3), (64, 3), (65, 7), (224, 7)])
def test_stem_chosen_from_image_size(image_size, kernel) -> None:
    model = build_encoder("resnet18", in_channels=3, image_size=image_size, width=0.125)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.kernel_size == (kernel, kernel)
    has_max_pool = any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert has_max_pool == (kernel == 7)


def test_explicit_stem_overrides_image_size() -> None:
    model = build_encoder("resnet18", in_channels=3, image_size=32, width=0.125, cifar_stem=False)
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).kernel_size == (7, 7)
    model = build_encoder("resnet18", in_channels=3, image_size=224, width=0.125, cifar_stem=True)
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).kernel_size == (3, 3)


@pytest.mark.parametrize(("name", "width"), ENCODER_CASES)
def test_channels_last_matches_contiguous(name, width) -> None:
    torch.manual_seed(0)
    model = build_encoder(name, in_channels=3, image_size=32, width=width)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # non-trivial BN running statistics
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    actual = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_makes_blocks_identity(name) -> None:
    torch.manual_seed(0)
    model = build_encoder(name, in_channels=3, image_size=32, width=0.125, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert len(blocks) == (8 if name == "resnet18" else 16)
    for block in blocks:
        assert torch.count_nonzero(block.last_norm().weight) == 0
    # With a zero branch, a block computes relu(shortcut(x)).
    block = blocks[1]  # second block of stage 1: identity shortcut
    x = torch.randn(2, block.branch[0][0].in_channels, 8, 8)
    block.eval()
    torch.testing.assert_close(block(x.clone()), torch.relu(x))
    default = build_encoder(name, in_channels=3, image_size=32, width=0.125)
    default_blocks = [b for b in default.modules() if isinstance(b, BasicBlock | Bottleneck)]
    assert all(torch.all(b.last_norm().weight == 1) for b in default_blocks)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="resnet18") as error:
        build_encoder("resnet-18", in_channels=3, image_size=32)
    assert "timm:" in str(error.value)
    assert set(ENCODERS.names()) == {"small-cnn", "resnet18", "resnet50", "vit-micro", "vit-tiny", "vit-small", "vit"}


def test_unknown_option_is_config_error() -> None:
    with pytest.raises(ConfigError, match="cifar_stem"):
        build_encoder("small-cnn", in_channels=1, image_size=8, cifar_stem=True)


def test_bad_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="in_channels"):
        build_encoder("resnet18", in_channels=0, image_size=32)
    with pytest.raises(ConfigError, match="width"):
        build_encoder("resnet18", in_channels=3, image_size=32, width=0.0)


def test_timm_missing_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ConfigError, match="pip install timm"):
        build_encoder("timm:resnet18", in_channels=3, image_size=32)


def test_timm_adapter_asks_for_random_init_and_pooled_features(monkeypatch) -> None:
    # A stand-in timm module records how the adapter calls it: never pretrained (nothing may be
    # downloaded at run time), no classifier, the data's channel count.
    calls = []

    class FakeModel(nn.Module):
        num_features = 12

        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 6)[:, :12]

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        return FakeModel()

    fake = types.SimpleNamespace(is_model=lambda name: name == "tiny", create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", fake)
    model = build_encoder("timm:tiny", in_channels=2, image_size=32, drop_rate=0.1)
    assert calls == [
        ("tiny", {"pretrained": False, "num_classes": 0, "in_chans": 2, "drop_rate": 0.1})
    ]
    assert model.output_dim == 12
    assert model(torch.randn(3, 2, 8, 8)).shape == (3, 12)
    with pytest.raises(ConfigError, match="no model named 'huge'"):
        build_encoder("timm:huge", in_channels=3, image_size=32)


def test_timm_model_when_installed() -> None:
    pytest.importorskip("timm")
    model = build_encoder("timm:resnet18", in_channels=1, image_size=32)
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, model.output_dim) == (2, 512)


def test_the_strided_shortcut_equals_torchs_strided_convolution():
    # Second derivation: torch's own stride-2 1x1 convolution on a contiguous (NCHW) input, whose
    # backward does not crash; the shortcut samples first, then convolves at stride 1.
    torch.manual_seed(0)
    shortcut = StridedPointwiseConv(8, 16, stride=2)
    images = torch.randn(4, 8, 64, 63)
    reference = nn.Conv2d(8, 16, 1, stride=2, bias=False)
    reference.weight.data.copy_(shortcut.weight.data)
    inputs = images.clone().requires_grad_()
    mine = shortcut(inputs.to(memory_format=torch.channels_last))
    mine.square().sum().backward()
    expected_inputs = images.clone().requires_grad_()
    expected = reference(expected_inputs)
    expected.square().sum().backward()
    torch.testing.assert_close(mine, expected)
    torch.testing.assert_close(inputs.grad, expected_inputs.grad)
    # a sum over 4 x 32 x 32 positions, accumulated in another order: float32 rounding only
    torch.testing.assert_close(shortcut.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    assert set(shortcut.state_dict()) == set(reference.state_dict())


def test_resnet18_at_width_eighth_trains_channels_last_on_64_pixel_images():
    # The shape whose channels-last backward crashed the process in torch 2.13's strided 1x1
    # convolution (8 -> 16 channels on 64x64 maps).
    encoder = build_encoder("resnet18", in_channels=3, image_size=64, width=0.125)
    encoder = encoder.to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    encoder(images).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
