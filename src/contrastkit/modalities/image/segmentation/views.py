"""Views of image + mask pairs, and where a position of one view lies in another.

:class:`PairedViews` draws one geometry per pair (a random resized crop: area share in ``crop_scale``,
aspect in ``crop_ratio``, resampled to ``image_size``, so the content is rescaled; a horizontal flip
with ``hflip_p``) and applies it to the image (bilinear) and to the mask (nearest neighbour, so no
class is invented at a boundary) with the same affine map
(:func:`contrastkit.modalities.image.views.located.crop_and_flip`); colour jitter touches only the
image. Randomness: torch's global generator, like every view of the project.

:func:`corresponding_cells` is the correspondence the dense loss needs: for every cell of a
``rows x columns`` grid laid over view ``a`` (a feature map's positions), the cell of view ``b``'s grid
that holds the same point of the source image, or -1 when the point is outside view ``b``. Both come
from the views' crop boxes and flips (:class:`~contrastkit.modalities.image.views.located.CropGeometry`):
a cell's centre is placed in the source image (:func:`~contrastkit.modalities.image.views.located.location_grid`)
and then in view ``b``'s box, mirrored when ``b`` was flipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.views.image import Normalize, seeded_from, to_unit_float
from contrastkit.modalities.image.views.located import CropGeometry, crop_and_flip, location_grid, random_crop_boxes

FINE_TUNING_CROP_SCALE = (0.25, 1.0)  # area share of a crop: zooms in up to 2x on a side


def crop_masks(masks: Tensor, geometry: CropGeometry, size: int) -> Tensor:
    """(B, H, W) class indices -> (B, size, size) long, through the geometry's crop and flip with
    nearest-neighbour sampling (the same affine map as the images')."""
    sampled = crop_and_flip(masks[:, None].float(), geometry, size, mode="nearest")
    return sampled[:, 0].round().long()


def corresponding_cells(geometry_a: CropGeometry, geometry_b: CropGeometry, rows: int, columns: int,
                        rows_b: int | None = None, columns_b: int | None = None) -> Tensor:
    """(B, rows, columns) long: for each cell of view a's grid, the flat index ``row * columns_b +
    column`` of the cell of view b's ``rows_b x columns_b`` grid (default: the same size) that contains
    the centre of a's cell in the source image, or -1 when that point is outside view b's box."""
    rows_b, columns_b = rows if rows_b is None else rows_b, columns if columns_b is None else columns_b
    if geometry_a.source_size != geometry_b.source_size or geometry_a.boxes.shape != geometry_b.boxes.shape:
        raise DataError("corresponding_cells: the two views must come from the same source images (same batch "
                        f"and source size); got {tuple(geometry_a.boxes.shape)} boxes of {geometry_a.source_size} "
                        f"and {tuple(geometry_b.boxes.shape)} of {geometry_b.source_size}.")
    centres = location_grid(geometry_a, rows, columns)  # (B, rows, columns, 2) source (row, column)
    top, left, height, width = (v[:, None, None] for v in geometry_b.boxes.float().unbind(1))
    down = (centres[..., 0] - top) / height  # position in b's box, as a share of its side
    across = (centres[..., 1] - left) / width
    inside = (down >= 0) & (down < 1) & (across >= 0) & (across < 1)
    across = torch.where(geometry_b.flipped[:, None, None], 1.0 - across, across)  # b's columns run mirrored
    row = (down * rows_b).floor().long().clamp(0, rows_b - 1)
    column = (across * columns_b).floor().long().clamp(0, columns_b - 1)
    return torch.where(inside, row * columns_b + column, torch.full_like(row, -1))


class PairedViews(nn.Module):
    """Random views of image + mask pairs for fine-tuning (module docstring).

    ``views(images, masks)`` -> ``(images, masks, geometry)``: images uint8 (B, C, H, W) become
    normalised float (B, C, image_size, image_size), masks (B, H, W) class indices become long
    (B, image_size, image_size). ``jitter = (brightness, contrast, saturation, hue)`` with probability
    ``jitter_p``; ``jitter_p=0`` leaves the pixel values as sampled.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3, *,
                 crop_scale: tuple[float, float] = FINE_TUNING_CROP_SCALE,
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip_p: float = 0.5,
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.05), jitter_p: float = 0.8):
        super().__init__()
        low, high = crop_scale
        if not 0.0 < low <= high <= 1.0 or not 0.0 < crop_ratio[0] <= crop_ratio[1] or not 0 <= hflip_p <= 1:
            raise ConfigError(f"Paired views need 0 < crop_scale low <= high <= 1, 0 < crop_ratio low <= high and "
                              f"hflip_p in [0, 1]; got {crop_scale}, {crop_ratio}, {hflip_p}.")
        self.image_size, self.channels = int(image_size), int(channels)
        self.crop_scale, self.crop_ratio, self.hflip_p = tuple(crop_scale), tuple(crop_ratio), float(hflip_p)
        brightness, contrast, saturation, hue = jitter
        if channels != 3:
            saturation = hue = 0.0  # need RGB
        self.colour = K.ColorJitter(brightness, contrast, saturation, hue, p=jitter_p) if jitter_p > 0 else nn.Identity()
        self.normalize = Normalize(mean, std, channels)

    def random_geometry(self, images: Tensor) -> CropGeometry:
        batch, _, height, width = images.shape
        boxes = random_crop_boxes(batch, height, width, self.crop_scale, self.crop_ratio)
        return CropGeometry(boxes, torch.rand(batch) < self.hflip_p, (height, width))

    def forward(self, images: Tensor, masks: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, CropGeometry]:
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise DataError(f"Masks must be (B, H, W) for images (B, C, H, W); got {tuple(masks.shape)} and "
                            f"{tuple(images.shape)}.")
        with seeded_from(generator, images.device):
            x = to_unit_float(images, self.channels)
            geometry = self.random_geometry(x)
            x = self.colour(crop_and_flip(x, geometry, self.image_size))
        return self.normalize(x), crop_masks(masks.to(x.device), geometry, self.image_size), geometry
