"""Pure functions on pixel arrays: bring any numeric array to uint8, change the channel count,
resize a whole uint8 batch.

Two ways to uint8: :func:`to_uint8` for data that is already 8-bit (kept on its absolute scale), and
:func:`scale_to_uint8` for any depth and channel count (16-bit, float, multi-band), which stretches
each channel by its own percentile range over the whole set (see :data:`PERCENTILE_RANGE`).

Every reader ends with a uint8 tensor (N, C, H, W); these functions are the shared last steps,
so that an IDX file, an ``.npz`` and an image folder given the same ``image_size`` and
``channels`` come out the same way.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, DataError

# ITU-R BT.601 luma weights, the ones PIL uses for ``Image.convert("L")``:
# L = R * 299/1000 + G * 587/1000 + B * 114/1000.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def normalize_image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``32`` -> ``(32, 32)``; ``(h, w)`` and ``None`` kept; non-positive sizes: ConfigError."""
    if image_size is None:
        return None
    if isinstance(image_size, int | np.integer):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
        if len(size) != 2:
            raise ConfigError(
                f"image_size must be one int (square) or (height, width); got {image_size!r}."
            )
    if min(size) < 1:
        raise ConfigError(f"image_size must be positive; got {image_size!r}.")
    return size  # type: ignore[return-value]


def check_channels(channels: int | None) -> int | None:
    """1 (grayscale) and 3 (RGB) can be converted to; any other positive count only names the data's
    own (a trained encoder re-opening its multi-band set): :func:`convert_channels` refuses others."""
    if channels is not None and (not isinstance(channels, int | np.integer) or channels < 1):
        raise ConfigError(
            f"channels must be 1 (grayscale) or 3 (RGB), or left unset to keep the data's own; "
            f"got {channels!r}."
        )
    return channels


