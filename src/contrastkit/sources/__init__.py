"""Data sources: readers that turn files on disk into in-memory data sets.

Images: :func:`open_image_source` (built-in names, image folders, IDX, ``.npz``) returns an
:class:`ImageSource`; :mod:`contrastkit.sources.splits` holds label-aware index splits.
"""

from contrastkit.sources.idx import read_idx
from contrastkit.sources.image_folder import read_image_folder
from contrastkit.sources.image_source import ImageSource
from contrastkit.sources.images import BUILTIN_SOURCES, load_digits_source, open_image_source
from contrastkit.sources.npz import read_npz
from contrastkit.sources.splits import per_class_subset, stratified_split

__all__ = [
    "BUILTIN_SOURCES",
    "ImageSource",
    "load_digits_source",
    "open_image_source",
    "per_class_subset",
    "read_idx",
    "read_image_folder",
    "read_npz",
    "stratified_split",
]
