"""A source image whose pixels hold their own coordinates, and what a view of it says about geometry.

Pixel (r, c) of the source holds (r, c) (channels 0 and 1). Bilinear resampling reproduces a linear
function exactly, so every pixel of a view holds the source position it was sampled from (in pixel-centre
units); nothing here uses the crop boxes, only what the views' pixels show."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def coordinate_image(batch: int, height: int, width: int) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.float64).view(height, 1).expand(height, width)
    columns = torch.arange(width, dtype=torch.float64).view(1, width).expand(height, width)
    return torch.stack([rows, columns]).expand(batch, 2, height, width).clone()


def cell_centres(view: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid, grid, 2) source (row, column) of each grid cell's centre, continuous units (pixel k spans
    [k, k + 1)): the mean of the cell's pixels' coordinates, + 0.5."""
    return (F.avg_pool2d(view, view.shape[-1] // grid) + 0.5).permute(0, 2, 3, 1)


def cell_extents(view: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high), each (B, grid, grid, 2): the source interval (rows, columns) that each cell covers, from
    its first and last pixels' coordinates widened by half a pixel step either side."""
    side = view.shape[-1] // grid
    first = view[:, :, ::side, ::side] + 0.5  # the cell's top-left pixel
    last = view[:, :, side - 1::side, side - 1::side] + 0.5  # its bottom-right pixel
    step_rows = (view[:, 0, 1, 0] - view[:, 0, 0, 0]).abs().view(-1, 1, 1)
    step_columns = (view[:, 1, 0, 1] - view[:, 1, 0, 0]).abs().view(-1, 1, 1)
    half = torch.stack([step_rows, step_columns], dim=1).expand_as(first) / 2
    low = torch.minimum(first, last) - half
    high = torch.maximum(first, last) + half
    return low.permute(0, 2, 3, 1), high.permute(0, 2, 3, 1)


def naive_correspondence(view_a: torch.Tensor, view_b: torch.Tensor, grid_a: int, grid_b: int) -> torch.Tensor:
    """(B, grid_a, grid_a): for each cell of view a, the flat index of the cell of view b whose source extent
    holds a's cell centre, by a search over b's cells; -1 when none does."""
    centres = cell_centres(view_a, grid_a)
    low, high = cell_extents(view_b, grid_b)
    result = torch.full(centres.shape[:3], -1, dtype=torch.long)
    for i in range(centres.shape[0]):
        for r in range(grid_a):
            for c in range(grid_a):
                point = centres[i, r, c]
                for q in range(grid_b * grid_b):
                    lo, hi = low[i, q // grid_b, q % grid_b], high[i, q // grid_b, q % grid_b]
                    if bool(((point >= lo) & (point < hi)).all()):
                        result[i, r, c] = q
                        break
    return result
