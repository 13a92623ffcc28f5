"""What a `fit` run trains and evaluates on, whether the images are held in memory or streamed.

:func:`open_run_data` turns ``--data`` into a :class:`RunData`: the description of the data the
method is built for (:class:`DataInfo`), the Lightning training data, the online probe's images and
the rows embedded by the final evaluation. The two forms follow one protocol:

- rows: ``--limit N`` keeps the first N samples; a stratified ``--holdout`` share of the labelled
  ones (:func:`contrastkit.evaluation.splits.stratified_split`, seeded by ``--split-seed``, default ``--seed``) never trains;
- normalisation: the per-channel mean and std of the training part's pixels, computed exactly from
  pixel counts. Streaming counts a seeded sample of at most ``STATS_SAMPLE_SIZE`` training images,
  read in chunks (all of them when the training part is smaller, which gives the in-memory figures);
- online probe: at most ``PROBE_BANK_SIZE`` training and ``PROBE_QUERY_SIZE`` held-out images, the
  same seeded choice in both forms;
- final evaluation: in memory, every sample (training part first); streamed, a seeded sample of at
  most ``EVAL_TRAIN_SIZE`` training and ``EVAL_HOLDOUT_SIZE`` held-out samples (everything when the
  set is smaller), read once training is over.

So for a set that fits the bounds, a run from ``shards:DIR`` with ``--stream-order global`` sees the
same images, statistics, batches and probe as the in-memory run on the source the shards were
written from.

``stream:PATH`` (tar shards or a ``save_to_disk`` folder decoded batch by batch,
:mod:`contrastkit.modalities.image.training.streamed_sources`) follows the streamed protocol too
(:func:`streamed_run_data`), over the samples of the in-memory reading of PATH.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.splits import stratified_split
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.sources.shards import (
    ShardFolder,
    shard_spec_folder,
    streamed_channel_mean_std,
)
from contrastkit.modalities.image.sources.streamed import stream_spec_path
from contrastkit.modalities.image.training.data import InMemoryImages, StreamedShards

PROBE_BANK_SIZE = 5000
PROBE_QUERY_SIZE = 2000
STATS_SAMPLE_SIZE = 50_000
EVAL_TRAIN_SIZE = 20_000
EVAL_HOLDOUT_SIZE = 10_000


@dataclass
class RunData:
    """Everything `fit` needs from the data.

    ``read(rows)`` returns the uint8 images of global rows (in the source or the shard folder);
    ``labels`` covers every row of the set (None when unlabelled); ``eval_rows`` are the rows the
    final evaluation embeds, the first ``eval_train`` of them from the training part.
    """

    info: DataInfo
    datamodule: L.LightningDataModule
    read: Callable[[np.ndarray], torch.Tensor]
    labels: np.ndarray | None
    train_rows: np.ndarray
    holdout_rows: np.ndarray
    eval_rows: np.ndarray
    eval_train: int
    streamed: bool
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (--skip-unreadable)
    data_format: str = "in-memory"  # summary.json's data_format: in-memory, shards, or stream (stream:PATH)

    def probe_rows(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(bank rows, query rows) of the online probe; None without labels or held-out samples."""
        if self.labels is None or len(self.holdout_rows) == 0:
            return None
        rng = np.random.default_rng(0)
        bank = np.sort(rng.permutation(self.train_rows)[:PROBE_BANK_SIZE])
        queries = np.sort(rng.permutation(self.holdout_rows)[:PROBE_QUERY_SIZE])
        return bank, queries

    def describe(self) -> dict:
        """What summary.json records about the data."""
        described = {"data_format": self.data_format,
                     "n_samples_trained": len(self.train_rows), "n_samples_evaluated": len(self.eval_rows)}
        if self.skipped:
            described.update(unreadable_skipped=len(self.skipped), unreadable_files=self.skipped)
        return described


def open_run_data(config) -> RunData:
    """The data of ``config.data``: streamed for ``shards:DIR`` and ``stream:PATH``, else decoded into memory."""
    folder = shard_spec_folder(config.data)
    if folder is not None:
        return _streamed(config, folder)
    if stream_spec_path(config.data) is not None:
        # imported here: that module builds on this one's streamed_run_data
        from contrastkit.modalities.image.training.streamed_sources import open_streamed_run_data

        return open_streamed_run_data(config)
    return _in_memory(config)


def data_seed(config) -> int:
    """The seed of the data's fixed draws: ``--split-seed``, else ``--seed``."""
    return config.seed if config.split_seed is None else config.split_seed


def split_rows(labels: np.ndarray | None, rows: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) among ``rows``; everything trains when the data has no labels
    or holdout is 0."""
    if labels is None or holdout == 0:
        return rows, np.empty(0, dtype=np.int64)
    train, test = stratified_split(labels[rows], test_fraction=holdout, seed=seed)
    return rows[train], rows[test]


def seeded_sample(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``rows`` when there are at most ``size``, else a seeded sample of ``size`` of them (sorted)."""
    if len(rows) <= size:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=size, replace=False))


