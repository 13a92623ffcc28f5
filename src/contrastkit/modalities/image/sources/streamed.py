"""Tar shards and Hugging Face ``save_to_disk`` folders read where they lie, one batch at a time:
``contrastkit fit --data stream:PATH`` trains from them without decoding the set into memory and
without converting it (``contrastkit shard``) first.

PATH is any form of tar shards that ``--data`` accepts (a ``.tar``, a folder of them, a glob, a brace
list; uncompressed, since a sample is read by seeking to it) or a ``save_to_disk`` folder. The
samples, labels and class names are those of the in-memory reading of PATH (:mod:`.tar_shards`,
:mod:`.hf_arrow`), and each image is decoded when a batch asks for it by :mod:`.decoding`'s PIL
path with the same size and channel rule, so a streamed sample equals the in-memory one pixel for
pixel.

Opening indexes the set once:

- a tar file's members are listed from their headers (``tarfile`` gives each member's data offset
  and size; image bytes are not read); the small ``.cls``/``.json`` label members are read;
- an ``.arrow`` file (an Arrow IPC stream, memory-mapped) gives the row count of each record batch;
  the label column is read, the image column is not copied;
- then each image's *header* is read (the first :data:`HEADER_BYTES` of a tar member, a row's bytes
  of an arrow file), which gives its PIL mode and size without decoding it: the set is RGB when any
  image is in colour, else gray (as in memory), and without an image size every image must have the
  first one's size, which is checked now rather than in the middle of an epoch.

With ``skip_unreadable`` each image is decoded once instead, so that the unreadable ones are left
out (listed in ``skipped``, with the in-memory reader's warning) before training starts; without
it an image that cannot be decoded stops the run when a batch reaches it, naming the file.

Each tar file or ``.arrow`` file is a *shard*: global id ``i`` is the i-th kept sample in shard
order and ``counts[k]`` the number of kept samples of shard ``k``. The epoch order and its split
over processes are those of a shard folder (:mod:`.shards`): :func:`count_blocks` groups a training
part by shard for :func:`~.shards.block_shuffled_order`. At most ``OPEN_SHARDS`` shards are open at
a time, so the resident memory is a batch plus, for arrow files, the pages of two mapped files; the
per-sample index (offset, size, label: tens of bytes a sample) is all that grows with the set.

TIFF members are refused: the in-memory reading stretches each band by its percentiles over the
whole set, which are not known before the whole set has been read (``contrastkit shard`` does that
and writes uint8 shards to stream with ``shards:DIR``).
"""

from __future__ import annotations

import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.formats import LABEL_COLUMNS
from contrastkit.modalities.image.sources.decoding import (
    GRAYSCALE_MODES,
    EncodedImage,
    _common_size,
    _decode_with_pil,
    _opened,
    warn_skipped,
)
from contrastkit.modalities.image.sources.hf_arrow import (
    INFO_FILE,
    _encoded,
    _feature_type,
    _image_column,
    _labels,
    _read_json,
    _schema_features,
    hf_data_files,
    is_hf_dataset_folder,
)
from contrastkit.modalities.image.sources.images import _shards_name
from contrastkit.modalities.image.sources.pixels import check_channels, normalize_image_size
from contrastkit.modalities.image.sources.shards import OPEN_SHARDS, shard_blocks
from contrastkit.modalities.image.sources.tables import labels_and_names
from contrastkit.modalities.image.sources.tar_shards import (
    IMAGE_KEYS,
    LABEL_KEYS,
    _raw_label,
    expand_shard_spec,
    is_tar_spec,
    split_key,
    tar_files_in,
)

STREAM_PREFIX = "stream:"  # `--data stream:PATH` trains from tar shards or a save_to_disk folder as they are
# Bytes of a tar member read to learn its image's mode and size; PIL parses headers from a prefix
# (a JPEG's EXIF/ICC blocks can be long: a header that does not fit is read again from the whole file).
HEADER_BYTES = 1 << 16
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz")


def stream_spec_path(spec: str | Path) -> str | None:
    """The PATH of a ``stream:PATH`` data spec, or None for any other spec."""
    text = str(spec)
    if not text.startswith(STREAM_PREFIX):
        return None
    path = text[len(STREAM_PREFIX):]
    if not path:
        raise ConfigError(f"--data '{text}' names nothing: write stream:PATH with PATH tar shards (a .tar, a folder "
                          f"of them, a glob or a brace list) or a Hugging Face save_to_disk folder.")
    return path


