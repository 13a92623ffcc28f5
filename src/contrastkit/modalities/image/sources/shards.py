"""Image sets larger than memory: fixed-size memory-mapped shards and a streaming batch reader.

A shard folder holds::

    index.json            what is there: sample count, image shape, the shards and their counts
    shard-00000.npy       uint8 (n_0, C, H, W), n_k = shard_size except in the last shard
    shard-00001.npy       ...
    labels.npy            int64 (N,), when the set has labels

Sample ``i`` (its *global id*) lives in shard ``i // shard_size`` at row ``i % shard_size``.
``index.json`` is written last, so a conversion that was interrupted is not mistaken for a
complete one.

:class:`ShardedImages` streams batches from such a folder without reading the whole set: shards
are memory-mapped one or two at a time and unmapped once consumed, so the resident memory is
bounded by about two shards plus a batch, whatever the set's size.

Order of an epoch (deterministic from ``(seed, epoch)``): the shards in a random order, and the
rows of each shard in a random order; consecutive *global batches* of ``batch_size * world_size``
samples are cut from that stream and process ``rank`` takes the slice
``[rank * batch_size, (rank + 1) * batch_size)`` of each. So the processes see disjoint samples,
the same number of batches, and their batches concatenated in rank order are exactly the batch
that one process with ``batch_size * world_size`` would see (the contract of the in-memory
sampler, :class:`contrastkit.modalities.image.training.data.EpochShuffleSampler`). Shuffling within shards only
mixes samples less than a global shuffle (a batch holds samples of one or two shards): write
shards from shuffled data when the source is sorted by class.

Training (``contrastkit fit --data shards:DIR``) uses the same pieces on the training part of a
folder (held-out samples left out): :func:`shard_blocks` groups its samples by shard,
:func:`block_shuffled_order` gives the epoch order, and
:class:`contrastkit.modalities.image.training.data.ShardedSamples` reads the batches; the normalisation statistics
come from :func:`streamed_channel_mean_std`.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from contrastkit.core.errors import ConfigError, DataError

FORMAT = "contrastkit-image-shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
LABELS_FILE = "labels.npy"
DEFAULT_SHARD_SIZE = 10_000
OPEN_SHARDS = 2  # a global batch spans at most two shards when batch <= shard_size
SPEC_PREFIX = "shards:"  # `--data shards:DIR` trains from a shard folder without loading it
STATS_CHUNK = 4096  # images read at once while counting pixel values ...
STATS_CHUNK_BYTES = 64 << 20  # ... and at most this many bytes of them (large images, decoded streams)


def shard_spec_folder(spec: str | Path) -> Path | None:
    """The folder of a ``shards:DIR`` data spec, or None for any other spec."""
    text = str(spec)
    if not text.startswith(SPEC_PREFIX):
        return None
    folder = text[len(SPEC_PREFIX):]
    if not folder:
        raise ConfigError(f"--data '{text}' names no folder: write shards:DIR with DIR a folder written by "
                          f"'contrastkit shard'.")
    return Path(folder).expanduser()


def shard_file_name(shard: int) -> str:
    return f"shard-{shard:05d}.npy"


def write_shards(
    chunks: Iterable[tuple[np.ndarray, np.ndarray | None]],
    out_dir: str | Path,
    num_samples: int,
    image_shape: tuple[int, int, int],
    shard_size: int = DEFAULT_SHARD_SIZE,
    labelled: bool = False,
    name: str = "images",
    class_names: list[str] | None = None,
) -> Path:
    """Write ``num_samples`` images, given as consecutive chunks ``(images uint8 (n, C, H, W),
    labels (n,) or None)``, into a shard folder; returns its ``index.json``.

    Only one chunk is held at a time (the shards are memory-mapped for writing), so a generator
    of chunks converts a set of any size.
    """
    out = Path(out_dir)
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}.")
    if (out / INDEX_FILE).exists():
        raise ConfigError(f"'{out}' already holds shards ({INDEX_FILE}); nothing is overwritten. "
                          f"Choose another output folder.")
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(s) for s in image_shape)
    counts = [min(shard_size, num_samples - start) for start in range(0, num_samples, shard_size)]
    labels = (np.lib.format.open_memmap(out / LABELS_FILE, mode="w+", dtype=np.int64, shape=(num_samples,))
              if labelled else None)
    written = 0
    shard, shard_array = -1, None
    for images, chunk_labels in chunks:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != shape:
            raise DataError(f"Shard writer: chunk of dtype {images.dtype} and shape {images.shape}, expected "
                            f"uint8 (n, {', '.join(map(str, shape))}).")
        if written + len(images) > num_samples:
            raise DataError(f"Shard writer: more than the announced {num_samples} samples were given.")
        if labels is not None:
            if chunk_labels is None or len(chunk_labels) != len(images):
                raise DataError("Shard writer: a labelled set needs one label per image in every chunk.")
            labels[written : written + len(images)] = chunk_labels
        offset = 0
        while offset < len(images):  # a chunk may straddle shard boundaries
            position = written + offset
            if position // shard_size != shard:
                if shard_array is not None:
                    shard_array.flush()
                shard = position // shard_size
                shard_array = np.lib.format.open_memmap(out / shard_file_name(shard), mode="w+", dtype=np.uint8,
                                                        shape=(counts[shard], *shape))
            row = position - shard * shard_size
            take = min(len(images) - offset, counts[shard] - row)
            shard_array[row : row + take] = images[offset : offset + take]
            offset += take
        written += len(images)
    if written != num_samples:
        raise DataError(f"Shard writer: {written} samples were given, {num_samples} announced.")
    if shard_array is not None:
        shard_array.flush()
    if labels is not None:
        labels.flush()
    del shard_array, labels
    index = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "num_samples": num_samples,
        "image_shape": list(shape),
        "dtype": "uint8",
        "shard_size": shard_size,
        "shards": [{"file": shard_file_name(k), "count": count} for k, count in enumerate(counts)],
        "labels": LABELS_FILE if labelled else None,
        "class_names": class_names,
    }
    temporary = out / f".{INDEX_FILE}.tmp"
    temporary.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(temporary, out / INDEX_FILE)
    return out / INDEX_FILE


def shard_image_source(spec: str | Path, out_dir: str | Path, shard_size: int = DEFAULT_SHARD_SIZE,
                       image_size: int | None = None, channels: int | None = None,
                       chunk_size: int = 4096, skip_unreadable: bool = False) -> Path:
    """`contrastkit shard`: read the image set ``spec`` (any form of ``open_image_source``) and
    write it as shards into ``out_dir``; returns the ``index.json``.

    The reader decodes the source into memory first; sets that do not fit should be written with
    :func:`write_shards` from a generator of chunks instead.
    """
    from contrastkit.modalities.image.sources import open_image_source

    source = open_image_source(spec, image_size=image_size, channels=channels, skip_unreadable=skip_unreadable)
    images = source.images.numpy()
    labels = source.labels.numpy() if source.labels is not None else None
    chunks = ((images[i : i + chunk_size], None if labels is None else labels[i : i + chunk_size])
              for i in range(0, len(images), chunk_size))
    return write_shards(chunks, out_dir, len(images), images.shape[1:], shard_size, labelled=labels is not None,
                        name=source.name, class_names=list(source.class_names) if source.class_names else None)


class ShardFolder:
    """Random access to a shard folder: ``read(global_ids)`` -> uint8 images, ``labels`` (memory-
    mapped int64, or None). At most ``open_shards`` shards are mapped at a time (least recently
    used ones are unmapped), which bounds the resident memory."""

    def __init__(self, root: str | Path, open_shards: int = OPEN_SHARDS):
        self.root = Path(root)
        index_path = self.root / INDEX_FILE
        if not index_path.is_file():
            raise DataError(f"'{index_path}' does not exist: a shard folder is written by 'contrastkit shard' "
                            f"(an interrupted conversion has no {INDEX_FILE}; run it again).")
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT:
            raise DataError(f"'{index_path}' is not the index of a contrastkit shard folder.")
        self.index = index
        self.num_samples = int(index["num_samples"])
        self.image_shape = tuple(index["image_shape"])
        self.shard_size = int(index["shard_size"])
        self.counts = np.array([entry["count"] for entry in index["shards"]], dtype=np.int64)
        self.files = [self.root / entry["file"] for entry in index["shards"]]
        self.labels = np.load(self.root / index["labels"], mmap_mode="r") if index["labels"] else None
        self.open_shards = open_shards
        self._mapped: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.num_samples

    def shard(self, k: int) -> np.ndarray:
        if k in self._mapped:
            self._mapped.move_to_end(k)
            return self._mapped[k]
        array = np.load(self.files[k], mmap_mode="r")
        if array.shape != (self.counts[k], *self.image_shape):
            raise DataError(f"Shard '{self.files[k]}' has shape {array.shape}, but {INDEX_FILE} says "
                            f"{(int(self.counts[k]), *self.image_shape)}; the folder is damaged.")
        self._mapped[k] = array
        while len(self._mapped) > self.open_shards:
            self._mapped.popitem(last=False)  # dropping the last reference unmaps the file
        return array

    def read(self, global_ids: np.ndarray) -> np.ndarray:
        """Images of ``global_ids`` (in that order), copied out of the shards."""
        global_ids = np.asarray(global_ids, dtype=np.int64)
        out = np.empty((len(global_ids), *self.image_shape), dtype=np.uint8)
        shards = global_ids // self.shard_size
        for k in np.unique(shards):
            where = np.flatnonzero(shards == k)
            out[where] = self.shard(int(k))[global_ids[where] - k * self.shard_size]
        return out


def shard_blocks(rows: np.ndarray, shard_size: int, num_shards: int) -> list[np.ndarray]:
    """Positions ``p`` of a list of global ids ``rows``, grouped by the shard that holds
    ``rows[p]``: block ``k`` lists, in increasing order, the positions whose sample lives in shard
    ``k`` (empty when none does). A training part that leaves out held-out samples is such a list."""
    shard_of = np.asarray(rows, dtype=np.int64) // shard_size
    positions = np.argsort(shard_of, kind="stable")
    return np.split(positions, np.cumsum(np.bincount(shard_of, minlength=num_shards))[:-1])


def block_shuffled_order(blocks: list[np.ndarray], seed: int, epoch: int) -> Iterator[np.ndarray]:
    """One epoch's order, one block at a time: the blocks in a random order and the entries of each
    block in a random order. Deterministic from ``(seed, epoch)``; seeded by the pair rather than by
    ``seed + epoch`` so that (seed 1, epoch 0) and (seed 0, epoch 1) differ."""
    rng = np.random.default_rng((seed, epoch))
    for k in rng.permutation(len(blocks)):
        yield blocks[k][rng.permutation(len(blocks[k]))]


def streamed_channel_mean_std(folder: ShardFolder, rows: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std, in [0, 1] units, of the pixels of samples ``rows``,
    read ``STATS_CHUNK`` images (at most ``STATS_CHUNK_BYTES``) at a time (memory: one chunk, whatever
    the number of rows). ``folder`` is a :class:`ShardFolder` or any reader with its ``read``,
    ``image_shape`` and ``root`` (a streamed source: :mod:`.streamed`).

    Exact, like :meth:`contrastkit.modalities.image.sources.ImageSource.channel_mean_std` (both end in
    :func:`~contrastkit.modalities.image.sources.pixels.histogram_mean_std`), so the figures of the same images are
    equal bit for bit, whichever way they were read.
    """
    from contrastkit.modalities.image.sources.pixels import histogram_mean_std, pixel_histogram

    rows = np.sort(np.asarray(rows, dtype=np.int64))  # shard by shard: sequential reads
    if len(rows) == 0:
        raise DataError(f"No samples of '{folder.root}' to compute the pixel mean and std from.")
    counts = torch.zeros((folder.image_shape[0], 256), dtype=torch.int64)
    chunk = max(1, min(STATS_CHUNK, STATS_CHUNK_BYTES // int(np.prod(folder.image_shape))))
    for start in range(0, len(rows), chunk):
        counts += pixel_histogram(torch.from_numpy(folder.read(rows[start : start + chunk])))
    return histogram_mean_std(counts, f"The images of '{folder.root}'")


def epoch_order(counts: np.ndarray, shard_size: int, seed: int, epoch: int) -> Iterator[np.ndarray]:
    """The global ids of one epoch over a whole shard folder, one shard at a time
    (:func:`block_shuffled_order` of the shards' rows)."""
    blocks = [k * shard_size + np.arange(int(count), dtype=np.int64) for k, count in enumerate(counts)]
    return block_shuffled_order(blocks, seed, epoch)


def global_batches(order: Iterable[np.ndarray], global_batch: int, drop_last: bool) -> Iterator[np.ndarray]:
    """Consecutive global batches of ``global_batch`` entries cut from a stream of arrays; the
    incomplete last one is dropped or yielded per ``drop_last``."""
    pending = np.empty(0, dtype=np.int64)
    for part in order:
        pending = np.concatenate([pending, part])
        full = len(pending) // global_batch * global_batch
        for start in range(0, full, global_batch):
            yield pending[start : start + global_batch]
        pending = pending[full:]
    if len(pending) and not drop_last:
        yield pending


class ShardedImages(IterableDataset):
    """Batches ``{"index", "image", "label"}`` of one process, streamed from a shard folder.

    ``index`` holds global ids (int64), ``image`` uint8 (B, C, H, W), ``label`` int64 (-1 for an
    unlabelled set) — the batches of the in-memory training data. Call :meth:`set_epoch` before
    each epoch. With ``drop_last`` (the default, needed by multi-process training so that every
    process takes the same number of steps) the final incomplete global batch is skipped;
    without it, it is shared out in rank order (single-process evaluation).

    Use it directly, or in a ``DataLoader(dataset, batch_size=None)`` without workers: batches are
    already whole, and reading memory-mapped rows is cheap next to a training step.
    """

    def __init__(self, root: str | Path, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True):
        super().__init__()
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"ShardedImages needs batch_size >= 1 and 0 <= rank < world_size, got "
                              f"batch_size={batch_size}, rank={rank}, world_size={world_size}.")
        self.folder = ShardFolder(root)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.drop_last = drop_last
        self.epoch = 0
        if drop_last and self.global_batch_size > len(self.folder):
            raise ConfigError(f"Batch size {batch_size} x {world_size} processes is larger than the "
                              f"{len(self.folder)} samples in '{self.folder.root}'; lower the batch size.")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(len(self.folder), self.global_batch_size)
        return full + (1 if rest > self.rank * self.batch_size and not self.drop_last else 0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise ConfigError("ShardedImages yields whole batches itself: use it with num_workers=0 "
                              "(several workers would each yield the whole epoch).")
        for ids in self._global_batches():
            mine = ids[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            if len(mine):
                yield self._batch(mine)

    def _global_batches(self) -> Iterator[np.ndarray]:
        order = epoch_order(self.folder.counts, self.folder.shard_size, self.seed, self.epoch)
        return global_batches(order, self.global_batch_size, self.drop_last)

    def _batch(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        labels = self.folder.labels
        return {
            "index": torch.from_numpy(ids.copy()),
            "image": torch.from_numpy(self.folder.read(ids)),
            "label": torch.from_numpy(np.asarray(labels[ids], dtype=np.int64)) if labels is not None
            else torch.full((len(ids),), -1, dtype=torch.int64),
        }