def _in_memory(config) -> RunData:
    source = open_image_source(config.data, image_size=config.image_size, skip_unreadable=config.skip_unreadable)
    rows = np.arange(len(source) if config.limit is None else min(config.limit, len(source)))
    labels = None if source.labels is None else source.labels.numpy()
    train_rows, holdout_rows = split_rows(labels, rows, config.holdout, data_seed(config))
    train = source.subset(train_rows)
    mean, std = train.channel_mean_std()
    info = DataInfo(channels=source.channels, image_size=source.image_size[0], mean=mean, std=std,
                    num_samples=len(train))
    return RunData(
        info=info,
        datamodule=InMemoryImages(train, config.batch_size, config.seed, config.num_workers,
                                  pseudo_labels=_pseudo_labels(config, train)),
        read=lambda wanted: source.images[torch.from_numpy(np.asarray(wanted, dtype=np.int64))],
        labels=labels, train_rows=train_rows, holdout_rows=holdout_rows,
        eval_rows=np.concatenate([train_rows, holdout_rows]), eval_train=len(train_rows), streamed=False,
        skipped=source.skipped,
    )


def _pseudo_labels(config, train) -> np.ndarray | None:
    """G-SimCLR's pseudo-labels of the training images (``--batch-sampler spread``), else None."""
    if config.batch_sampler != "spread":
        return None
    if (config.devices or 1) * (config.num_nodes or 1) > 1:
        raise ConfigError("--batch-sampler spread runs in one process for now: every process would have to "
                          "train the same denoising autoencoder bit for bit to agree on the batches. Drop "
                          "--devices/--num-nodes, or use --batch-sampler shuffle.")
    from contrastkit.modalities.image.sampling.pseudo_labels import pseudo_labels

    return pseudo_labels(train.images, seed=config.seed, **(config.extra.get("gsimclr") or {}))


def _streamed(config, root: Path) -> RunData:
    folder = ShardFolder(root)
    channels, height, width = folder.image_shape
    if config.image_size is not None and (config.image_size, config.image_size) != (height, width):
        raise ConfigError(
            f"--image-size {config.image_size}: the shards in '{root}' hold {height}x{width} images and are "
            f"not resized while streaming. Drop --image-size, or write the shards again with "
            f"'contrastkit shard --image-size {config.image_size}'.")
    if height != width:
        raise ConfigError(f"The shards in '{root}' hold {height}x{width} images; training needs square images. "
                          f"Write them again with 'contrastkit shard --image-size SIDE'.")
    return streamed_run_data(config, folder, lambda train_rows, train_labels: StreamedShards(
        root, train_rows, train_labels, config.batch_size, config.seed, config.stream_order, config.num_workers))


def streamed_run_data(config, folder, datamodule: Callable[[np.ndarray, np.ndarray | None], L.LightningDataModule],
                      data_format: str = "shards") -> RunData:
    """The RunData of a set read batch by batch: ``folder`` has ``image_shape``, ``labels`` (all rows,
    or None), ``read(rows)`` and a length (a :class:`ShardFolder`, or a streamed source's reader);
    ``datamodule(train rows, their labels)`` streams the training part."""
    if config.batch_sampler != "shuffle":
        raise ConfigError("--batch-sampler spread needs the images in memory (the pseudo-labels come from an "
                          "autoencoder trained on all of them); it is not available with a streamed --data "
                          "(shards:DIR, stream:PATH).")
    channels, height, _ = folder.image_shape
    rows = np.arange(len(folder) if config.limit is None else min(config.limit, len(folder)))
    # Labels are 8 bytes a sample: read once, while the pixels stay on disk.
    labels = None if folder.labels is None else np.array(folder.labels, dtype=np.int64)
    train_rows, holdout_rows = split_rows(labels, rows, config.holdout, data_seed(config))
    mean, std = streamed_channel_mean_std(folder, seeded_sample(train_rows, STATS_SAMPLE_SIZE, data_seed(config)))
    info = DataInfo(channels=channels, image_size=height, mean=mean, std=std, num_samples=len(train_rows))
    eval_train = seeded_sample(train_rows, EVAL_TRAIN_SIZE, data_seed(config))
    eval_holdout = seeded_sample(holdout_rows, EVAL_HOLDOUT_SIZE, data_seed(config))
    return RunData(
        info=info, datamodule=datamodule(train_rows, None if labels is None else labels[train_rows]),
        read=lambda wanted: torch.from_numpy(folder.read(np.asarray(wanted, dtype=np.int64))),
        labels=labels, train_rows=train_rows, holdout_rows=holdout_rows,
        eval_rows=np.concatenate([eval_train, eval_holdout]), eval_train=len(eval_train), streamed=True,
        data_format=data_format, skipped=list(getattr(folder, "skipped", [])),
    )
