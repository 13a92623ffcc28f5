"""An exported image encoder as ONNX: ``model.onnx`` beside ``model.safetensors`` + ``config.json``.

The graph is :class:`~contrastkit.modalities.image.export.ExportedEncoder` itself, normalisation
included: input ``images`` uint8 (B, C, H, W) at the export's image size, output ``embeddings``
(B, D), the batch axis dynamic. :func:`export_image_onnx` checks it with onnxruntime against the
PyTorch encoder (:data:`contrastkit.onnx_export.MIN_COSINE`) before returning.

    encoder = OnnxImageEncoder("encoder/")          # onnxruntime only: no torch at inference
    embeddings = encoder.embed(images)              # numpy uint8 (B, C, H, W) -> float32 (B, D)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.export import CONFIG_FILE, load_exported
from contrastkit.onnx_export import ONNX_FILE, check_agreement, export_module, onnx_session

INPUT = "images"


def export_image_onnx(folder: str | Path, probe: torch.Tensor | None = None) -> Path:
    """Write ``folder/model.onnx`` for the encoder exported in ``folder`` (``contrastkit export``),
    checked on ``probe`` (uint8 images; default 32 random ones). Returns the ONNX file."""
    folder = Path(folder)
    encoder = load_exported(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    shape = (int(config["in_channels"]), int(config["image_size"]), int(config["image_size"]))
    example = torch.randint(0, 256, (2, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = export_module(encoder, {INPUT: example}, folder / ONNX_FILE, {INPUT: {0: "batch"}})
    if probe is None:
        probe = torch.randint(0, 256, (32, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = encoder(probe).numpy()
    check_agreement(expected, OnnxImageEncoder(folder).embed(probe.numpy()), path)
    return path


class OnnxImageEncoder:
    """``model.onnx`` of an image export, run with onnxruntime (``threads``: intra-op threads)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        path = Path(folder) / ONNX_FILE
        if not path.is_file():
            raise DataError(f"'{path}' does not exist: write it with 'contrastkit export --format onnx'.")
        self.session = onnx_session(path, threads)

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 embeddings (B, D) of uint8 images (B, C, H, W)."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        chunks = [self.session.run(None, {INPUT: images[start:start + batch_size]})[0]
                  for start in range(0, len(images), batch_size)]
        return np.concatenate(chunks).astype(np.float32)
