"""Multi-crop views (Caron et al. 2020, SwAV, Sec. 3.2): two global crops and N smaller local crops
of each image, made on whole batches on the training device.

Global crops cover a large part of the image at the training resolution; local crops cover a small
part at a lower resolution, so that N of them cost little more than one global crop. SwAV and DINO
(Caron et al. 2021) compare every crop with the global ones: a local crop must predict what the
whole image looks like.

As the two-view path (:class:`~contrastkit.modalities.image.views.image.SimCLRViews`), every crop
size is one kornia call on the batch repeated (``[x; x]`` for the global crops, ``[x; ...; x]`` N
times for the local ones): crop ``v`` of image ``i`` is row ``v * B + i`` of its group. The colour
ops are shared; blur and solarisation may differ per global crop (DINO: view 1 always blurred,
view 2 solarised with probability 0.2) and for the local crops.

:class:`MultiCrops` holds the two groups; ``crops.map(network)`` runs ``network`` once per
resolution (SwAV's and DINO's reference code do the same: concatenated crops of one size go through
the backbone together, so BatchNorm normalises the global crops together and the local crops
together) and returns the outputs as ``(V, B, D)``, crop-major.

Scaled to the image size (:func:`multicrop_recipe`): a local crop has side ``round(image_size *
96 / 224)`` (the papers' 96 of 224), at least 4 pixels; its area fraction runs from the papers'
smallest (0.05), raised so that it keeps at least 4 source pixels a side, up to the global crops'
smallest (SwAV's 0.14, DINO's 0.4, raised as the two-view crops are on small images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.views.image import (
    SimCLRViews,
    blur_kernel_size,
    defaults_for,
    seeded_from,
    to_unit_float,
)

LOCAL_SIDE_FRACTION = 96 / 224
"""Side of a local crop over the image side: SwAV's and DINO's 96-pixel crops of 224-pixel images."""
SMALLEST_LOCAL_SIDE = 4
"""Pixels a local crop keeps (and is resized to) at least, on a side."""
PAPER_LOCAL_SCALE_LOW = 0.05
"""Smallest area fraction of a local crop (SwAV and DINO)."""


def default_local_crop_size(image_size: int) -> int:
    """``round(image_size * 96 / 224)``, at least 4 pixels: 32 -> 14, 96 -> 41, 224 -> 96."""
    return max(SMALLEST_LOCAL_SIDE, round(image_size * LOCAL_SIDE_FRACTION))


def multicrop_recipe(image_size: int, global_scale_low: float) -> dict[str, Any]:
    """Crop sizes and area ranges for images of side ``image_size``, given the paper's smallest
    global area fraction (SwAV 0.14, DINO 0.4): ``{"global_crop_scale", "local_crop_size",
    "local_crop_scale"}``. The global lower bound is raised to the two-view recipe's
    (:func:`~contrastkit.modalities.image.views.image.defaults_for`: 8 source pixels a side, at most
    0.5); the local range runs from 0.05 (raised to keep 4 source pixels a side) to the global one."""
    global_low = max(global_scale_low, defaults_for(image_size)["crop_scale"][0])
    return {"global_crop_scale": (global_low, 1.0), "local_crop_size": default_local_crop_size(image_size),
            "local_crop_scale": default_local_crop_scale(image_size, global_low)}


def default_local_crop_scale(image_size: int, global_low: float) -> tuple[float, float]:
    """From 0.05 (raised to keep 4 source pixels a side) up to the global crops' smallest fraction."""
    local_low = min(max(PAPER_LOCAL_SCALE_LOW, (SMALLEST_LOCAL_SIDE / image_size) ** 2), global_low)
    return (local_low, global_low)


@dataclass
class MultiCrops:
    """The crops of a batch of B images, grouped by resolution.

    ``global_crops``: (G * B, C, S, S), crop ``v`` of image ``i`` at row ``v * B + i``;
    ``local_crops``: (N * B, C, s, s) laid out alike, or None when N = 0.
    """

    global_crops: Tensor
    local_crops: Tensor | None
    batch_size: int

    @property
    def num_global(self) -> int:
        return self.global_crops.shape[0] // self.batch_size

    @property
    def num_local(self) -> int:
        return 0 if self.local_crops is None else self.local_crops.shape[0] // self.batch_size

    @property
    def num_crops(self) -> int:
        return self.num_global + self.num_local

    def groups(self) -> list[Tensor]:
        """The crops of one size each: the global crops, then the local crops (if any)."""
        return [self.global_crops] + ([] if self.local_crops is None else [self.local_crops])

    def map(self, network: Callable[[Tensor], Tensor], global_only: bool = False) -> Tensor:
        """``network`` on every crop, one call per resolution: (V, B, *out), the global crops first.

        ``global_only``: the global crops alone (DINO's teacher), (G, B, *out)."""
        groups = self.groups()[:1] if global_only else self.groups()
        outputs = torch.cat([network(group) for group in groups])
        return outputs.reshape(-1, self.batch_size, *outputs.shape[1:])


