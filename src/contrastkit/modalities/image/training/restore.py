"""Rebuild a trained method from a checkpoint written by `fit`, without the original command line:
every checkpoint carries the run's configuration and the description of its data.

The checkpoint is read without running code (:mod:`contrastkit.core.safe_loading`); one that
carries code is refused unless ``trust_checkpoint=True`` (``--trust-checkpoint``), which runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.core.errors import DataError
from contrastkit.core.safe_loading import UnsafeFileError, read_torch_file, trust_alternative
from contrastkit.modalities.image.methods import build_method, image_builder
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.sources import open_image_source
from contrastkit.modalities.image.sources.streamed import open_streamed_images, stream_spec_path
from contrastkit.modalities.image.training.callbacks import embed_images
from contrastkit.modalities.image.training.module import CHECKPOINT_KEY

STREAMED_EMBED_CHUNK = 4096  # images decoded at once when embedding stream:PATH


def load_method(checkpoint_path: str | Path, *, trust_checkpoint: bool = False
                ) -> tuple[torch.nn.Module, FitConfig, DataInfo]:
    """(method in eval mode, its FitConfig, its DataInfo) of a `fit` checkpoint. ``trust_checkpoint=True``
    reads a checkpoint that carries code, and so runs that code."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise DataError(f"Checkpoint '{path}' does not exist. A run directory keeps it at checkpoints/last.ckpt.")
    try:
        checkpoint = read_torch_file(path, trust=trust_checkpoint, alternative=trust_alternative())
    except UnsafeFileError:
        raise
    except DataError as exc:  # a truncated or foreign file
        raise DataError(f"Checkpoint {exc} Is it a file written by 'contrastkit fit'?") from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise DataError(f"Checkpoint '{path}' was not written by 'contrastkit fit' (no '{CHECKPOINT_KEY}' entry).")
    described = checkpoint[CHECKPOINT_KEY]
    config = FitConfig(**described["config"])
    data = DataInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in described["data"].items()})
    method = build_method(config.method, config, data)
    state = {k.removeprefix("method."): v for k, v in checkpoint["state_dict"].items() if k.startswith("method.")}
    method.load_state_dict(state)
    return method.eval(), config, data


def embed_with_checkpoint(checkpoint_path: str | Path, data_spec: str, batch_size: int = 512,
                          device: str = "cpu", *, trust_checkpoint: bool = False, skip_unreadable: bool = False
                          ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(embeddings, labels when the data has them, the unreadable images left out) of ``data_spec``
    under a trained checkpoint. Images are resized to the checkpoint's image size and converted to
    its number of channels; ``stream:PATH`` decodes them a chunk at a time instead of all at once.
    ``skip_unreadable`` leaves out images that cannot be decoded (named in a warning and in the
    third value) instead of stopping. ``trust_checkpoint=True`` reads a checkpoint that carries code,
    and so runs that code."""
    method, _, data = load_method(checkpoint_path, trust_checkpoint=trust_checkpoint)
    stream = stream_spec_path(data_spec)
    if stream is not None:
        images = open_streamed_images(stream, image_size=data.image_size, channels=data.channels,
                                      skip_unreadable=skip_unreadable)
        chunks = (torch.from_numpy(images.read(np.arange(start, min(start + STREAMED_EMBED_CHUNK, len(images)))))
                  for start in range(0, len(images), STREAMED_EMBED_CHUNK))
        embeddings = torch.cat([embed_images(method.to(device), chunk, torch.device(device), batch_size)
                                for chunk in chunks]).numpy()
        return embeddings, images.labels, images.skipped
    source = open_image_source(data_spec, image_size=data.image_size, channels=data.channels,
                               skip_unreadable=skip_unreadable)
    embeddings = embed_images(method.to(device), source.images, torch.device(device), batch_size).numpy()
    labels = source.labels.numpy() if source.labels is not None else None
    return embeddings, labels, source.skipped
