"""ResNet-18 and ResNet-50 backbones, written from the paper, with a width multiplier.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. A residual block computes
``out = relu(branch(x) + shortcut(x))``; ``shortcut`` is the identity, or a strided 1x1 conv + BN
where the shape changes. ResNet-18 stacks BasicBlocks (two 3x3 convs) [2, 2, 2, 2] times, ResNet-50
stacks Bottlenecks (1x1 reduce, 3x3, 1x1 expand by 4) [3, 4, 6, 3] times, over stages of
``64, 128, 256, 512`` channels (times ``width``; the stem has ``64 * width`` channels too).

The stem comes in two forms:

* ImageNet: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool (the input shrinks 4x before the
  first stage; 32x overall).
* CIFAR (``cifar_stem=True``): 3x3 stride-1 conv, BN, ReLU, no max-pool, as in the SimCLR paper's
  CIFAR-10 experiments (Chen et al. 2020, appendix B.9) and lightly/solo-learn. On a 32x32 image
  the ImageNet stem would leave a 1x1 map after stage 4 and discard most of the detail. Chosen
  automatically when ``image_size <= 64``.

The head (fc layer) is dropped: the output is the global average of the last feature map,
``(B, output_dim)`` with ``output_dim = 512 * width`` (ResNet-18) or ``2048 * width`` (ResNet-50).
Parameter counts at width 1 (no fc): ResNet-18 CIFAR stem 11,168,832; ResNet-50 ImageNet stem
23,508,032 (torchvision's counts minus the fc layer).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError

STAGE_CHANNELS = (64, 128, 256, 512)


def scaled_channels(channels: int, width: float) -> int:
    """``round(channels * width)``, at least 1."""
    return max(1, int(round(channels * width)))


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with stride ``s`` (the downsampling shortcut), computed as the stride-1 1x1
    convolution of every ``s``-th pixel: the same output and gradients, the same weights and keys.

    Why: torch 2.13's CPU backward of a strided 1x1 convolution on a channels-last input crashes
    the process (segmentation fault) for some shapes, e.g. 8 -> 16 channels on 64x64 maps (ResNet-18
    at width 0.125 with the CIFAR stem on 64-pixel images); sampling first avoids that kernel."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        step = self.stride
        return F.conv2d(x[..., :: step[0], :: step[1]], self.weight)


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> nn.Sequential:
    """Conv (no bias: the BN shift replaces it) followed by BatchNorm."""
    if kernel_size == 1 and stride > 1:
        conv = StridedPointwiseConv(in_channels, out_channels, stride)
    else:
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class ResidualBlock(nn.Module):
    """``relu(branch(x) + shortcut(x))``; the shortcut is a strided 1x1 conv + BN when the shape
    changes, else the identity. Subclasses build the branch."""

    expansion = 1

    def __init__(self, branch: nn.Sequential, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.branch = branch
        self.shortcut = (
            conv_bn(in_channels, out_channels, 1, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.branch[-1][1]

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``; ``expansion = 1``."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        out_channels = channels * self.expansion
        branch = nn.Sequential(
            conv_bn(in_channels, channels, 3, stride),
            nn.ReLU(inplace=True),
            conv_bn(channels, out_channels, 3),
        )
        super().__init__(branch, in_channels, out_channels, stride)


class Bottleneck(ResidualBlock):
    """``relu(bn(conv1x1(relu(bn(conv3x3(relu(bn(conv1x1(x))))))) + shortcut(x))``;
    ``expansion = 4``. The stride sits on the 3x3 conv (torchvision's "ResNet v1.5")."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        out_channels = channels * self.expansion
        branch = nn.Sequential(
            conv_bn(in_channels, channels, 1),
            nn.ReLU(inplace=True),
            conv_bn(channels, channels, 3, stride),
            nn.ReLU(inplace=True),
            conv_bn(channels, out_channels, 1),
        )
        super().__init__(branch, in_channels, out_channels, stride)


class ResNet(nn.Module):
    """A ResNet trunk without its classifier: image (B, C, H, W) -> features (B, output_dim).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        blocks_per_stage: e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        in_channels: channels of the input images (1 for digits, 3 for colour).
        width: multiplies the channels of the stem and of every stage (0.125 gives 8-16-32-64
            for ResNet-18).
        cifar_stem: 3x3 stride-1 stem without max-pool (True) or the ImageNet 7x7 stride-2 stem
            with max-pool (False).
        zero_init_residual: start the last BN of every residual branch at gamma = 0, so each
            block begins as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD");
            helps large-batch training.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, ...],
        in_channels: int = 3,
        width: float = 1.0,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if width <= 0:
            raise ConfigError(
                f"ResNet width must be positive, got {width}; use e.g. 0.125, 0.5 or 1.0."
            )
        stem_channels = scaled_channels(STAGE_CHANNELS[0], width)
        if cifar_stem:
            self.stem = nn.Sequential(conv_bn(in_channels, stem_channels, 3), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                conv_bn(in_channels, stem_channels, 7, stride=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        stages = []
        channels_in = stem_channels
        for index, (base, depth) in enumerate(zip(STAGE_CHANNELS, blocks_per_stage, strict=True)):
            channels = scaled_channels(base, width)
            first_stride = 1 if index == 0 else 2
            blocks = []
            for position in range(depth):
                blocks.append(block(channels_in, channels, first_stride if position == 0 else 1))
                channels_in = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.output_dim = channels_in
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # Kaiming-normal (fan_out) for convs as in the paper's reference code; BN starts at
        # gamma=1, beta=0 (PyTorch's default).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock | Bottleneck):
                    nn.init.zeros_(module.last_norm().weight)

    @property
    def blocks(self) -> nn.ModuleList:
        """The residual blocks of every stage, in order: the layers of layer-wise rate decay when
        fine-tuning (:mod:`contrastkit.evaluation.fine_tune`; the stem comes before them)."""
        return nn.ModuleList(block for stage in self.stages for block in stage)

    @property
    def stage_channels(self) -> list[int]:
        """Channels of each stage's output, in order (what :meth:`stage_features` returns)."""
        return [stage[-1].last_norm().num_features for stage in self.stages]

    def stage_features(self, x: Tensor) -> list[Tensor]:
        """Every stage's output map, finest first: the skip connections of a U-Net-style
        decoder and the levels of a hierarchical (SparK) decoder read them."""
        maps = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's map before pooling, (B, output_dim, H / stride, W / stride)."""
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.feature_map(x)).flatten(1)


def _resolve_cifar_stem(cifar_stem: bool | None, image_size: int) -> bool:
    return image_size <= 64 if cifar_stem is None else cifar_stem


def resnet18(
    in_channels: int,
    image_size: int,
    width: float = 1.0,
    cifar_stem: bool | None = None,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18 (BasicBlock x [2, 2, 2, 2]); ``output_dim = 512 * width``.

    ``cifar_stem=None`` picks the CIFAR stem when ``image_size <= 64``."""
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        in_channels=in_channels,
        width=width,
        cifar_stem=_resolve_cifar_stem(cifar_stem, image_size),
        zero_init_residual=zero_init_residual,
    )


def resnet50(
    in_channels: int,
    image_size: int,
    width: float = 1.0,
    cifar_stem: bool | None = None,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50 (Bottleneck x [3, 4, 6, 3]); ``output_dim = 2048 * width``.

    ``cifar_stem=None`` picks the CIFAR stem when ``image_size <= 64``."""
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        in_channels=in_channels,
        width=width,
        cifar_stem=_resolve_cifar_stem(cifar_stem, image_size),
        zero_init_residual=zero_init_residual,
    )
