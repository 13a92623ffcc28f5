"""The names that tell image data apart, in a module light enough for the plugin: ``contrastkit fit``
asks the image plugin whether ``--data`` is images (a method name that several modalities share, such
as ``simclr``) before any image code, and torch, is imported."""

from __future__ import annotations

IMAGE_FILES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TIFF_EXTENSIONS = (".tif", ".tiff")
ARRAY_FILES = (".npz", ".npy")
TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet")  # lists of image paths (and labels)
PATH_COLUMNS = ("path", "image", "file", "filename", "filepath", "image_path")
LABEL_COLUMNS = ("label", "class", "labels", "target", "category")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # webdataset-style shards
HF_DATASET_FILES = ("state.json", "dataset_dict.json")  # a folder written by datasets' save_to_disk