def open_streamed_images(path: str | Path, image_size: int | tuple[int, int] | None = None,
                         channels: int | None = None, skip_unreadable: bool = False) -> StreamedImages:
    """The streamed reader of ``path`` (the PATH of ``stream:PATH``; see the module docstring)."""
    size = normalize_image_size(image_size)
    if check_channels(channels) not in (None, 1, 3):
        raise ConfigError(f"Streamed images are decoded to gray or RGB; channels={channels} is not available.")
    text = str(path)
    folder = Path(text).expanduser()
    if is_tar_spec(text) and not folder.is_dir():
        return TarStream(expand_shard_spec(text), _shards_name(text), size, channels, skip_unreadable)
    if folder.is_dir():
        if is_hf_dataset_folder(folder):
            return ArrowStream(folder, size, channels, skip_unreadable)
        files = tar_files_in(folder)
        if files:
            return TarStream(files, folder.resolve().name, size, channels, skip_unreadable)
    if not folder.exists() and not is_tar_spec(text):
        raise DataError(f"stream:{text}: '{text}' does not exist. Check the path.")
    raise DataError(f"stream:{text}: streaming reads tar shards (a .tar, a folder of them, a glob or a brace list) or "
                    f"a Hugging Face save_to_disk folder. Other formats: 'contrastkit shard --data {text} --out DIR' "
                    f"and then --data shards:DIR, or --data {text} to read it into memory.")


