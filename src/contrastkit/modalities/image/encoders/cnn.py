"""A small convolutional network for tiny images (8x8 digits up to 32x32 colour images).

Four blocks of ``conv3x3 -> BatchNorm -> ReLU`` with ``32, 64, 128, 256`` channels (times
``width``), then a global average pool. Blocks 2-4 halve the map with stride 2 only while the
result stays at least 4x4 pixels, so an 8x8 digit is downsampled once (8 -> 4) and a 32x32 image
three times (32 -> 16 -> 8 -> 4); over-downsampling a tiny image to 1x1 would leave the later
convs to see only their zero padding. The schedule is fixed from ``image_size`` at construction;
the network stays fully convolutional and accepts other sizes too.
"""

from __future__ import annotations

from torch import Tensor, nn

from contrastkit.core.errors import ConfigError

BLOCK_CHANNELS = (32, 64, 128, 256)
MIN_FEATURE_SIZE = 4


def downsampling_strides(image_size: int, num_blocks: int = len(BLOCK_CHANNELS)) -> list[int]:
    """Stride of each block: 1 for the first; 2 for later ones while the map stays >= 4 px."""
    strides = [1]
    size = image_size
    for _ in range(num_blocks - 1):
        if size // 2 >= MIN_FEATURE_SIZE:
            strides.append(2)
            size //= 2
        else:
            strides.append(1)
    return strides


class SmallCNN(nn.Module):
    """``conv-BN-ReLU`` x 4 with adaptive downsampling, then global average pooling.

    Args:
        in_channels: channels of the input images.
        image_size: side of the (square) training images; sets where to downsample.
        width: multiplies every block's channels; ``output_dim = round(256 * width)``.
    """

    def __init__(self, in_channels: int, image_size: int, width: float = 1.0):
        super().__init__()
        if width <= 0:
            raise ConfigError(f"small-cnn width must be positive, got {width}; use e.g. 0.5 or 1.0.")
        layers: list[nn.Module] = []
        channels_in = in_channels
        for base, stride in zip(BLOCK_CHANNELS, downsampling_strides(image_size), strict=True):
            channels = max(1, int(round(base * width)))
            layers += [
                nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            channels_in = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.output_dim = channels_in
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: Tensor) -> Tensor:
        """The last block's map before pooling, (B, output_dim, h, w)."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.feature_map(x)).flatten(1)

