"""A U-Net-style decoder over a convolutional encoder's stage features, and the segmentation model.

Ronneberger, Fischer & Brox, "U-Net", MICCAI 2015: the decoder climbs from the deepest map back
to the finest, each block upsampling (bilinear, x2 in a ResNet) its input to the next shallower
stage's size, concatenating that stage's map (the skip connection) and fusing them with two
conv3x3-BN-ReLU layers. Block ``k`` outputs as many channels as its skip has. Chaitanya et al.
(2020) pretrain the first of these blocks with the local contrastive loss, the encoder frozen;
``UNetDecoder(..., num_blocks=L)`` builds only those, with the names of the full decoder's first L
blocks, so their weights load into the segmentation model's decoder.

Any encoder with ``stage_features(x)`` (every stage's map, finest first) and ``stage_channels`` works
(the ResNets of :mod:`contrastkit.modalities.image.encoders.resnet`). The head works at half the
input's resolution (a conv block and a 1x1 convolution to class scores) and the scores are upsampled
bilinearly to the input's size: at 128 pixels it costs a quarter of a full-resolution head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two conv3x3 (no bias: BatchNorm's shift replaces it) - BN - ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpBlock(nn.Module):
    """Upsample ``x`` to the skip's size, concatenate the skip, fuse with :func:`conv_block`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.fuse = conv_block(in_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Stage maps (finest first) -> the map after ``num_blocks`` up-blocks (default: all, back to the
    finest stage's resolution); ``out_channels`` says its width."""

    def __init__(self, stage_channels: Sequence[int], num_blocks: int | None = None):
        super().__init__()
        deepest_first = list(stage_channels)[::-1]
        available = len(deepest_first) - 1
        num_blocks = available if num_blocks is None else num_blocks
        if not 1 <= num_blocks <= available:
            raise ConfigError(f"The decoder over {len(deepest_first)} stages has 1 to {available} blocks; "
                              f"{num_blocks} were asked for.")
        self.blocks = nn.ModuleList(UpBlock(deepest_first[k], deepest_first[k + 1], deepest_first[k + 1])
                                    for k in range(num_blocks))
        self.out_channels = deepest_first[num_blocks]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        deepest_first = list(features)[::-1]
        x = deepest_first[0]
        for k, block in enumerate(self.blocks):
            x = block(x, deepest_first[k + 1])
        return x


def stage_encoder_check(encoder: nn.Module, what: str) -> None:
    if not (hasattr(encoder, "stage_features") and hasattr(encoder, "stage_channels")):
        raise ConfigError(f"{what} needs an encoder with stage features (stage_features, stage_channels): "
                          f"resnet18 or resnet50; {type(encoder).__name__} has none.")


class SegmentationModel(nn.Module):
    """``encoder`` (stage features) + :class:`UNetDecoder` + a head: images (B, C, H, W) -> class
    scores (B, num_classes, H, W)."""

    def __init__(self, encoder: nn.Module, num_classes: int, head_channels: int | None = None):
        super().__init__()
        stage_encoder_check(encoder, "A segmentation model")
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.stage_channels)
        width = self.decoder.out_channels
        head_channels = head_channels or max(16, width // 2)
        self.head = nn.Sequential(conv_block(width, head_channels), nn.Conv2d(head_channels, num_classes, 1))
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> Tensor:
        x = self.decoder(self.encoder.stage_features(images))
        half = (max(1, images.shape[-2] // 2), max(1, images.shape[-1] // 2))
        scores = self.head(F.interpolate(x, size=half, mode="bilinear", align_corners=False))
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
