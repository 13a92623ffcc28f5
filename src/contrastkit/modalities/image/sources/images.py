"""Open an image data set by name or path: :func:`open_image_source`.

Built-in names (:data:`BUILTIN_SOURCES`) are resolved under :func:`contrastkit.core.paths.data_root`
(``$CONTRASTKIT_DATA``), except ``digits``, which scikit-learn ships. A path may be a folder of
images, a folder holding MNIST-style IDX files, an IDX file, or an ``.npz`` archive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import DataError, closest_names
from contrastkit.core.paths import data_root
from contrastkit.modalities.image.sources.idx import idx_images_in, is_idx_file, labels_beside, read_idx
from contrastkit.modalities.image.sources.image_folder import IMAGE_EXTENSIONS, read_image_folder
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.npz import read_npz
from contrastkit.modalities.image.sources.pixels import (
    check_channels,
    convert_channels,
    normalize_image_size,
    resize_images,
)

__all__ = ["BUILTIN_SOURCES", "ImageSource", "load_digits_source", "open_image_source"]

BUILTIN_SOURCES: dict[str, str] = {
    "digits": "scikit-learn's handwritten digits: 1,797 gray 8x8 images, 10 classes",
    "mnist-test": "MNIST test set: 10,000 gray 28x28 digits, 10 classes (under CONTRASTKIT_DATA)",
    "cifar10-test": "CIFAR-10 test: 10,000 RGB 32x32 images, 10 classes (under CONTRASTKIT_DATA)",
}
# Where each built-in set lives under the data root.
_BUILTIN_FOLDERS = {"mnist-test": "mnist-test", "cifar10-test": "cifar10-test"}
ACCEPTED_FORMATS = (
    f"a folder of images ({', '.join(IMAGE_EXTENSIONS)}; one subfolder per class, or flat "
    f"for unlabeled data), a folder with MNIST-style IDX files (*-images-idx3-ubyte[.gz] and "
    f"*-labels-idx1-ubyte[.gz]), an IDX file, or an .npz file with arrays x (and y)"
)


def open_image_source(
    spec: str | Path,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageSource:
    """Read an image set named by ``spec`` (a built-in name or a path).

    Args:
        spec: one of :data:`BUILTIN_SOURCES` or a path (see the module docstring); a
            built-in name wins over a folder of the same name (write ``./digits`` for that).
        image_size: resize to this (int -> square, or (H, W)) when it differs from the native
            size: image files are resized by PIL while decoding, array formats (IDX, npz,
            digits) with antialiased bilinear interpolation on the uint8 batch.
        channels: 1 or 3 to force grayscale or RGB; None keeps the data's own.
    """
    size = normalize_image_size(image_size)
    check_channels(channels)
    text = str(spec)
    if text in BUILTIN_SOURCES:
        source = _open_builtin(text, size, channels)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(_unknown_spec_message(text))
        source = _open_path(path, size, channels)
    # Image folders are already converted and resized while decoding; these are no-ops there.
    images = convert_channels(source.images, channels)
    if size is not None:
        images = resize_images(images, size)
    if images is source.images:
        return source
    return ImageSource(images, source.labels, source.class_names, source.name, source.root)


def load_digits_source() -> ImageSource:
    """scikit-learn's bundled digits (the UCI optdigits test set): 1,797 images of 8x8 with
    values 0..16, as uint8 ``round(v * 255 / 16)``, one channel, labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageSource(
        torch.from_numpy(np.ascontiguousarray(pixels)),
        torch.from_numpy(digits.target.astype(np.int64)),
        [str(int(c)) for c in digits.target_names],
        name="digits",
    )


def _open_builtin(name: str, size: tuple[int, int] | None, channels: int | None) -> ImageSource:
    if name == "digits":
        return load_digits_source()
    folder = data_root() / _BUILTIN_FOLDERS[name]
    if not folder.is_dir():
        raise DataError(
            f"Built-in data set '{name}' is not at '{folder}'. Set the environment variable "
            f"CONTRASTKIT_DATA to the folder that holds '{_BUILTIN_FOLDERS[name]}/' "
            f"(now: '{data_root()}')."
        )
    source = _open_path(folder, size, channels)
    if name == "mnist-test" and source.class_names is None:
        source.class_names = [str(k) for k in range(10)]
    source.name = name
    return source


def _open_path(path: Path, size: tuple[int, int] | None, channels: int | None) -> ImageSource:
    if path.is_dir():
        idx_files = idx_images_in(path)
        if len(idx_files) > 1:
            names = ", ".join(f"'{p.name}'" for p in idx_files)
            raise DataError(
                f"Folder '{path}' holds several IDX image files ({names}); pass the path of "
                f"the one to use (its labels file is found beside it)."
            )
        if idx_files:
            return read_idx(idx_files[0], labels_beside(idx_files[0]))
        return read_image_folder(path, size, channels)
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    if is_idx_file(path):
        return read_idx(path, labels_beside(path))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(
            f"'{path}' is a single image; pass the folder that holds the images instead."
        )
    raise DataError(f"Cannot tell the format of '{path}'. Accepted: {ACCEPTED_FORMATS}.")


def _unknown_spec_message(spec: str) -> str:
    close = closest_names(spec, BUILTIN_SOURCES)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"'{spec}' is neither a built-in data set nor an existing path.{hint} "
        f"Built-in data sets: {', '.join(BUILTIN_SOURCES)}. A path may be {ACCEPTED_FORMATS}."
    )