class MultiCropViews(SimCLRViews):
    """Two global crops at ``image_size`` and ``local_crops`` crops at ``local_crop_size`` of every
    image, with SimCLR's colour ops; see the module docstring.

    Args (besides :class:`SimCLRViews`'s, which apply to every crop; ``crop_scale`` is the global
    crops' area range):
        local_crops: N, the number of local crops (0: the global crops only).
        local_crop_size: side of the local crops (default :func:`default_local_crop_size`).
        local_crop_scale: area fraction range of the local crops (default
            :func:`default_local_crop_scale`: from 0.05 to ``crop_scale[0]``).
        global_blur_p, global_solarize_p: blur and solarisation probabilities of the two global
            crops (default: ``blur_p`` for both, no solarisation).
        local_blur_p: blur probability of the local crops (default ``blur_p``); their kernel is
            :func:`~contrastkit.modalities.image.views.image.blur_kernel_size` of their side.

    ``multi_crop(images)`` gives the :class:`MultiCrops`; ``two_views(images)`` the two global
    crops (what the alignment diagnostic compares); ``forward`` one global crop.
    """

    def __init__(
        self,
        image_size: int,
        channels: int = 3,
        mean: Sequence[float] | float = 0.5,
        std: Sequence[float] | float = 0.5,
        local_crops: int = 0,
        local_crop_size: int | None = None,
        local_crop_scale: tuple[float, float] | None = None,
        global_blur_p: tuple[float, float] | None = None,
        global_solarize_p: tuple[float, float] = (0.0, 0.0),
        local_blur_p: float | None = None,
        **options: Any,
    ):
        if options.get("bss"):
            raise ConfigError("Batch Styles Standardization (extra.views.bss) is not implemented for multi-crop "
                              "views; drop it for this method.")
        if options.get("random_crop") is False:
            raise ConfigError("Multi-crop views are crops: random_crop cannot be turned off for this method.")
        blur_p = options.pop("blur_p", None)
        super().__init__(image_size, channels, mean, std, blur_p=0.0, solarize_p=0.0, **options)
        default_blur = defaults_for(image_size, channels)["blur_p"] if blur_p is None else blur_p
        if not isinstance(local_crops, int) or isinstance(local_crops, bool) or local_crops < 0:
            raise ConfigError(f"local_crops must be a whole number >= 0 (e.g. 6), got {local_crops!r}.")
        self.local_size = local_crop_size or default_local_crop_size(image_size)
        if local_crops and not 1 <= self.local_size < image_size:
            raise ConfigError(
                f"local_crop_size must be positive and smaller than the global crops ({image_size} pixels), got "
                f"{self.local_size}; leave it unset for {default_local_crop_size(image_size)}.")
        self.num_local = local_crops
        global_low = self.recipe["crop_scale"][0]
        local_scale = tuple(local_crop_scale or default_local_crop_scale(image_size, global_low))
        low, high = local_scale
        if not 0.0 < low <= high <= 1.0:
            raise ConfigError(f"local_crop_scale must satisfy 0 < low <= high <= 1, got {local_scale}.")
        global_blur_p = global_blur_p or (default_blur, default_blur)
        local_blur_p = default_blur if local_blur_p is None else local_blur_p
        self.recipe.update(blur_p=default_blur, global_blur_p=tuple(global_blur_p), global_solarize_p=tuple(global_solarize_p),
                           local_crops=local_crops, local_crop_size=self.local_size,
                           local_crop_scale=local_scale, local_blur_p=local_blur_p)
        # Blur and solarisation after the shared colour ops, one tail per global crop (SimCLRViews'
        # own tail is empty here).
        self.global_tails = nn.ModuleList(
            nn.Sequential(*self._tail_ops(blur, solarize))
            for blur, solarize in zip(global_blur_p, global_solarize_p, strict=True))
        # As the global crop (SimCLRViews._crop): one batched affine warp per call.
        self.local_crop = K.RandomResizedCrop((self.local_size, self.local_size), scale=local_scale,
                                              ratio=self.recipe["crop_ratio"], cropping_mode="resample",
                                              align_corners=False)
        self.local_tail = nn.Sequential(*self._local_tail_ops(local_blur_p))

    def _local_tail_ops(self, blur_p: float) -> list[nn.Module]:
        kernel = blur_kernel_size(self.local_size)
        if not 0.0 <= blur_p <= 1.0:
            raise ConfigError(f"local_blur_p is a probability; got {blur_p}, give a value in [0, 1].")
        if blur_p > 0:
            return [K.RandomGaussianBlur((kernel, kernel), self.recipe["blur_sigma"], p=blur_p)]
        return []

    def _global_crops(self, x: Tensor) -> Tensor:
        crops = self.shared(self.crop(torch.cat([x, x])))
        first, second = crops.chunk(2)
        return self._finish(torch.cat([self.global_tails[0](first), self.global_tails[1](second)]))

    def multi_crop(self, images: Tensor, generator: torch.Generator | None = None) -> MultiCrops:
        """The global and local crops of every image (module docstring)."""
        with seeded_from(generator, images.device):
            x = to_unit_float(images, self.channels)
            global_crops = self._global_crops(x)
            local_crops = None
            if self.num_local:
                local = self.shared(self.local_crop(x.repeat(self.num_local, 1, 1, 1)))
                local_crops = self._finish(self.local_tail(local))
        return MultiCrops(global_crops, local_crops, images.shape[0])

    def two_views(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The two global crops of every image."""
        with seeded_from(generator, images.device):
            first, second = self._global_crops(to_unit_float(images, self.channels)).chunk(2)
        return first, second

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One global crop of every image (the first crop's recipe)."""
        with seeded_from(generator, images.device):
            x = self.shared(self.crop(to_unit_float(images, self.channels)))
            return self._finish(self.global_tails[0](x))