def to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Pixel values as uint8, refusing anything that is not clearly an 8-bit image.

    - integers must lie in 0..255 and are cast;
    - floats in [0, 1] are read as intensities and mapped to ``round(255 * x)``;
    - other floats in [0, 255] are read as pixel values and rounded;
    - anything else (negative, > 255, NaN, non-numeric) raises DataError naming ``what``.

    A float array whose values all happen to lie in [0, 1] is always taken as [0, 1] data.
    """
    if array.dtype == np.uint8:
        return array
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{what}: integer pixel values must lie in 0..255, but they span {low}..{high}. "
                f"Rescale the images to 8 bits before saving them."
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError(f"{what}: the pixel values contain NaN or infinity; fix the array.")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            return np.rint(array * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.rint(array).astype(np.uint8)
        raise DataError(
            f"{what}: float pixel values must lie in [0, 1] or [0, 255], but they span "
            f"[{low:g}, {high:g}] (normalised data?). Save the raw images instead."
        )
    raise DataError(f"{what}: pixel values have dtype {array.dtype}; expected numbers.")


# Each channel is stretched from its 0.5th to its 99.5th percentile: the 1 % of extreme values
# (hot pixels, saturated glints, a no-data fill) would otherwise squeeze the rest into a few levels.
PERCENTILE_RANGE = (0.5, 99.5)
# Percentiles of a channel are taken over at most this many of its values (an evenly strided
# sample, the same every time); below it they are exact.
PERCENTILE_SAMPLE = 1 << 22


def is_eight_bit(array: np.ndarray) -> bool:
    """Whether :func:`to_uint8` takes ``array`` as it is: uint8, integers in 0..255, floats in [0, 1]
    or [0, 255]. Wider integer dtypes (uint16, int32) count as 8-bit only by their values."""
    if array.dtype == np.uint8 or array.size == 0:
        return True
    if not np.issubdtype(array.dtype, np.number):
        return False
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        return False
    return float(array.min()) >= 0.0 and float(array.max()) <= 255.0


def channel_ranges(images: np.ndarray) -> np.ndarray:
    """(C, 2) float64: the :data:`PERCENTILE_RANGE` percentiles ``(low_c, high_c)`` of each channel of
    ``images`` (N, C, H, W), over every pixel of every image (sampled past :data:`PERCENTILE_SAMPLE`)."""
    ranges = np.empty((images.shape[1], 2), dtype=np.float64)
    for c in range(images.shape[1]):
        values = images[:, c].reshape(-1)
        if values.size > PERCENTILE_SAMPLE:
            values = values[:: -(-values.size // PERCENTILE_SAMPLE)]
        ranges[c] = np.percentile(values.astype(np.float64), PERCENTILE_RANGE)
    return ranges


def scale_to_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """Pixels (N, C, H, W) of any numeric dtype and any channel count as uint8, per channel.

    8-bit data (:func:`is_eight_bit`: uint8, integers in 0..255, floats in [0, 1] or [0, 255]) keeps
    its absolute scale through :func:`to_uint8`, so an 8-bit set reads the same as before. Anything
    else (16-bit, negative or large values, float reflectances, ...) is stretched channel by
    channel: with ``(low_c, high_c)`` the 0.5th and 99.5th percentiles of channel c over the whole
    set (:func:`channel_ranges`),

        u = round(255 * clip((v - low_c) / (high_c - low_c), 0, 1)),

    and ``u = 0`` where ``high_c == low_c`` (a constant channel carries nothing). The per-channel
    mean/std normalisation of training then applies to these uint8 values as to any image.
    NaN or infinite values raise DataError naming ``what``.
    """
    if is_eight_bit(images):
        return to_uint8(images, what)
    if not np.issubdtype(images.dtype, np.number):
        raise DataError(f"{what}: pixel values have dtype {images.dtype}; expected numbers.")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise DataError(f"{what}: the pixel values contain NaN or infinity; replace them (e.g. by 0) first.")
    ranges = channel_ranges(images)
    out = np.empty(images.shape, dtype=np.uint8)
    step = max(1, (1 << 22) // max(1, int(np.prod(images.shape[1:]))))
    for c, (low, high) in enumerate(ranges):
        for start in range(0, len(images), step):
            plane = images[start : start + step, c].astype(np.float64)
            if high > low:
                unit = np.clip((plane - low) / (high - low), 0.0, 1.0)
                out[start : start + step, c] = np.rint(unit * 255.0).astype(np.uint8)
            else:
                out[start : start + step, c] = 0
    return out


def convert_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) with C in {1, 3} -> (N, channels, H, W).

    1 -> 3 repeats the gray plane (as PIL's L -> RGB does); 3 -> 1 takes the BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B`` rounded to the nearest integer.
    """
    have = images.shape[1]
    if channels is None or channels == have:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have in (3, 4) and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1)
        out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
        step = chunk_length(images)
        for start in range(0, images.shape[0], step):
            rgb = images[start : start + step, :3].to(torch.float32)
            luma = (rgb * weights).sum(dim=1, keepdim=True)
            out[start : start + step] = luma.round_().clamp_(0, 255).to(torch.uint8)
        return out
    raise ConfigError(
        f"Cannot convert images with {have} channels to {channels} channels: only 1 <-> 3 (gray, RGB) "
        f"and RGB(A) -> gray are defined. Leave the channel count unset to keep the data's {have} channels."
    )


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 batch (N, C, H, W) to ``size`` = (H', W'), keeping uint8.

    Bilinear with antialiasing (so shrinking averages pixels rather than skipping them, like
    PIL's resize), done in float32 in chunks so that memory stays bounded; values are rounded
    and clipped back to 0..255.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((*images.shape[:2], *size), dtype=torch.uint8)
    step = min(chunk_length(images), chunk_length(out))
    for start in range(0, images.shape[0], step):
        batch = images[start : start + step].to(torch.float32)
        resized = F.interpolate(
            batch, size=size, mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + step] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def pixel_histogram(images: torch.Tensor) -> torch.Tensor:
    """``counts[c, v]`` = number of pixels of channel c equal to v, for a uint8 (N, C, H, W)
    batch; int64 (C, 256). Counted in chunks, so memory stays bounded for any N."""
    counts = torch.zeros((images.shape[1], 256), dtype=torch.int64)
    for chunk in images.split(chunk_length(images)):
        for c in range(images.shape[1]):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    return counts


def histogram_mean_std(counts: torch.Tensor, what: str = "the images") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std, in [0, 1] units, from ``counts[c, v]``
    (:func:`pixel_histogram`). With M = sum_v h_c[v], S1 = sum_v v h_c[v], S2 = sum_v v^2 h_c[v]
    in Python integers::

        mean_c = S1 / (255 M),    std_c = sqrt(M S2 - S1^2) / (255 M)

    M S2 - S1^2 is exact (no cancellation); only the last division and square root round, so the
    same pixels give the same figures bit for bit however they were counted.

    A constant channel (std 0: a blank band, or one that :func:`scale_to_uint8` set to 0) gets std 1,
    with a warning that names the channel and ``what``: ``(x - mean) / std`` then maps it to 0, the
    convention of scikit-learn's StandardScaler for a feature without variance. A channel that carries
    nothing need not stop a run, and a std of 1 keeps the channel bounded (within [-1, 1]) for images
    where it is not constant, where a tiny std would blow it up."""
    means, stds = [], []
    for histogram in counts.tolist():
        m = sum(histogram)
        s1 = sum(v * n for v, n in enumerate(histogram))
        s2 = sum(v * v * n for v, n in enumerate(histogram))
        means.append(s1 / (255 * m))
        stds.append(math.sqrt(m * s2 - s1 * s1) / (255 * m))
    constant = [c for c, std in enumerate(stds) if std == 0.0]
    if constant:
        values = ", ".join(f"channel {c} (value {round(means[c] * 255)})" for c in constant)
        warnings.warn(f"{what}: {values} is the same in every pixel (a blank band?); its normalisation std is "
                      f"taken as 1, so it enters the encoder as 0.", stacklevel=2)
        stds = [1.0 if std == 0.0 else std for std in stds]
    return tuple(means), tuple(stds)


def chunk_length(images: torch.Tensor, values_per_chunk: int = 1 << 24) -> int:
    """How many images to convert to float at once: ~16 M values (64 MB in float32) per chunk,
    whatever the image size, so that 10^5 images never need one huge float copy."""
    values_per_image = max(1, int(np.prod(images.shape[1:])))
    return max(1, values_per_chunk // values_per_image)
