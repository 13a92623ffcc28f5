"""Read images from a NumPy ``.npz`` archive or a ``.npy`` array.

Arrays in the archive:
    x            (N, H, W), (N, H, W, C) or (N, C, H, W) pixels, any channel count C;
    y            optional (N,) integer labels >= 0;
    class_names  optional (K,) strings, the name of class k at position k.
A ``.npy`` file holds ``x`` alone (an unlabelled set).

Which axis of a 4-D ``x`` holds the channels: the RGB(A) rule first -- channels-last when the last
dimension is 1, 3 or 4 and the second is not, so (N, 32, 32, 3) is NHWC and (N, 3, 32, 32) NCHW;
otherwise the one of axes 1 and 3 that is smaller than both other image axes (a band count is
smaller than the image's sides), so (N, 13, 64, 64) is NCHW and (N, 64, 64, 13) NHWC. When neither
or both are, the layout is ambiguous and refused.

Pixel values go through :func:`contrastkit.modalities.image.sources.pixels.scale_to_uint8`: 8-bit
data keeps its values, 16-bit, float and other wide data is stretched per channel by its percentile
range over the set. A fourth channel of 8-bit data is alpha and is dropped, as for image files;
4 channels of wider data are 4 bands and are kept.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.pixels import is_eight_bit, scale_to_uint8

CHANNEL_COUNTS = (1, 3, 4)


def read_npz(path: str | Path) -> ImageSource:
    """The images (and labels) stored in ``path``; see the module docstring for the arrays."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist. Check the path.")
    if path.suffix.lower() == ".npy":
        arrays = {"x": _load_npy(path)}
    else:
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
    images = torch.from_numpy(np.ascontiguousarray(pixels_as_uint8(as_nchw(x, path), f"'{path}' array x")))
    labels = None
    if "y" in arrays:
        labels = torch.from_numpy(_labels(arrays["y"], len(x), path))
    class_names = None
    if "class_names" in arrays:
        class_names = [str(c) for c in arrays["class_names"].reshape(-1)]
    return ImageSource(images, labels, class_names, name=path.stem, root=path)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"Cannot read '{path}' as a NumPy .npy array ({err}).") from err


def pixels_as_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """(N, C, H, W) of any dtype -> uint8 (:func:`scale_to_uint8`), dropping the alpha channel of
    8-bit RGBA data."""
    if images.shape[1] == 4 and is_eight_bit(images):
        images = images[:, :3]
    return scale_to_uint8(images, what)


def as_nchw(x: np.ndarray, path: Path | str) -> np.ndarray:
    """A 3-D (N, H, W) or 4-D image array as (N, C, H, W) (a view); the module docstring gives the
    rule for the channel axis."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in CHANNEL_COUNTS and x.shape[1] not in CHANNEL_COUNTS:
            return x.transpose(0, 3, 1, 2)
        if x.shape[1] in CHANNEL_COUNTS:
            return x
        first = x.shape[1] < min(x.shape[2], x.shape[3])
        last = x.shape[3] < min(x.shape[1], x.shape[2])
        if first != last:
            return x if first else x.transpose(0, 3, 1, 2)
        raise DataError(
            f"'{path}': array x has shape {x.shape}, and which axis holds the channels is ambiguous: "
            f"save it as (N, C, H, W) or (N, H, W, C) with the channel count C smaller than the "
            f"height and the width."
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
