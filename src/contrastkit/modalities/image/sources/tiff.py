"""TIFF images at their own depth and channel count (16-bit, float, multi-band), read with
``tifffile``.

How a TIFF's axes become images and channels: ``tifffile`` names the axes of the file's first
series (``YX`` a plane, ``S`` the samples of a pixel, ``C`` channels in ImageJ/OME files, ``Q``/
``I``/``T``/``Z`` pages, times, depths). ``Y`` and ``X`` are the image's rows and columns; ``S``
and ``C`` are its channels (merged when both are there); every other axis counts images. So a
multi-page file is one image per page, each page's samples (RGB, or any number of bands stored
per pixel or as planes) its channels; an ImageJ ``TCYX`` hyperstack is ``T`` images of ``C``
channels.

- ``--data stack.tif``: every image of the file (:func:`read_tiff_stack`), unlabelled;
- a folder (or a CSV/Parquet list) of ``.tif``/``.tiff`` files: one image per file
  (:mod:`contrastkit.modalities.image.sources.decoding`).

Either way the set is brought to uint8 per channel by
:func:`contrastkit.modalities.image.sources.pixels.scale_to_uint8` (8-bit data as it is; wider
data stretched by each channel's 0.5th-99.5th percentile range over the whole set).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.pixels import scale_to_uint8

SPATIAL_AXES = "YX"
CHANNEL_AXES = "SC"


def read_tiff_array(target: str | Path | BinaryIO, name: str) -> tuple[np.ndarray, str]:
    """(pixels, axes) of the first series of a TIFF file or file-like object; DataError (with the
    reader's reason as its cause) when it cannot be read."""
    try:
        import tifffile
    except ImportError as err:
        raise DataError(
            f"Reading '{name}' needs the tifffile package: pip install tifffile (or contrastkit[images])."
        ) from err
    try:
        with tifffile.TiffFile(target) as tif:
            series = tif.series[0]
            return series.asarray(), series.axes
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error, ... on bad files
        raise DataError(
            f"Cannot read TIFF image '{name}': {err}. The file is corrupt, truncated or not really a "
            f"TIFF; remove or replace it (or pass --skip-unreadable to leave such files out)."
        ) from err


def tiff_images(array: np.ndarray, axes: str, name: str) -> np.ndarray:
    """A TIFF series as (N, C, H, W), by the axis rule of the module docstring (a view or copy in the
    file's dtype)."""
    if len(axes) != array.ndim or not set(SPATIAL_AXES) <= set(axes):
        raise DataError(f"TIFF '{name}' has axes '{axes}' for shape {array.shape}; expected rows (Y) and "
                        f"columns (X) among them.")
    image_axes = [i for i, a in enumerate(axes) if a not in SPATIAL_AXES + CHANNEL_AXES]
    channel_axes = [i for i, a in enumerate(axes) if a in CHANNEL_AXES]
    order = [*image_axes, *channel_axes, axes.index("Y"), axes.index("X")]
    ordered = array.transpose(order)
    count = int(np.prod([array.shape[i] for i in image_axes], dtype=np.int64))
    channels = int(np.prod([array.shape[i] for i in channel_axes], dtype=np.int64))
    return ordered.reshape(count, channels, *ordered.shape[-2:])


def tiff_as_chw(array: np.ndarray, axes: str, name: str) -> np.ndarray:
    """The one image (C, H, W) of a TIFF that holds one image (a file of an image folder)."""
    images = tiff_images(array, axes, name)
    if len(images) != 1:
        raise DataError(
            f"TIFF '{name}' holds {len(images)} images (axes '{axes}', shape {array.shape}), but a file "
            f"in a set of images must hold one. Give a stack as its own --data."
        )
    return images[0]


def read_tiff_stack(path: str | Path) -> ImageSource:
    """Every image of one TIFF file as an unlabelled ImageSource (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist. Check the path.")
    array, axes = read_tiff_array(path, str(path))
    images = scale_to_uint8(tiff_images(array, axes, str(path)), f"TIFF '{path}'")
    return ImageSource(torch.from_numpy(np.ascontiguousarray(images)), None, None, name=path.stem, root=path)