def count_blocks(rows: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """:func:`~.shards.shard_blocks` for shards of any sizes: the positions ``p`` of the global ids
    ``rows`` grouped by the shard that holds ``rows[p]`` (shard ``k`` holds the ids from
    ``counts[:k].sum()`` on)."""
    shard_of = np.searchsorted(np.cumsum(counts), np.asarray(rows, dtype=np.int64), side="right")
    return shard_blocks(shard_of, 1, len(counts))  # ids already divided into shards: a "shard size" of 1


class StreamedImages:
    """Random access to the images of a set of shards, decoded on demand: ``read(global_ids)`` ->
    uint8 (n, C, H, W); ``labels`` (int64 array, or None), ``class_names``, ``counts`` (kept samples per
    shard), ``image_shape``, ``skipped``. The interface of :class:`~.shards.ShardFolder` that training
    reads.

    Subclasses list the *candidate* samples (every sample with an image, before unreadable ones
    are left out) and give :meth:`_item` (the encoded image of candidate ``j``) and :meth:`_header_item`
    (enough of it for PIL to read the header).
    """

    def __init__(self, name: str, root: Path, shard_of: np.ndarray, labels: list[int] | None,
                 class_names: list[str] | None, size: tuple[int, int] | None, channels: int | None,
                 skip_unreadable: bool, num_shards: int):
        self.name, self.root, self.class_names = name, root, class_names
        self.size, self.pil_channels = size, channels
        self._open: OrderedDict[int, object] = OrderedDict()
        kept, colour, shape, skipped = self._survey(len(shard_of), skip_unreadable)
        if not kept:
            raise DataError(f"None of the {len(shard_of)} images of '{name}' could be read: {skipped[0]}")
        if skipped:
            warn_skipped(name, skipped, stacklevel=3)
        self.skipped = skipped
        self._candidates = np.asarray(kept, dtype=np.int64)  # global id -> candidate
        self.counts = np.bincount(np.asarray(shard_of)[self._candidates], minlength=num_shards).astype(np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)[self._candidates]
        self.image_shape = (channels or (3 if colour else 1), *shape)
        self._first_name = self._header_item(kept[0]).name

    def __len__(self) -> int:
        return len(self._candidates)

    def _survey(self, count: int, skip_unreadable: bool):
        """(kept candidates, whether any is in colour, the images' (H, W), 'name: reason' of those left
        out). Without a size every image must have the first one's (H, W), the in-memory rule."""
        kept, skipped = [], []
        colour, first = False, None
        for j in range(count):
            item = self._header_item(j)
            if item.is_tiff:
                raise DataError(f"'{item.name}' is a TIFF image: TIFF sets are scaled per band over the whole set, "
                                f"which a stream cannot know in advance. Use --data without stream: (in memory), or "
                                f"'contrastkit shard' and --data shards:DIR.")
            try:
                if skip_unreadable:  # decode it all: a truncated file can have a readable header
                    array = _decode_with_pil(self._item(j), self.size, self.pil_channels)
                    is_colour, shape = array.ndim == 3, array.shape[:2]
                else:
                    is_colour, shape = self._header(j, item)
            except DataError as err:
                if not skip_unreadable:
                    raise
                skipped.append(f"{item.name}: {err.__cause__ or err}")
                continue
            if first is None:
                first = (tuple(shape), item.name)
            elif self.size is None and tuple(shape) != first[0]:
                _common_size([first[0], shape], [first[1], item.name], self.name)  # raises, naming both
            kept.append(j)
            colour = colour or is_colour
        return kept, colour, (self.size or (first[0] if first else None)), skipped

    def _header(self, j: int, item: EncodedImage) -> tuple[bool, tuple[int, int]]:
        """(whether the image decodes in colour, its (H, W)) from its header: PIL's mode and size."""
        try:
            with Image.open(_opened(item)) as image:
                mode, (width, height) = image.mode, image.size
        except Exception:  # noqa: BLE001 - any failure: decode the whole file, which raises the reader's DataError
            array = _decode_with_pil(self._item(j), None, self.pil_channels)
            return array.ndim == 3, array.shape[:2]
        gray = self.pil_channels == 1 or (self.pil_channels is None and mode in GRAYSCALE_MODES)
        return not gray, (height, width)

    def read(self, global_ids: np.ndarray) -> np.ndarray:
        """Images of ``global_ids`` (in that order), decoded now."""
        global_ids = np.asarray(global_ids, dtype=np.int64)
        out = np.empty((len(global_ids), *self.image_shape), dtype=np.uint8)
        planes = out.transpose(0, 2, 3, 1)  # (n, H, W, C) view of the same memory
        for i, candidate in enumerate(self._candidates[global_ids]):
            item = self._item(int(candidate))
            array = _decode_with_pil(item, self.size, self.pil_channels)
            if array.shape[:2] != self.image_shape[1:]:
                _common_size([self.image_shape[1:], array.shape[:2]], [self._first_name, item.name], self.name)
            if array.ndim == 3 and self.image_shape[0] == 1:
                raise DataError(f"'{item.name}' decodes in colour, but its header said gray; the file changed since "
                                f"'{self.name}' was opened.")
            planes[i] = array if array.ndim == 3 else array[:, :, None]  # gray broadcasts to RGB
        return out

    def _opened_shard(self, k: int, opener):
        """Shard ``k``'s open handle (``opener(k)`` opens it); the least recently used beyond
        ``OPEN_SHARDS`` is dropped, which closes or unmaps it."""
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        self._open[k] = opener(k)
        while len(self._open) > OPEN_SHARDS:
            _, dropped = self._open.popitem(last=False)
            close = getattr(dropped, "close", None)
            if close is not None:
                close()
        return self._open[k]

    def __getstate__(self) -> dict:
        # Loader workers get the index, not the parent's open files: each opens its own.
        return {**self.__dict__, "_open": OrderedDict()}

    def _item(self, j: int) -> EncodedImage:
        """The encoded image of candidate ``j``: each subclass reads it from its own files."""
        raise NotImplementedError(f"{type(self).__name__} must say how to read a sample (_item).")

    def _header_item(self, j: int) -> EncodedImage:
        return self._item(j)


class TarStream(StreamedImages):
    """Webdataset-style tar shards (:mod:`.tar_shards`' samples, keys and labels), read by seeking."""

    def __init__(self, files: list[Path], name: str, size: tuple[int, int] | None, channels: int | None,
                 skip_unreadable: bool = False):
        if not files:
            raise DataError(f"'{name}' names no tar shards.")
        compressed = [f for f in files if f.name.lower().endswith(COMPRESSED_TAR_SUFFIXES)]
        if compressed:
            raise DataError(f"'{compressed[0]}' is compressed: a stream reads a sample by seeking to it, which a "
                            f"compressed tar does not allow. Decompress the shards (gunzip), or read them into "
                            f"memory with --data without stream:.")
        self.files = list(files)
        shard_of, offsets, sizes, self._names, raw_labels = [], [], [], [], []
        for k, file in enumerate(self.files):
            for member_name, image, label in _index_tar(file):
                shard_of.append(k)
                offsets.append(image.offset_data)
                sizes.append(image.size)
                self._names.append(member_name)
                raw_labels.append(label)
        if not shard_of:
            raise DataError(f"The tar shards of '{name}' hold no images ({', '.join(IMAGE_KEYS)} members).")
        labelled = sum(label is not None for label in raw_labels)
        if labelled and labelled != len(raw_labels):
            missing = next(n for n, label in zip(self._names, raw_labels) if label is None)
            raise DataError(f"{len(raw_labels) - labelled} of the {len(raw_labels)} samples have no label (.cls or "
                            f".json), e.g. '{missing}'. Label every sample, or none for an unlabelled set.")
        labels, class_names = (None, None) if not labelled else labels_and_names(
            [str(v) for v in raw_labels], f"labels of the tar shards '{name}'")
        self._shard_of = np.asarray(shard_of, dtype=np.int32)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._sizes = np.asarray(sizes, dtype=np.int64)
        root = files[0] if len(files) == 1 else files[0].parent
        super().__init__(name, root, self._shard_of, labels, class_names, size, channels, skip_unreadable,
                         len(self.files))

    def _bytes(self, j: int, limit: int | None = None) -> bytes:
        handle = self._opened_shard(int(self._shard_of[j]), lambda k: open(self.files[k], "rb"))
        handle.seek(int(self._offsets[j]))
        return handle.read(int(self._sizes[j]) if limit is None else min(limit, int(self._sizes[j])))

    def _item(self, j: int) -> EncodedImage:
        return EncodedImage(f"{self.files[self._shard_of[j]]}:{self._names[j]}", self._bytes(j))

    def _header_item(self, j: int) -> EncodedImage:
        return EncodedImage(f"{self.files[self._shard_of[j]]}:{self._names[j]}", self._bytes(j, HEADER_BYTES))


def _index_tar(file: Path) -> list[tuple[str, tarfile.TarInfo, object]]:
    """(``key.ext`` of the image, its member, its raw label or None) of each sample of one tar file
    that has an image, in the order of :func:`.tar_shards.read_tar_samples`: a sample's place is that
    of its first image or label member, and a later member of the same key and extension wins."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    label_bytes: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(file, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, extension = split_key(member.name)
                if extension in IMAGE_KEYS:
                    samples.setdefault(key, {})[extension] = member
                elif extension in LABEL_KEYS:
                    samples.setdefault(key, {})
                    label_bytes.setdefault(key, {})[extension] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"Cannot read tar shard '{file}' ({err}); it is damaged or not a tar file.") from err
    indexed = []
    for key, images in samples.items():
        image_key = next((k for k in IMAGE_KEYS if k in images), None)
        if image_key is not None:
            indexed.append((f"{key}.{image_key}", images[image_key], _raw_label(label_bytes.get(key, {}),
                                                                                f"{file}:{key}")))
    return indexed


class ArrowStream(StreamedImages):
    """A ``save_to_disk`` folder (:mod:`.hf_arrow`'s image column, labels and class names); each
    ``.arrow`` file is a shard, memory-mapped while its rows are read."""

    def __init__(self, folder: Path, size: tuple[int, int] | None, channels: int | None,
                 skip_unreadable: bool = False):
        self.folder = Path(folder)
        self.files = hf_data_files(self.folder)
        info = _read_json(self.folder / INFO_FILE) if (self.folder / INFO_FILE).is_file() else {}
        schema, self.features, batch_rows, label_values = None, {}, [], {}
        for file in self.files:
            table = _read_arrow(file)  # zero-copy over the mapped file: nothing is read but what is used
            if schema is None:
                schema, self.features = table.schema, info.get("features") or _schema_features(table.schema)
            batch_rows.append([len(batch) for batch in table.to_batches()])
            for name in schema.names:
                if _feature_type(self.features, name) == "ClassLabel" or name.lower() in LABEL_COLUMNS:
                    label_values.setdefault(name, []).extend(table.column(name).to_pylist())
            del table
        # hf_arrow picks its columns by name and feature type: the image column is never copied, and
        # only the columns that can be the label are read (the others stand as empty lists).
        columns = {name: label_values.get(name, []) for name in schema.names}
        self.image_column = _image_column(columns, self.features, self.folder)
        labels, class_names = _labels(columns, self.features, self.folder, self.image_column)
        self._batch_starts = [np.concatenate([[0], np.cumsum(rows)]).astype(np.int64) for rows in batch_rows]
        counts = [int(starts[-1]) for starts in self._batch_starts]
        self._shard_of = np.repeat(np.arange(len(self.files), dtype=np.int32), counts)
        self._file_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if not len(self._shard_of):
            raise DataError(f"'{self.folder}' holds no rows.")
        super().__init__(self.folder.resolve().name, self.folder, self._shard_of, labels, class_names, size, channels,
                         skip_unreadable, len(self.files))

    def _item(self, j: int) -> EncodedImage:
        k = int(self._shard_of[j])
        row = j - int(self._file_starts[k])
        batches = self._opened_shard(k, lambda shard: _MappedBatches(self.files[shard], self.image_column))
        value = batches.value(row, self._batch_starts[k])
        return _encoded(value, self.folder, f"{self.folder}: row {j} of '{self.image_column}'")


class _MappedBatches:
    """The image column of one memory-mapped ``.arrow`` file, batch by batch (zero-copy)."""

    def __init__(self, file: Path, column: str):
        import pyarrow as pa

        self.source = pa.memory_map(str(file))
        self.batches = [batch.column(column) for batch in pa.ipc.open_stream(self.source)]

    def value(self, row: int, starts: np.ndarray):
        b = int(np.searchsorted(starts, row, side="right")) - 1
        return self.batches[b][row - int(starts[b])].as_py()

    def close(self) -> None:
        self.batches = []
        self.source.close()


def _read_arrow(file: Path):
    import pyarrow as pa

    try:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"Cannot read '{file}' as an Arrow stream file ({err}); copy it again.") from err


__all__ = ["STREAM_PREFIX", "ArrowStream", "StreamedImages", "TarStream", "count_blocks", "open_streamed_images",
           "stream_spec_path"]
