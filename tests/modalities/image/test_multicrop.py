"""Multi-crop views (issue 21): every crop of a batch comes from its own image, covers an area in the
promised range and has the promised size, and the backbone runs once per crop size.

The images encode where each pixel comes from: channel 0 is the image's index, channels 1 and 2 the
pixel's column and row (float images, no colour ops, normalisation off). Bilinear resampling keeps
a constant exactly and a linear ramp exactly, so a crop's channel 0 names its image, and the extent
of its channels 1 and 2 is the crop box: (max - min) * side + 1 pixels on each side (kornia samples
the centres of the box's corner pixels). The box's area over the image's must lie in the scale
range, up to the rounding of each side to whole pixels.
"""

from __future__ import annotations

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.views.multicrop import (
    MultiCropViews,
    MultiCrops,
    default_local_crop_size,
    multicrop_recipe,
)

SIDE, BATCH = 32, 24


def coordinate_images(n: int = BATCH, side: int = SIDE) -> torch.Tensor:
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    images = torch.zeros(n, 3, side, side)
    images[:, 0] = ((torch.arange(n) + 1) / (n + 1))[:, None, None]
    images[:, 1] = (columns + 0.5) / side
    images[:, 2] = (rows + 0.5) / side
    return images


def geometric_views(**options) -> MultiCropViews:
    """Crops and flips only: no colour op, no normalisation (mean 0, std 1)."""
    return MultiCropViews(SIDE, 3, mean=0.0, std=1.0, jitter_p=0.0, grayscale_p=0.0, **options)


def check_group(crops: torch.Tensor, num_views: int, size: int, scale: tuple[float, float]) -> None:
    assert crops.shape == (num_views * BATCH, 3, size, size)
    index = crops[:, 0] * (BATCH + 1) - 1
    # Constant within each crop, and row v * B + i comes from image i.
    assert (index.amax(dim=(1, 2)) - index.amin(dim=(1, 2))).max() < 1e-3
    expected = torch.arange(BATCH).repeat(num_views).float()
    torch.testing.assert_close(index.mean(dim=(1, 2)), expected, rtol=0, atol=1e-3)
    width = (crops[:, 1].amax(dim=(1, 2)) - crops[:, 1].amin(dim=(1, 2))) * SIDE + 1
    height = (crops[:, 2].amax(dim=(1, 2)) - crops[:, 2].amin(dim=(1, 2))) * SIDE + 1
    # The boxes are whole pixels inside the image.
    torch.testing.assert_close(width, width.round(), rtol=0, atol=1e-3)
    torch.testing.assert_close(height, height.round(), rtol=0, atol=1e-3)
    assert crops[:, 1:].min() * SIDE >= 0.5 - 1e-3 and crops[:, 1:].max() * SIDE <= SIDE - 0.5 + 1e-3
    low, high = scale
    area = SIDE * SIDE
    # Each side is rounded to a whole pixel: the drawn area lies between the rounded box's shrunk
    # and grown by one pixel a side.
    assert bool(((width - 1) * (height - 1) / area <= high).all()), "a crop larger than the scale range"
    assert bool(((width + 1) * (height + 1) / area >= low).all()), "a crop smaller than the scale range"
    fraction = width * height / area
    assert fraction.min() < low + 0.5 * (high - low) < fraction.max()  # the range is used, not one size
    # Aspect ratios within SimCLR's (3/4, 4/3), up to the rounding.
    ratio = width / height
    assert bool(((width + 1) / (height - 1).clamp(min=1) >= 3 / 4).all())
    assert bool(((width - 1) / (height + 1) <= 4 / 3).all()) and ratio.max() > 1 > ratio.min()


