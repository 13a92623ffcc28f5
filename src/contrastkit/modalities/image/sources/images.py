"""Open an image data set by name or path: :func:`open_image_source`.

Built-in names (:data:`BUILTIN_SOURCES`) are resolved under :func:`contrastkit.core.paths.data_root`
(``$CONTRASTKIT_DATA``), except ``digits``, which scikit-learn ships. A path may be

- a folder of images (JPEG, PNG, BMP, WebP, or TIFF at any depth and channel count), flat or one
  subfolder per class (:mod:`.image_folder`);
- a CSV, TSV or Parquet file listing image paths and optional labels (:mod:`.tables`);
- a folder written by Hugging Face ``datasets``' ``save_to_disk`` (:mod:`.hf_arrow`);
- webdataset-style tar shards: a ``.tar`` file, a folder of them, a glob or a brace list
  (:mod:`.tar_shards`);
- a TIFF file holding a stack of images (:mod:`.tiff`);
- a folder holding MNIST-style IDX files, or an IDX file (:mod:`.idx`);
- an ``.npz`` archive (x, y, class_names) or an ``.npy`` array (:mod:`.npz`).

16-bit, float and multi-band data are brought to uint8 per channel
(:func:`.pixels.scale_to_uint8`: each channel stretched by its 0.5th-99.5th percentile range over
the set). With ``skip_unreadable``, image files that cannot be decoded (in a folder, a table or tar
shards) are left out and listed in the source's ``skipped`` instead of stopping the reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import DataError, closest_names
from contrastkit.core.paths import data_root
from contrastkit.modalities.image.formats import TABLE_EXTENSIONS, TAR_SUFFIXES
from contrastkit.modalities.image.sources.idx import idx_images_in, is_idx_file, labels_beside, read_idx
from contrastkit.modalities.image.sources.decoding import IMAGE_EXTENSIONS
from contrastkit.modalities.image.sources.hf_arrow import is_hf_dataset_folder, read_hf_dataset
from contrastkit.modalities.image.sources.image_folder import read_image_folder
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.npz import read_npz
from contrastkit.modalities.image.sources.tables import read_image_table
from contrastkit.modalities.image.sources.tar_shards import (
    expand_shard_spec,
    is_tar_spec,
    read_tar_shards,
    tar_files_in,
)
from contrastkit.modalities.image.sources.tiff import read_tiff_stack
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
    f"for unlabeled data), a CSV/TSV/Parquet file of image paths (and labels), a Hugging Face "
    f"save_to_disk folder, webdataset tar shards (a .tar, a folder of them, a glob or a brace list), "
    f"a TIFF stack, a folder with MNIST-style IDX files (*-images-idx3-ubyte[.gz] and "
    f"*-labels-idx1-ubyte[.gz]), an IDX file, an .npz file with arrays x (and y), or an .npy array"
)


def open_image_source(
    spec: str | Path,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSource:
    """Read an image set named by ``spec`` (a built-in name or a path).

    Args:
        spec: one of :data:`BUILTIN_SOURCES` or a path (see the module docstring); a
            built-in name wins over a folder of the same name (write ``./digits`` for that).
        image_size: resize to this (int -> square, or (H, W)) when it differs from the native
            size: image files are resized by PIL while decoding, array formats (IDX, npz,
            digits) with antialiased bilinear interpolation on the uint8 batch.
        channels: 1 or 3 to force grayscale or RGB; None keeps the data's own (any other count
            must be the data's own).
        skip_unreadable: leave out image files that cannot be decoded (a folder, a table, tar
            shards), with a warning; they are listed in the source's ``skipped``.
    """
    size = normalize_image_size(image_size)
    check_channels(channels)
    text = str(spec)
    if text in BUILTIN_SOURCES:
        source = _open_builtin(text, size, channels)
    elif is_tar_spec(text) and not Path(text).expanduser().is_dir():
        source = read_tar_shards(expand_shard_spec(text), _shards_name(text), size, channels,
                                 skip_unreadable=skip_unreadable)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(_unknown_spec_message(text))
        source = _open_path(path, size, channels, skip_unreadable)
    # Image folders are already converted and resized while decoding; these are no-ops there.
    images = convert_channels(source.images, channels)
    if size is not None:
        images = resize_images(images, size)
    if images is source.images:
        return source
    converted = ImageSource(images, source.labels, source.class_names, source.name, source.root)
    converted.skipped = source.skipped
    return converted


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


def _open_path(path: Path, size: tuple[int, int] | None, channels: int | None,
               skip_unreadable: bool = False) -> ImageSource:
    if path.is_dir():
        if is_hf_dataset_folder(path):
            return read_hf_dataset(path, size, channels, skip_unreadable=skip_unreadable)
        shards = tar_files_in(path)
        if shards:
            return read_tar_shards(shards, path.resolve().name, size, channels, skip_unreadable=skip_unreadable)
        idx_files = idx_images_in(path)
        if len(idx_files) > 1:
            names = ", ".join(f"'{p.name}'" for p in idx_files)
            raise DataError(
                f"Folder '{path}' holds several IDX image files ({names}); pass the path of "
                f"the one to use (its labels file is found beside it)."
            )
        if idx_files:
            return read_idx(idx_files[0], labels_beside(idx_files[0]))
        return read_image_folder(path, size, channels, skip_unreadable=skip_unreadable)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        return read_npz(path)
    if suffix in TABLE_EXTENSIONS:
        return read_image_table(path, size, channels, skip_unreadable=skip_unreadable)
    if suffix in (".tif", ".tiff"):
        return read_tiff_stack(path)
    if is_idx_file(path):
        return read_idx(path, labels_beside(path))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(
            f"'{path}' is a single image; pass the folder that holds the images instead."
        )
    raise DataError(f"Cannot tell the format of '{path}'. Accepted: {ACCEPTED_FORMATS}.")


def _shards_name(spec: str) -> str:
    """A tar spec's name in logs: its file name without the brace, glob or suffix parts."""
    name = Path(spec).name
    for suffix in TAR_SUFFIXES:
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    stem = name.split("{")[0].split("*")[0].rstrip("-_.")
    return stem or Path(spec).parent.name or "shards"


def _unknown_spec_message(spec: str) -> str:
    close = closest_names(spec, BUILTIN_SOURCES)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"'{spec}' is neither a built-in data set nor an existing path.{hint} "
        f"Built-in data sets: {', '.join(BUILTIN_SOURCES)}. A path may be {ACCEPTED_FORMATS}."
    )
