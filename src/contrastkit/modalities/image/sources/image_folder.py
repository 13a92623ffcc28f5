"""Read a folder of image files (JPEG, PNG, BMP, WebP, or TIFF) into an :class:`ImageSource`.

Layouts:
    root/<class>/<file>   labelled: class k is the k-th subfolder name in sorted order
                          (files may sit in nested folders below a class folder);
    root/<file>           unlabeled.

Files that are skipped: hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``), and, at
the top level only, notes about the data set (``*.txt``, ``*.md``, ``README*``, ``LICENSE*``,
e.g. ``PROVENANCE.txt``). Every other file must be an image: a ``.csv`` or a ``.zip`` inside an
image folder is reported, not silently skipped, since it usually means the wrong folder.

Decoding (8-bit formats through PIL, TIFF at its own depth and channel count, unreadable files)
is :mod:`contrastkit.modalities.image.sources.decoding`'s, shared with the other readers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources.decoding import IMAGE_EXTENSIONS, EncodedImage, decode_into_source
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.pixels import check_channels, normalize_image_size

NOTE_EXTENSIONS = (".txt", ".md")
NOTE_STEMS = ("readme", "license", "licence")


def read_image_folder(
    path: str | Path,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    num_threads: int | None = None,
    skip_unreadable: bool = False,
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
        skip_unreadable: leave out files that cannot be decoded (listed in the source's
            ``skipped``, with a warning) instead of stopping with a DataError.

    Order is deterministic: classes sorted by name, files sorted by relative path.
    """
    root = Path(path)
    size = normalize_image_size(image_size)
    check_channels(channels)
    files, labels, class_names = list_image_files(root)
    items = [EncodedImage(str(file), file) for file in files]
    return decode_into_source(items, labels, class_names, root.resolve().name, root, size, channels,
                              num_threads, skip_unreadable)


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
