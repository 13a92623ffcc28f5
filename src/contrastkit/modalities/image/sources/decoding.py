"""Decode a list of encoded images (files or bytes) into one :class:`ImageSource`.

Every reader of encoded images -- an image folder, a CSV/Parquet list of paths, a Hugging Face
``datasets`` folder, webdataset tar shards -- lists its images as :class:`EncodedImage` items (a
name for messages, and a path or the file's bytes) with their labels, and ends in
:func:`decode_into_source`, so that they all decode, resize, stack and skip the same way:

- JPEG, PNG, BMP and WebP go through PIL to 8 bits: 1 channel when every image is grayscale,
  else RGB (alpha dropped); 16-bit grayscale is scaled 0..65535 -> 0..255;
- TIFF goes through ``tifffile`` with its own depth and channel count (multi-band, 16-bit,
  float) and the whole set is brought to uint8 channel by channel
  (:func:`contrastkit.modalities.image.sources.pixels.scale_to_uint8`). A set is all TIFF or
  has no TIFF: the two scales cannot be mixed;
- an image that cannot be decoded stops the reading with a DataError naming it, unless
  ``skip_unreadable``: it is then left out with its label, the returned source lists it in
  ``skipped`` ("name: reason"), and a warning says how many were left out.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.formats import IMAGE_FILES, TIFF_EXTENSIONS
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.pixels import convert_channels, scale_to_uint8

# Formats PIL decodes to 8 bits, and those tifffile reads at their own depth.
PIL_EXTENSIONS = IMAGE_FILES
IMAGE_EXTENSIONS = PIL_EXTENSIONS + TIFF_EXTENSIONS
# PIL modes that hold one intensity per pixel (with or without alpha), and those among them
# wider than 8 bits, which PIL's convert() would clip rather than scale.
WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
GRAYSCALE_MODES = ("1", "L", "LA", "La", *WIDE_GRAY_MODES)
# Images decoded per thread-pool task: one task per 32x32 JPEG would spend as long scheduling
# as decoding.
IMAGES_PER_TASK = 128
# Unreadable images named in the warning (all of them are in ImageSource.skipped).
NAMED_IN_WARNING = 5


@dataclass(frozen=True)
class EncodedImage:
    """One image to decode: ``name`` says which in messages (a path, ``shard.tar:key``), ``data`` is
    the file's path or its bytes."""

    name: str
    data: Path | bytes

    @property
    def is_tiff(self) -> bool:
        return Path(self.name).suffix.lower() in TIFF_EXTENSIONS


def warn_skipped(name: str, skipped: list[str], stacklevel: int = 2) -> None:
    """Warn that ``skipped`` images of the set ``name`` were left out (``--skip-unreadable``), naming
    the first :data:`NAMED_IN_WARNING` ("file: reason"); ``stacklevel`` as the caller would give it to
    ``warnings.warn``."""
    shown = "; ".join(skipped[:NAMED_IN_WARNING])
    more = f"; and {len(skipped) - NAMED_IN_WARNING} more" if len(skipped) > NAMED_IN_WARNING else ""
    warnings.warn(f"Skipped {len(skipped)} unreadable image(s) of '{name}' (--skip-unreadable): {shown}{more}.",
                  stacklevel=stacklevel + 1)


