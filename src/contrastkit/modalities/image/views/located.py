"""Views that know where they came from: random resized crops and flips whose boxes are kept, so
that a feature map's cells can be placed in the source image (VICRegL's location-based matching).

The crop follows torchvision's ``RandomResizedCrop`` sampling (area fraction uniform in
``scale``, log aspect ratio uniform in ``log(ratio)``, ten tries, then the centred crop of the
largest allowed aspect), drawn for the whole batch at once; the box is kept in continuous
source-pixel units and resampled with one bilinear ``grid_sample`` per batch (with the flip folded
into the same affine map). :func:`location_grid` gives, for any map size (h, w), the source-image
position of every cell's centre, mirrored when the view was flipped.

Randomness: torch's global generator, like the other views (``seeded_from(generator)`` wraps it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.views.image import BYOLViews, defaults_for, seeded_from, to_unit_float

CROP_TRIES = 10  # torchvision's RandomResizedCrop.get_params


@dataclass(frozen=True)
class CropGeometry:
    """Where each view came from: ``boxes`` (B, 4) = (top, left, height, width) in source pixels,
    ``flipped`` (B,) bool, and the source size (height, width)."""

    boxes: Tensor
    flipped: Tensor
    source_size: tuple[int, int]


def random_crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float],
                      ratio: tuple[float, float]) -> Tensor:
    """(B, 4) boxes (top, left, h, w) drawn as torchvision's RandomResizedCrop, for the whole batch."""
    area = height * width
    target_area = area * torch.empty(batch, CROP_TRIES).uniform_(*scale)
    log_ratio = torch.empty(batch, CROP_TRIES).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target_area * aspect)
    h = torch.sqrt(target_area / aspect)
    fits = (w <= width) & (h <= height)
    first = fits.float().argmax(dim=1)  # the first try that fits (0 when none does)
    rows = torch.arange(batch)
    h, w, any_fits = h[rows, first], w[rows, first], fits.any(dim=1)
    # Fallback (no try fits): the centred crop of the whole image clamped to the aspect range.
    source_ratio = width / height
    fallback_w = width if source_ratio <= ratio[1] else height * ratio[1]
    fallback_h = height if source_ratio >= ratio[0] else width / ratio[0]
    h = torch.where(any_fits, h, torch.full_like(h, fallback_h))
    w = torch.where(any_fits, w, torch.full_like(w, fallback_w))
    top = torch.rand(batch) * (height - h)
    left = torch.rand(batch) * (width - w)
    return torch.stack([top, left, h, w], dim=1)


def crop_and_flip(images: Tensor, geometry: CropGeometry, size: int, mode: str = "bilinear") -> Tensor:
    """Resample each image's box to ``size`` x ``size`` (``mode``: bilinear, or nearest for masks of
    class indices), mirrored where ``flipped``."""
    height, width = geometry.source_size
    top, left, h, w = geometry.boxes.to(images.device, images.dtype).unbind(1)
    sign = 1.0 - 2.0 * geometry.flipped.to(images.device, images.dtype)
    # Output coordinate u in [-1, 1] (pixel edges, align_corners=False) -> source coordinate.
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def location_grid(geometry: CropGeometry, rows: int, columns: int) -> Tensor:
    """(B, rows, columns, 2): the (row, column) source-pixel position of each map cell's centre."""
    top, left, h, w = geometry.boxes.unbind(1)
    fraction_r = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    fraction_c = (torch.arange(columns, dtype=torch.float32) + 0.5) / columns
    fraction_c = torch.where(geometry.flipped[:, None], 1.0 - fraction_c[None], fraction_c[None])  # (B, columns)
    grid_r = top[:, None] + h[:, None] * fraction_r[None]  # (B, rows)
    grid_c = left[:, None] + w[:, None] * fraction_c  # (B, columns)
    return torch.stack(torch.broadcast_tensors(grid_r[:, :, None], grid_c[:, None, :]), dim=-1)


class LocatedViews(BYOLViews):
    """BYOL's asymmetric views (VICRegL follows them: blur 1.0 / 0.1, solarisation 0 / 0.2) whose
    crop boxes and flips are returned with the views.

    ``two_views_located(images)`` -> ``(view_a, view_b, geometry_a, geometry_b)``; the colour ops
    and per-view blur/solarisation are BYOLViews'. ``crop_scale`` (default: ``defaults_for``),
    ``crop_ratio`` and ``hflip_p`` set the geometry; the other options are BYOLViews'.
    """

    def __init__(self, image_size: int, channels: int = 3, *, crop_scale: tuple[float, float] | None = None,
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip_p: float | None = None, **options: Any):
        defaults = defaults_for(image_size, channels)
        self.located_crop_scale = tuple(crop_scale or defaults["crop_scale"])
        self.located_crop_ratio = tuple(crop_ratio)
        self.located_hflip_p = defaults["hflip_p"] if hflip_p is None else float(hflip_p)
        low, high = self.located_crop_scale
        if not 0.0 < low <= high <= 1.0 or not 0.0 < crop_ratio[0] <= crop_ratio[1]:
            raise ConfigError(
                f"crop_scale must satisfy 0 < low <= high <= 1 and crop_ratio 0 < low <= high; got "
                f"crop_scale={crop_scale}, crop_ratio={crop_ratio}."
            )
        if not 0.0 <= self.located_hflip_p <= 1.0:
            raise ConfigError(f"The view option hflip_p is a probability; got {hflip_p}, give a value in [0, 1].")
        # The crop and flip are done here (their geometry is needed); the parent's ops are the colour ones.
        super().__init__(image_size, channels, random_crop=False, hflip_p=0.0, **options)

    def random_geometry(self, images: Tensor) -> CropGeometry:
        batch, _, height, width = images.shape
        boxes = random_crop_boxes(batch, height, width, self.located_crop_scale, self.located_crop_ratio)
        flipped = torch.rand(batch) < self.located_hflip_p
        return CropGeometry(boxes, flipped, (height, width))

    def _geometry_and_colour(self, images: Tensor) -> Tensor:
        x = to_unit_float(images, self.channels)
        return self.shared(crop_and_flip(x, self.random_geometry(x), self.image_size))

    def two_views_located(self, images: Tensor, generator: torch.Generator | None = None
                          ) -> tuple[Tensor, Tensor, CropGeometry, CropGeometry]:
        with seeded_from(generator, images.device):
            x = to_unit_float(torch.cat([images, images]), self.channels)
            geometry = self.random_geometry(x)
            views = self.shared(crop_and_flip(x, geometry, self.image_size))
            first, second = views.chunk(2)
            first, second = self.view_tails[0](first), self.view_tails[1](second)
            if self.bss is not None:
                first, second = self.bss(first), self.bss(second)
        half = images.shape[0]
        geometry_a = CropGeometry(geometry.boxes[:half], geometry.flipped[:half], geometry.source_size)
        geometry_b = CropGeometry(geometry.boxes[half:], geometry.flipped[half:], geometry.source_size)
        return self._finish(first), self._finish(second), geometry_a, geometry_b
