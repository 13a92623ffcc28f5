"""``contrastkit fit --data stream:PATH``: training straight from tar shards or a Hugging Face
``save_to_disk`` folder, decoding each batch when it is needed
(:mod:`contrastkit.modalities.image.sources.streamed`).

The run follows the protocol of ``shards:DIR`` (:mod:`.run_data`): the same held-out split, the
normalisation statistics counted exactly on a seeded sample of at most ``STATS_SAMPLE_SIZE``
training images (decoded in chunks, every training image when there are fewer), the same bounded
probe and final-evaluation samples, decoded when they are needed; and the same epoch orders
(``--stream-order shards``: the tar or arrow files in a random order, the samples of each in a random
order; ``global``: the in-memory order), cut into global batches of which each process takes its
slice. Images are resized to ``--image-size`` while decoding; without it every image must have the
first one's size, and it must be square.
"""

from __future__ import annotations

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from contrastkit.core.errors import ConfigError
from contrastkit.engine.data import EpochShuffleSampler, batch_loader
from contrastkit.modalities.image.sources.streamed import (
    StreamedImages,
    count_blocks,
    open_streamed_images,
    stream_spec_path,
)
from contrastkit.modalities.image.training.data import EPOCH_ORDERS, ShardBlockSampler, ShardedSamples
from contrastkit.modalities.image.training.run_data import RunData, streamed_run_data


class StreamedSourceImages(L.LightningDataModule):
    """The training part ``rows`` (global ids, sorted) of a streamed source as Lightning training
    data: batches ``{"image", "index", "label"}`` decoded when the loader asks for them.

    Args:
        images: the streamed source (:func:`~contrastkit.modalities.image.sources.streamed.open_streamed_images`).
        labels: the labels of ``rows``, or None.
        order: ``shards`` (the source's files in a random order, then their samples) or ``global``.
    """

    def __init__(self, images: StreamedImages, rows: np.ndarray, labels: np.ndarray | None, batch_size: int,
                 seed: int, order: str = "shards", num_workers: int = 0):
        super().__init__()
        if order not in EPOCH_ORDERS:
            raise ConfigError(f"--stream-order '{order}' is not valid; choose one of: {', '.join(EPOCH_ORDERS)}.")
        self.samples = ShardedSamples(images, rows, labels)  # ShardedSamples reads through images.read
        self.batch_size, self.seed, self.order, self.num_workers = batch_size, seed, order, num_workers

    def make_sampler(self, rank: int, num_replicas: int) -> EpochShuffleSampler:
        if self.order == "global":
            return EpochShuffleSampler(len(self.samples), self.batch_size, self.seed, rank, num_replicas)
        blocks = count_blocks(self.samples.rows, self.samples.folder.counts)
        return ShardBlockSampler(blocks, self.batch_size, self.seed, rank, num_replicas)

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.samples, self.make_sampler(self.trainer.global_rank, self.trainer.world_size),
                            self.num_workers)


def open_streamed_run_data(config) -> RunData:
    """The RunData of ``config.data = "stream:PATH"`` (see the module docstring)."""
    path = stream_spec_path(config.data)
    images = open_streamed_images(path, image_size=config.image_size, skip_unreadable=config.skip_unreadable)
    _, height, width = images.image_shape
    if height != width:
        raise ConfigError(f"The images of '{path}' are {height}x{width} (HxW); training needs square images. "
                          f"Pass --image-size SIDE to resize them while decoding.")
    return streamed_run_data(config, images, lambda train_rows, train_labels: StreamedSourceImages(
        images, train_rows, train_labels, config.batch_size, config.seed, config.stream_order, config.num_workers),
        data_format="stream")
