"""Read a folder of image files (JPEG, PNG, BMP, WebP) into an :class:`ImageSource`.

Layouts:
    root/<class>/<file>   labelled: class k is the k-th subfolder name in sorted order
                          (files may sit in nested folders below a class folder);
    root/<file>           unlabeled.

Files that are skipped: hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``), and, at
the top level only, notes about the data set (``*.txt``, ``*.md``, ``README*``, ``LICENSE*``,
e.g. ``PROVENANCE.txt``). Every other file must be an image: a ``.csv`` or a ``.zip`` inside an
image folder is reported, not silently skipped, since it usually means the wrong folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.pixels import check_channels, normalize_image_size

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
NOTE_EXTENSIONS = (".txt", ".md")
NOTE_STEMS = ("readme", "license", "licence")
# PIL modes that hold one intensity per pixel (with or without alpha), and those among them
# wider than 8 bits, which PIL's convert() would clip rather than scale.
WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
GRAYSCALE_MODES = ("1", "L", "LA", "La", *WIDE_GRAY_MODES)
# Files decoded per thread-pool task.
_FILES_PER_TASK = 128


def read_image_folder(
    path: str | Path,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    num_threads: int | None = None,
) -> ImageSource:
    """Decode every image under ``path`` (see the module docstring for the layout).

    Args:
        path: the folder.
        image_size: resize every image to this (int -> square; (H, W)) with PIL's bilinear
            filter, which antialiases when shrinking. None: keep the native size, which must
            then be the same for every image.
        channels: 3 -> convert to RGB, 1 -> convert to grayscale ("L"). None: RGB unless every
            image is grayscale. Alpha is dropped.
        num_threads: decoding threads (PIL releases the GIL while decoding); default
            ``min(8, usable CPUs)``.

    Order is deterministic: classes sorted by name, files sorted by relative path.
    """
    root = Path(path)
    size = normalize_image_size(image_size)
    check_channels(channels)
    files, labels, class_names = list_image_files(root)
    arrays = _decode_all(files, size, channels, num_threads)
    images = _stack(arrays, files, root, channels)
    label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    return ImageSource(images, label_tensor, class_names, name=root.resolve().name, root=root)


def list_image_files(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """(files, labels or None, class names or None) of an image folder, in sorted order.

    Raises DataError for a missing or empty folder, a non-image file, an empty class folder, or
    images at the top level beside class folders.
    """
    if not root.exists():
        raise DataError(f"Image folder '{root}' does not exist. Check the path.")
    if not root.is_dir():
        raise DataError(f"'{root}' is a file, not a folder of images.")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    top_files = [p for p in entries if p.is_file() and not _is_note(p)]
    _refuse_non_images(top_files, root)
    if class_dirs and top_files:
        raise DataError(
            f"Image folder '{root}' mixes images at its top level (e.g. '{top_files[0].name}') "
            f"with class subfolders (e.g. '{class_dirs[0].name}/'). Put every image in a class "
            f"folder for a labelled set, or use a flat folder for an unlabeled one."
        )
    if top_files:
        return top_files, None, None
    if not class_dirs:
        raise DataError(
            f"Image folder '{root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}), "
            f"neither at its top level nor in class subfolders."
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        class_files = _files_below(class_dir)
        _refuse_non_images(class_files, root)
        if not class_files:
            raise DataError(
                f"Class folder '{class_dir}' holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                f"Remove the folder or add its images; every subfolder of '{root}' is a class."
            )
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    return files, labels, [d.name for d in class_dirs]


def _is_note(path: Path) -> bool:
    """A note about the data set at the top level (PROVENANCE.txt, README.md, LICENSE)."""
    return path.suffix.lower() in NOTE_EXTENSIONS or path.stem.lower() in NOTE_STEMS


def _files_below(folder: Path) -> list[Path]:
    """Non-hidden files anywhere below ``folder``, sorted by path relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _refuse_non_images(files: Sequence[Path], root: Path) -> None:
    strangers = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if strangers:
        shown = ", ".join(f"'{p.relative_to(root)}'" for p in strangers[:5])
        more = f" and {len(strangers) - 5} more" if len(strangers) > 5 else ""
        raise DataError(
            f"Image folder '{root}' contains files that are not images: {shown}{more}. "
            f"Only {', '.join(IMAGE_EXTENSIONS)} files are read; move the others out of the folder."
        )


def _decode_all(
    files: Sequence[Path],
    size: tuple[int, int] | None,
    channels: int | None,
    num_threads: int | None,
) -> list[np.ndarray]:
    """Decode in parallel threads, each taking runs of files (one task per file would spend as
    long scheduling as decoding a 32x32 JPEG)."""
    workers = num_threads or min(8, _usable_cpus())
    step = _FILES_PER_TASK
    runs = [files[start : start + step] for start in range(0, len(files), step)]

    def decode_run(run: Sequence[Path]) -> list[np.ndarray]:
        return [_decode(file, size, channels) for file in run]

    if workers <= 1 or len(runs) == 1:
        return [array for run in runs for array in decode_run(run)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [array for decoded in pool.map(decode_run, runs) for array in decoded]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _decode(file: Path, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """One image as uint8 (H, W) if grayscale-or-``channels=1``, else (H, W, 3)."""
    try:
        with Image.open(file) as image:
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
            f"Cannot read image '{file}': {err}. The file is corrupt, truncated or not really "
            f"an image; remove or replace it."
        ) from err


def _wide_gray_to_8_bits(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) grayscale -> "L", scaling 0..65535 to 0..255 (values that fit in
    0..255 in a 32-bit image are kept as they are)."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    return Image.fromarray(np.rint(np.clip(values, 0, top) * (255.0 / top)).astype(np.uint8))


def _stack(
    arrays: list[np.ndarray], files: Sequence[Path], root: Path, channels: int | None
) -> torch.Tensor:
    """Stack decoded images into (N, C, H, W); gray ones are repeated to RGB if any is colour."""
    shapes: dict[tuple[int, int], Path] = {}
    for array, file in zip(arrays, files):
        shapes.setdefault(array.shape[:2], file)
        if len(shapes) > 1:
            (size_a, file_a), (size_b, file_b) = list(shapes.items())[:2]
            raise DataError(
                f"Images in '{root}' differ in size: '{file_a.relative_to(root)}' is "
                f"{size_a[0]}x{size_a[1]} (HxW) but '{file_b.relative_to(root)}' is "
                f"{size_b[0]}x{size_b[1]}. Pass --image-size (image_size=...) to resize them all."
            )
    height, width = next(iter(shapes))
    any_colour = any(a.ndim == 3 for a in arrays)
    out_channels = channels or (3 if any_colour else 1)
    images = torch.empty((len(arrays), out_channels, height, width), dtype=torch.uint8)
    planes = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) view of the same memory
    for i, array in enumerate(arrays):
        planes[i] = array if array.ndim == 3 else array[:, :, None]  # gray broadcasts to RGB
    return images