def test_every_crop_comes_from_its_own_image_at_the_promised_scale_and_size():
    torch.manual_seed(0)
    views = geometric_views(local_crops=5, crop_scale=(0.14, 1.0))
    crops = views.multi_crop(coordinate_images())
    assert isinstance(crops, MultiCrops) and (crops.num_global, crops.num_local, crops.batch_size) == (2, 5, BATCH)
    check_group(crops.global_crops, 2, SIDE, (0.14, 1.0))
    check_group(crops.local_crops, 5, 14, (0.05, 0.14))
    # Horizontal flips (colour images) happen: some crops' columns run right to left.
    columns = crops.global_crops[:, 1]
    flipped = columns[:, :, 0].mean(dim=1) > columns[:, :, -1].mean(dim=1)
    assert 0 < int(flipped.sum()) < flipped.numel()


def test_given_local_sizes_and_scales_are_kept():
    torch.manual_seed(1)
    views = geometric_views(local_crops=3, local_crop_size=10, local_crop_scale=(0.2, 0.3), crop_scale=(0.5, 1.0))
    crops = views.multi_crop(coordinate_images())
    check_group(crops.global_crops, 2, SIDE, (0.5, 1.0))
    check_group(crops.local_crops, 3, 10, (0.2, 0.3))


def test_without_local_crops_there_are_two_global_crops_and_two_views_are_them():
    views = geometric_views()
    images = coordinate_images()
    crops = views.multi_crop(images, generator=torch.Generator().manual_seed(3))
    assert crops.local_crops is None and crops.num_crops == 2 and len(crops.groups()) == 1
    first, second = views.two_views(images, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(torch.cat([first, second]), crops.global_crops)


def test_the_full_recipe_gives_normalised_crops_of_each_size_and_is_seeded():
    views = MultiCropViews(SIDE, 3, mean=0.5, std=0.25, local_crops=2, global_solarize_p=(0.0, 1.0))
    images = torch.randint(0, 256, (4, 3, SIDE, SIDE), dtype=torch.uint8)
    a = views.multi_crop(images, generator=torch.Generator().manual_seed(0))
    b = views.multi_crop(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.global_crops, b.global_crops) and torch.equal(a.local_crops, b.local_crops)
    assert a.local_crops.shape == (8, 3, 14, 14) and a.global_crops.dtype == torch.float32
    # The second global crop is always solarised here, the first never: solarisation maps x >= 0.5 to
    # 1 - x, so no pixel of a solarised crop exceeds 0.5 in [0, 1] units, (0.5 - 0.5) / 0.25 = 0.
    assert a.global_crops[4:].max() <= 1e-6 and a.global_crops[:4].max() > 0.5


def test_map_runs_the_network_once_per_crop_size_and_lays_out_crops_by_view():
    calls = []

    def network(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))

    views = geometric_views(local_crops=3)
    crops = views.multi_crop(coordinate_images())
    out = crops.map(network)
    assert calls == [(2 * BATCH, 3, SIDE, SIDE), (3 * BATCH, 3, 14, 14)]
    assert out.shape == (5, BATCH, 3)
    torch.testing.assert_close(out[3, 7], crops.local_crops[BATCH + 7].mean(dim=(1, 2)))  # local crop 1, image 7
    assert crops.map(network, global_only=True).shape == (2, BATCH, 3) and calls[-1] == (2 * BATCH, 3, SIDE, SIDE)


def test_recipe_scales_with_the_image_size():
    assert multicrop_recipe(32, 0.14) == {"global_crop_scale": (0.14, 1.0), "local_crop_size": 14,
                                          "local_crop_scale": (0.05, 0.14)}
    assert multicrop_recipe(224, 0.4)["local_crop_size"] == 96  # the papers' 96 of 224
    digits = multicrop_recipe(8, 0.14)  # 8x8 digits: crops of at least 8 and 4 source pixels a side
    assert digits == {"global_crop_scale": (0.5, 1.0), "local_crop_size": 4, "local_crop_scale": (0.25, 0.5)}
    assert default_local_crop_size(4) == 4


@pytest.mark.parametrize("options", [{"local_crops": -1}, {"local_crops": 2, "local_crop_size": SIDE},
                                     {"local_crops": 2, "local_crop_scale": (0.3, 0.2)}, {"bss": True},
                                     {"local_blur_p": 2.0}])
def test_bad_options_are_refused(options):
    with pytest.raises(ConfigError):
        MultiCropViews(SIDE, 3, **options)
