"""Data sources: readers that turn files on disk into in-memory data sets.

Images: :func:`open_image_source` (built-in names, image folders, CSV/Parquet lists, Hugging Face
``save_to_disk`` folders, webdataset tar shards, TIFF, IDX, ``.npz``/``.npy``) returns an
:class:`ImageSource`. Tar shards and ``save_to_disk`` folders can also be read batch by batch
without decoding the set (:func:`contrastkit.modalities.image.sources.streamed.open_streamed_images`,
``--data stream:PATH``). Label-aware index splits live in :mod:`contrastkit.evaluation.splits`.
"""

from contrastkit.modalities.image.sources.hf_arrow import read_hf_dataset
from contrastkit.modalities.image.sources.idx import read_idx
from contrastkit.modalities.image.sources.image_folder import read_image_folder
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.images import (
    BUILTIN_SOURCES,
    load_digits_source,
    open_image_source,
)
from contrastkit.modalities.image.sources.npz import read_npz
from contrastkit.modalities.image.sources.tables import read_image_table
from contrastkit.modalities.image.sources.tar_shards import read_tar_shards
from contrastkit.modalities.image.sources.tiff import read_tiff_stack

__all__ = [
    "BUILTIN_SOURCES",
    "ImageSource",
    "load_digits_source",
    "open_image_source",
    "read_hf_dataset",
    "read_idx",
    "read_image_folder",
    "read_image_table",
    "read_npz",
    "read_tar_shards",
    "read_tiff_stack",
]
