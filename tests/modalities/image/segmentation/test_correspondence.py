"""Where a position of one view is in another (segmentation/views.corresponding_cells), checked against what
the views' pixels show: a source image whose pixels hold their coordinates, cropped, flipped and rescaled by
the very transform the views use (views/located.crop_and_flip)."""

from __future__ import annotations

import pytest
import torch

from contrastkit.core.seeding import seeded
from contrastkit.modalities.image.segmentation.views import corresponding_cells
from contrastkit.modalities.image.views.located import CropGeometry, crop_and_flip, random_crop_boxes
from tests.modalities.image.segmentation.coordinates import coordinate_image, naive_correspondence


def _geometry(batch, height, width, scale, flip_share, seed):
    with seeded(seed):
        boxes = random_crop_boxes(batch, height, width, scale, (3 / 4, 4 / 3))
        flipped = torch.rand(batch) < flip_share
    return CropGeometry(boxes, flipped, (height, width))


@pytest.mark.parametrize("scale, flip_share, sizes, grids", [
    ((0.2, 1.0), 0.5, (32, 48), (8, 8)),   # crops of different scales and output sizes, half flipped
    ((0.3, 0.6), 1.0, (32, 32), (8, 4)),   # every view flipped; b's grid coarser than a's
    # nearly whole images, no flip; b's grid finer (6, not 8: a's cell centres would sit on b's cell edges
    # when both views are the whole image, where either neighbour is right)
    ((0.9, 1.0), 0.0, (48, 24), (4, 6)),
])
def test_corresponding_cells_are_those_the_coordinate_image_shows(scale, flip_share, sizes, grids):
    batch, height, width = 12, 40, 56  # not square: rows and columns cannot be swapped unnoticed
    source = coordinate_image(batch, height, width)
    geometry_a = _geometry(batch, height, width, scale, flip_share, seed=1)
    geometry_b = _geometry(batch, height, width, scale, flip_share, seed=2)
    view_a = crop_and_flip(source, geometry_a, sizes[0])
    view_b = crop_and_flip(source, geometry_b, sizes[1])
    expected = naive_correspondence(view_a, view_b, grids[0], grids[1])
    found = corresponding_cells(geometry_a, geometry_b, grids[0], grids[0], grids[1], grids[1])
    assert torch.equal(found, expected)
    assert (expected >= 0).any() and (scale[0] > 0.8 or (expected < 0).any())  # both kinds occur


def test_a_view_corresponds_to_itself_cell_for_cell():
    geometry = _geometry(6, 32, 32, (0.1, 1.0), 0.5, seed=3)
    found = corresponding_cells(geometry, geometry, 4, 4)
    assert torch.equal(found, torch.arange(16).view(1, 4, 4).expand(6, 4, 4))


def test_a_flipped_copy_of_a_view_corresponds_mirrored():
    geometry = _geometry(4, 32, 32, (0.5, 1.0), 0.0, seed=4)
    mirrored = CropGeometry(geometry.boxes, torch.ones(4, dtype=torch.bool), geometry.source_size)
    found = corresponding_cells(geometry, mirrored, 4, 4)
    assert torch.equal(found, torch.arange(16).view(4, 4).flip(1).expand(4, 4, 4))
