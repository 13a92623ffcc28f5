"""Embed a collection (or one query) with the encoder of a run, for the search index.

:func:`run_encoder` reads what a run folder holds and returns an encoder with one interface:

- ``read_collection(data) -> Collection``: the samples of ``data`` with stable ids;
- ``embed(collection, rows) -> (len(rows), d)`` float32: embeddings of the chosen rows only;
- ``read_query(text) -> Collection`` of one sample (an image file; a text string).

=====================================================  ======  ==========================================
run                                                    what    ids of ``data``
=====================================================  ======  ==========================================
image run folder (``checkpoints/last.ckpt``) or that   image   an image folder: the files' paths relative
``.ckpt``; an image export (``contrastkit export``)            to it; IDX, ``.npz``, digits: row numbers
text run folder (``encoder/``), a text model folder,   text    a BEIR folder or ``.jsonl[.gz]`` corpus:
or ``minilm``                                                  ``_id`` (title + text embedded); lines
                                                               (``.txt[.gz]``): row numbers
=====================================================  ======  ==========================================

Pairs, graph, time-series and tabular runs embed samples that their own modality reads (a tabular
run reloaded with ``contrastkit.load`` embeds a table through its saved scaling); their embeddings go into an index with :meth:`SearchIndex.add` (``contrastkit index --embeddings``).
An image query is decoded as the folder reader decodes the collection (PIL: to the run's channels,
bilinear resize to its size), so an indexed file given as a query has its indexed embedding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.loading import run_kind

EMBED_BATCH_SIZE = 256


@dataclass(frozen=True)
class Collection:
    """Samples and their ids: ``items`` is a uint8 image tensor (N, C, H, W) or a list of N texts."""

    ids: list[str]
    items: Any

    def __len__(self) -> int:
        return len(self.ids)


class ImageRunEncoder:
    """``encode(uint8 (B, C, H, W)) -> (B, d)`` of an image run, with the size and channels it was
    trained on."""

    modality = "image"

    def __init__(self, encode: Any, image_size: int, channels: int, batch_size: int = EMBED_BATCH_SIZE):
        self.encode, self.image_size, self.channels, self.batch_size = encode, image_size, channels, batch_size

    def read_collection(self, data: str) -> Collection:
        from contrastkit.modalities.image.sources import open_image_source
        from contrastkit.modalities.image.sources.image_folder import list_image_files

        source = open_image_source(data, image_size=self.image_size, channels=self.channels)
        ids = [str(row) for row in range(len(source))]
        if source.root is not None and source.root.is_dir():  # an image folder, read in sorted file order
            try:
                ids = [file.relative_to(source.root).as_posix() for file in list_image_files(source.root)[0]]
            except DataError:  # a Hugging Face or tar-shard folder: its rows are the ids
                pass
        return Collection(ids, source.images)

    @torch.inference_mode()
    def embed(self, collection: Collection, rows: Any) -> np.ndarray:
        rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        chunks = [self.encode(collection.items[rows[i:i + self.batch_size]]).float().cpu()
                  for i in range(0, len(rows), self.batch_size)]
        return torch.cat(chunks).numpy() if chunks else np.empty((0, 0), dtype=np.float32)

    def read_query(self, query: str) -> Collection:
        from PIL import Image, UnidentifiedImageError

        path = Path(query)
        if not path.is_file():
            raise DataError(f"The query '{query}' is not a file: an image index is searched with an image file "
                            f"or a .npy file of embeddings.")
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.channels == 1 else "RGB")
                if image.size != (self.image_size, self.image_size):
                    image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"Cannot read the query image '{path}': {error}.") from None
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return Collection([path.name], torch.from_numpy(np.ascontiguousarray(pixels))[None])


class TextRunEncoder:
    """A :class:`~contrastkit.modalities.text.encoders.TextEncoder` reading text collections."""

    modality = "text"

    def __init__(self, encoder: Any, batch_size: int = 64):
        self.encoder, self.batch_size = encoder, batch_size

    def read_collection(self, data: str) -> Collection:
        from contrastkit.modalities.text.sources import read_corpus, read_lines

        path = Path(data)
        if path.is_dir() or path.name.removesuffix(".gz").endswith((".jsonl", ".json")):
            corpus = read_corpus(path)
            return Collection(list(corpus.doc_ids), corpus.documents())
        texts = read_lines(path)
        return Collection([str(row) for row in range(len(texts))], texts)

    def embed(self, collection: Collection, rows: Any) -> np.ndarray:
        texts = [collection.items[int(row)] for row in rows]
        return self.encoder.encode(texts, batch_size=self.batch_size).numpy()

    def read_query(self, query: str) -> Collection:
        return Collection(["query"], [query])


def run_encoder(run: str | Path, *, trust_checkpoint: bool = False) -> ImageRunEncoder | TextRunEncoder:
    """The encoder of ``run`` (see the module's table); a ConfigError for the other modalities."""
    if str(run) == "minilm":
        from contrastkit.modalities.text.encoders import load_text_encoder

        return TextRunEncoder(load_text_encoder("minilm"))
    path = Path(run)
    if path.is_file() and path.suffix == ".ckpt":
        return _image_checkpoint_encoder(path, trust_checkpoint)
    if not path.is_dir():
        raise DataError(f"The run '{path}' is neither a run folder, a checkpoint, an exported model nor 'minilm'.")
    modality = run_kind(path)
    if modality is None:
        raise DataError(f"'{path}' holds no run that contrastkit index knows (no config.yaml, "
                        f"checkpoints/last.ckpt, encoder/ or exported model).")
    if modality == "image":
        return _image_checkpoint_encoder(path / "checkpoints" / "last.ckpt", trust_checkpoint)
    if modality == "image-export":
        from contrastkit.modalities.image.export import load_exported

        config = json.loads((path / "config.json").read_text())
        return ImageRunEncoder(load_exported(path), int(config["image_size"]), int(config["in_channels"]))
    if modality in ("text", "text-model"):
        from contrastkit.loading import load

        return TextRunEncoder(load(path))
    raise ConfigError(f"'{path}' is a {modality} run: contrastkit index embeds collections with image and text "
                      f"encoders. Index this run's embeddings instead (contrastkit index --embeddings E.npy "
                      f"--ids IDS.txt, or SearchIndex.add in Python).")


def _image_checkpoint_encoder(checkpoint: Path, trust_checkpoint: bool) -> ImageRunEncoder:
    from contrastkit.modalities.image.training.restore import load_method

    method, _, data = load_method(checkpoint, trust_checkpoint=trust_checkpoint)
    return ImageRunEncoder(method.embed, int(data.image_size), int(data.channels))


__all__ = ["Collection", "ImageRunEncoder", "TextRunEncoder", "run_encoder"]