def decode_into_source(
    items: Sequence[EncodedImage],
    labels: Sequence[int] | None,
    class_names: Sequence[str] | None,
    name: str,
    root: Path | None,
    size: tuple[int, int] | None,
    channels: int | None,
    num_threads: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSource:
    """Decode ``items`` (with ``labels``, one per item, or None) into an ImageSource; see the module
    docstring. ``size`` (H, W) resizes every image (PIL's bilinear filter, antialiased, for 8-bit
    formats; the same filter in float for TIFF); None keeps the native size, which must then be
    the same for every image. ``channels`` 1 or 3 forces grayscale or RGB."""
    if not items:
        raise DataError(f"'{name}' lists no images.")
    tiff = [item.is_tiff for item in items]
    if any(tiff) and not all(tiff):
        first_tiff, first_other = items[tiff.index(True)].name, items[tiff.index(False)].name
        raise DataError(
            f"'{name}' mixes TIFF images ('{first_tiff}') with other formats ('{first_other}'). TIFF is "
            f"read at its own depth and scaled per channel over the set, the others at 8 bits; convert "
            f"one group so that the set has a single kind."
        )
    pil_channels = channels if channels in (1, 3) else None
    decode = _read_tiff if tiff[0] else (lambda item: _decode_with_pil(item, size, pil_channels))
    arrays, skipped = _decode_all(items, decode, num_threads, skip_unreadable)
    kept = [i for i, array in enumerate(arrays) if array is not None]
    if not kept:
        raise DataError(f"None of the {len(items)} images of '{name}' could be read: {skipped[0]}")
    if skipped:
        warn_skipped(name, skipped, stacklevel=2)
    decoded = [arrays[i] for i in kept]
    names = [items[i].name for i in kept]
    if tiff[0]:
        images = _stack_tiff(decoded, names, name, size)
        images = convert_channels(images, channels) if channels in (1, 3) else images
    else:
        images = _stack_8_bit(decoded, names, name, pil_channels)
    label_tensor = None if labels is None else torch.as_tensor([labels[i] for i in kept], dtype=torch.int64)
    source = ImageSource(images, label_tensor, class_names, name=name, root=root)
    source.skipped = skipped
    return source


def _decode_all(items, decode, num_threads, skip_unreadable) -> tuple[list[np.ndarray | None], list[str]]:
    """Decoded arrays in item order (None for an unreadable item that was skipped) and the skipped
    items as 'name: reason'. Threads take runs of items; PIL releases the GIL while decoding."""

    def decode_run(run: Sequence[EncodedImage]) -> list[np.ndarray | str]:
        out: list[np.ndarray | str] = []
        for item in run:
            try:
                out.append(decode(item))
            except DataError as err:
                if not skip_unreadable:
                    raise
                out.append(f"{item.name}: {err.__cause__ or err}")
        return out

    workers = num_threads or min(8, usable_cpus())
    runs = [items[start : start + IMAGES_PER_TASK] for start in range(0, len(items), IMAGES_PER_TASK)]
    if workers <= 1 or len(runs) == 1:
        results = [result for run in runs for result in decode_run(run)]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = [result for decoded in pool.map(decode_run, runs) for result in decoded]
    skipped = [result for result in results if isinstance(result, str)]
    return [None if isinstance(result, str) else result for result in results], skipped


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _opened(item: EncodedImage):
    return io.BytesIO(item.data) if isinstance(item.data, bytes) else item.data


def _decode_with_pil(item: EncodedImage, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """One image as uint8 (H, W) if grayscale-or-``channels=1``, else (H, W, 3)."""
    try:
        with Image.open(_opened(item)) as image:
            gray = channels == 1 or (channels is None and image.mode in GRAYSCALE_MODES)
            if image.mode in WIDE_GRAY_MODES:
                image = _wide_gray_to_8_bits(image)
            if gray and image.mode != "L":
                image = image.convert("L")
            elif not gray and image.mode != "RGB":
                image = image.convert("RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:  # what PIL raises for bad files
        raise DataError(
            f"Cannot read image '{item.name}': {err}. The file is corrupt, truncated or not really "
            f"an image; remove or replace it (or pass --skip-unreadable to leave such files out)."
        ) from err


def _wide_gray_to_8_bits(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) grayscale -> "L", scaling 0..65535 to 0..255 (values that fit in
    0..255 in a 32-bit image are kept as they are)."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    return Image.fromarray(np.rint(np.clip(values, 0, top) * (255.0 / top)).astype(np.uint8))


def _read_tiff(item: EncodedImage) -> np.ndarray:
    """One TIFF image as (C, H, W) in its own dtype (:func:`tiff_as_chw` gives the layout)."""
    from contrastkit.modalities.image.sources.tiff import read_tiff_array, tiff_as_chw

    array, axes = read_tiff_array(_opened(item), item.name)
    return tiff_as_chw(array, axes, item.name)


def _stack_8_bit(arrays: list[np.ndarray], names: Sequence[str], where: str, channels: int | None) -> torch.Tensor:
    """Stack PIL-decoded images into (N, C, H, W); gray ones are repeated to RGB if any is colour."""
    height, width = _common_size([a.shape[:2] for a in arrays], names, where)
    any_colour = any(a.ndim == 3 for a in arrays)
    out_channels = channels or (3 if any_colour else 1)
    images = torch.empty((len(arrays), out_channels, height, width), dtype=torch.uint8)
    planes = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) view of the same memory
    for i, array in enumerate(arrays):
        planes[i] = array if array.ndim == 3 else array[:, :, None]  # gray broadcasts to RGB
    return images


def _stack_tiff(arrays: list[np.ndarray], names: Sequence[str], where: str,
                size: tuple[int, int] | None) -> torch.Tensor:
    """Stack (C, H, W) TIFF arrays (resized in float first when ``size`` is given) and bring the set
    to uint8 channel by channel."""
    counts = {a.shape[0] for a in arrays}
    if len(counts) > 1:
        first = next(i for i, a in enumerate(arrays) if a.shape[0] != arrays[0].shape[0])
        raise DataError(
            f"TIFF images of '{where}' differ in channel count: '{names[0]}' has {arrays[0].shape[0]} "
            f"channels but '{names[first]}' has {arrays[first].shape[0]}; every image needs the same bands."
        )
    if size is not None:
        arrays = [_resize_raw(a, size) for a in arrays]
    _common_size([a.shape[1:] for a in arrays], names, where)
    stacked = np.stack(arrays)
    return torch.from_numpy(np.ascontiguousarray(scale_to_uint8(stacked, f"TIFF images of '{where}'")))


def _resize_raw(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) of any dtype -> float32 (C, H', W'), bilinear with antialiasing (as PIL shrinks)."""
    if tuple(array.shape[1:]) == tuple(size):
        return array
    planes = torch.from_numpy(array.astype(np.float32))[None]
    return F.interpolate(planes, size=size, mode="bilinear", antialias=True, align_corners=False)[0].numpy()


def _common_size(sizes: list[tuple[int, ...]], names: Sequence[str], where: str) -> tuple[int, int]:
    """The one (H, W) of every image, or a DataError naming two images that differ."""
    first = tuple(sizes[0])
    for size, name in zip(sizes, names):
        if tuple(size) != first:
            raise DataError(
                f"Images of '{where}' differ in size: '{names[0]}' is {first[0]}x{first[1]} (HxW) but "
                f"'{name}' is {size[0]}x{size[1]}. Pass --image-size (image_size=...) to resize them all."
            )
    return first  # type: ignore[return-value]
