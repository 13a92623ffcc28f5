"""Read images from a NumPy ``.npz`` archive.

Arrays in the archive:
    x            (N, H, W), (N, H, W, C) or (N, C, H, W) pixels, C in {1, 3, 4};
    y            optional (N,) integer labels >= 0;
    class_names  optional (K,) strings, the name of class k at position k.
A 4-D ``x`` is channels-last when its last dimension is 1, 3 or 4 and its second is not
(so (N, 32, 32, 3) is NHWC and (N, 3, 32, 32) is NCHW). A fourth channel is alpha and is
dropped, as for image files. Pixel values go through
:func:`contrastkit.modalities.image.sources.pixels.to_uint8` (uint8, or floats in [0, 1] or [0, 255]).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.pixels import to_uint8

CHANNEL_COUNTS = (1, 3, 4)


def read_npz(path: str | Path) -> ImageSource:
    """The images (and labels) stored in ``path``; see the module docstring for the arrays."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist. Check the path.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"Cannot read '{path}' as a NumPy .npz archive ({err}).") from err
    if "x" not in arrays:
        raise DataError(
            f"'{path}' has no array named 'x' (it has: {', '.join(sorted(arrays)) or 'none'}). "
            f"Save the images as x (and the labels as y): np.savez(path, x=images, y=labels)."
        )
    x = arrays["x"]
    pixels = to_uint8(_as_nchw(x, path)[:, :3], f"'{path}' array x")
    images = torch.from_numpy(np.ascontiguousarray(pixels))
    labels = None
    if "y" in arrays:
        labels = torch.from_numpy(_labels(arrays["y"], len(x), path))
    class_names = None
    if "class_names" in arrays:
        class_names = [str(c) for c in arrays["class_names"].reshape(-1)]
    return ImageSource(images, labels, class_names, name=path.stem, root=path)


def _as_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in CHANNEL_COUNTS and x.shape[1] not in CHANNEL_COUNTS:
            return x.transpose(0, 3, 1, 2)
        if x.shape[1] in CHANNEL_COUNTS:
            return x
        raise DataError(
            f"'{path}': array x has shape {x.shape}, with no channel axis of size 1, 3 or 4 "
            f"in position 1 (N, C, H, W) or 3 (N, H, W, C)."
        )
    raise DataError(
        f"'{path}': array x has shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)."
    )


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DataError(
            f"'{path}': labels y have shape {y.shape} but x holds {n} images; "
            f"y must have shape ({n},), one class id per image."
        )
    if np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.round(y)):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer) or (n and int(y.min()) < 0):
        raise DataError(
            f"'{path}': labels y must be integer class ids >= 0; got dtype {y.dtype}"
            + (f" with minimum {y.min()}" if n and np.issubdtype(y.dtype, np.number) else "")
            + ". Map class names to 0..K-1 first and save the names as class_names."
        )
    return y.astype(np.int64)
