"""What the run page shows for one embedded sample: the sample itself where the run folder says where
its data is (an image's thumbnail, a series' curve), its row number and label otherwise.

A preview is a small JSON-able dict that the page's script draws:

    {"kind": "image", "src": "data:image/png;base64,..."}   an image thumbnail (at most 48 px a side)
    {"kind": "series", "values": [...]}                       a curve (at most 200 points)
    {"kind": "text", "text": "..."}                           a line of text

:func:`sample_previews` picks the reader from what the folder holds (:func:`contrastkit.loading.run_kind`).
A run whose data cannot be read again (moved, streamed from shards) gets text previews and a note
saying why; the page is still written.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from contrastkit.core.errors import DataError

THUMBNAIL_SIDE = 48
SERIES_POINTS = 200


def sample_previews(run_dir: Path, rows: np.ndarray, labels: np.ndarray | None) -> tuple[list[dict], str | None]:
    """(one preview per row of ``rows``, a note on why samples are not shown, or None).

    ``rows`` are row numbers of the run's ``embeddings.npy``."""
    from contrastkit.loading import run_kind

    reader = PREVIEW_READERS.get(run_kind(run_dir) or "")
    note = None
    if reader is not None:
        try:
            return reader(run_dir, rows), None
        except (DataError, OSError, KeyError, ValueError, IndexError) as error:
            note = f"The samples are not shown ({error}); rows and labels are."
    else:
        note = "This kind of run does not say where its samples are; rows and labels are shown."
    return [text_preview(int(row), None if labels is None else labels[row]) for row in rows], note


def text_preview(row: int, label) -> dict:
    return {"kind": "text", "text": f"row {row}" + ("" if label is None else f" · label {label}")}


def image_thumbnail(image: np.ndarray) -> dict:
    """uint8 (C, H, W) -> a PNG data URI, shrunk to at most THUMBNAIL_SIDE a side (never enlarged;
    the page scales it up without smoothing). PNG keeps small images exact; JPEG would be smaller
    for large photographs but blurs the 8-32 px images these runs mostly hold."""
    from PIL import Image

    array = np.asarray(image)
    if array.ndim != 3:
        raise DataError(f"an image of shape {array.shape}, not (C, H, W)")
    channels = array.shape[0]
    picture = Image.fromarray(array[0] if channels == 1 else np.moveaxis(array[:3], 0, -1))
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return {"kind": "image", "src": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")}


def series_preview(values: np.ndarray) -> dict:
    """A series of shape (T,) or (channels, T) (its first channel), its missing values (NaN: the
    padding of unequal lengths) dropped, thinned to at most SERIES_POINTS points."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[0]
    values = values[np.isfinite(values)]
    if len(values) > SERIES_POINTS:
        values = values[np.linspace(0, len(values) - 1, SERIES_POINTS).round().astype(int)]
    return {"kind": "series", "values": [round(float(v), 5) for v in values]}


def _config(run_dir: Path) -> dict:
    file = run_dir / "config.yaml"
    if not file.is_file():
        raise DataError(f"{file} is missing")
    return yaml.safe_load(file.read_text()) or {}


def image_previews(run_dir: Path, rows: np.ndarray) -> list[dict]:
    """Thumbnails of an image run's samples: ``rows.npy`` names the sample of ``--data`` each
    embedding row is, in the set as ``contrastkit fit`` opened it (same size, its own channels)."""
    from contrastkit.modalities.image.sources.images import open_image_source
    from contrastkit.modalities.image.sources.shards import shard_spec_folder
    from contrastkit.modalities.image.sources.streamed import stream_spec_path

    config = _config(run_dir)
    data = config.get("data")
    if not data or shard_spec_folder(str(data)) is not None or stream_spec_path(str(data)) is not None:
        raise DataError("the run streamed its data" if data else "config.yaml names no data")
    data_rows_file = run_dir / "rows.npy"
    if not data_rows_file.is_file():
        raise DataError("rows.npy is missing")
    data_rows = np.load(data_rows_file, allow_pickle=False)
    source = open_image_source(data, image_size=config.get("image_size"),
                               skip_unreadable=bool(config.get("skip_unreadable")))
    images = source.images
    return [image_thumbnail(images[int(data_rows[row])].numpy()) for row in rows]


def timeseries_previews(run_dir: Path, rows: np.ndarray) -> list[dict]:
    """Curves of a TS2Vec run's training series: ``train_embeddings.npy`` embeds, in order, the
    whole training split (``--eval-split test``) or the part the dev carve keeps (the default)."""
    import argparse

    from contrastkit.modalities.timeseries.cli import open_splits
    from contrastkit.modalities.timeseries.sources import open_timeseries_source

    options = _config(run_dir).get("command") or {}
    if not options.get("data"):
        raise DataError("config.yaml names no data")
    if options.get("eval_split") == "test":
        train = open_timeseries_source(options["data"], split="train")
    else:
        train, _, _ = open_splits(argparse.Namespace(data=options["data"], eval_split="dev", test_data=None))
    return [series_preview(train.x[int(row)]) for row in rows]


PREVIEW_READERS: dict[str, Callable[[Path, np.ndarray], list[dict]]] = {
    "image": image_previews, "timeseries": timeseries_previews}
