"""Image and mask stay aligned through every view (segmentation/views.PairedViews and the reader's
resize), checked with a source image whose pixels hold their coordinates and a mask that is a function
of those coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.core.errors import DataError
from contrastkit.core.seeding import seeded
from contrastkit.modalities.image.segmentation.data import read_segmentation_folder
from contrastkit.modalities.image.segmentation.views import PairedViews
from tests.modalities.image.segmentation.coordinates import coordinate_image


def mask_of(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Four classes in blocks of 5 rows x 7 columns: a shift or mirror of one pixel changes many labels."""
    return (rows // 5 + 2 * (columns // 7)) % 4


def _coordinate_pairs(batch=8, height=40, width=56):
    # Three channels (the views' colour path is RGB): row, column, and row again.
    coordinates = coordinate_image(batch, height, width).float()
    images = torch.cat([coordinates, coordinates[:, :1]], dim=1)
    masks = mask_of(coordinates[:, 0].long(), coordinates[:, 1].long())
    return images, masks


@pytest.mark.parametrize("crop_scale, hflip_p, size", [((0.1, 1.0), 0.5, 32), ((0.5, 0.5), 1.0, 64),
                                                       ((1.0, 1.0), 0.0, 24)])
def test_the_mask_of_every_view_is_the_mask_at_the_pixels_the_image_shows(crop_scale, hflip_p, size):
    images, masks = _coordinate_pairs()
    views = PairedViews(size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_scale=crop_scale, hflip_p=hflip_p,
                        jitter_p=0.0)
    with seeded(0):
        view_images, view_masks, geometry = views(images, masks)
    assert view_images.shape == (8, 3, size, size) and view_masks.shape == (8, size, size)
    # Nearest-neighbour sampling picks the source pixel nearest to where the image was sampled.
    rows, columns = view_images[:, 0].round().long(), view_images[:, 1].round().long()
    assert torch.equal(view_masks, mask_of(rows, columns))
    if hflip_p == 1.0:
        assert bool((view_images[:, 1, :, 0] > view_images[:, 1, :, -1]).all())  # mirrored: columns run backwards


def test_colour_jitter_changes_the_image_only():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    masks = torch.randint(0, 3, (6, 32, 32))
    plain = PairedViews(24, mean=(0.5,) * 3, std=(0.25,) * 3, jitter_p=0.0)
    coloured = PairedViews(24, mean=(0.5,) * 3, std=(0.25,) * 3, jitter_p=1.0)
    with seeded(5):
        images_a, masks_a, geometry_a = plain(images, masks)
    with seeded(5):
        images_b, masks_b, geometry_b = coloured(images, masks)
    assert torch.equal(geometry_a.boxes, geometry_b.boxes) and torch.equal(masks_a, masks_b)
    assert not torch.allclose(images_a, images_b)


def test_the_reader_pairs_by_name_thresholds_lossy_masks_and_keeps_them_aligned(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for index, (top, left) in enumerate([(8, 16), (24, 40), (40, 8)]):
        picture = np.zeros((64, 80, 3), np.uint8)
        picture[top:top + 16, left:left + 24] = 255  # the object, where its mask is
        drawn = np.zeros((64, 80), np.uint8)
        drawn[top:top + 16, left:left + 24] = 255
        Image.fromarray(picture).save(images / f"case{index}.png")
        # a lossy (JPEG) mask for two of them, a lossless binary one for the third
        Image.fromarray(drawn).convert("RGB").save(masks / f"case{index}.{'png' if index == 2 else 'jpg'}",
                                                   quality=75)
    pairs = read_segmentation_folder(images, masks, image_size=32)
    assert pairs.names == ("case0", "case1", "case2") and pairs.num_classes == 2
    assert set(torch.unique(pairs.masks).tolist()) == {0, 1}
    for image, mask in zip(pairs.images, pairs.masks):
        bright = image[0] >= 128
        # the same object: the resized image's bright pixels and the mask differ at most on its border
        assert int((bright ^ mask.bool()).sum()) <= 2 * (8 + 10)
        ys, xs = torch.nonzero(mask, as_tuple=True)
        ys_b, xs_b = torch.nonzero(bright, as_tuple=True)
        assert abs(float(ys.float().mean() - ys_b.float().mean())) < 0.5
        assert abs(float(xs.float().mean() - xs_b.float().mean())) < 0.5
    (images / "lonely.png").write_bytes((images / "case0.png").read_bytes())
    with pytest.raises(DataError, match="lonely"):
        read_segmentation_folder(images, masks, image_size=32)


def test_a_lossless_mask_keeps_its_class_indices(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    classes = np.repeat(np.arange(4, dtype=np.uint8), 8)[None].repeat(16, axis=0)  # 16 x 32, classes 0..3
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(images / "a.jpg")
    Image.fromarray(classes).save(masks / "a.png")
    pairs = read_segmentation_folder(images, masks, image_size=16)
    assert pairs.num_classes == 4
    assert torch.equal(pairs.masks[0], torch.from_numpy(np.repeat(np.arange(4, dtype=np.uint8), 4)[None].repeat(16, 0)))
