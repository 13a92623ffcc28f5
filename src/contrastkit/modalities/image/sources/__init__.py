"""Data sources: readers that turn files on disk into in-memory data sets.

Images: :func:`open_image_source` (built-in names, image folders, IDX, ``.npz``) returns an
:class:`ImageSource`. Label-aware index splits live in :mod:`contrastkit.evaluation.splits`.
"""

from contrastkit.modalities.image.sources.idx import read_idx
from contrastkit.modalities.image.sources.image_folder import read_image_folder
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.images import (
    BUILTIN_SOURCES,
    load_digits_source,
    open_image_source,
)
from contrastkit.modalities.image.sources.npz import read_npz

__all__ = [
    "BUILTIN_SOURCES",
    "ImageSource",
    "load_digits_source",
    "open_image_source",
    "read_idx",
    "read_image_folder",
    "read_npz",
]
