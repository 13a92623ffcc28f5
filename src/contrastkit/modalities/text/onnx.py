"""A text encoder as ONNX: ``model.onnx`` in its sentence-transformers folder.

The graph runs from token ids to the sentence embedding: the Transformer, the pooling, the
normalisation (and the term residual, when the encoder has one), exactly
:meth:`~contrastkit.modalities.text.encoders.TextEncoder.forward`. Inputs are the tokenizer's
(``input_ids``, ``attention_mask`` and, for BERT-like models, ``token_type_ids``), int64 (B, L) with
batch and token axes dynamic; the output is ``embeddings`` (B, D). Tokenizing stays outside the
graph: :class:`OnnxTextEncoder` uses the folder's tokenizer (the ``tokenizers`` library, no torch
model). :func:`export_text_onnx` checks the graph with onnxruntime against PyTorch before returning.

    encoder = OnnxTextEncoder("minilm-export/")
    embeddings = encoder.encode(["a sentence", "another one"])   # float32 (2, 384)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from contrastkit.core.errors import DataError
from contrastkit.modalities.text.encoders import TextEncoder, sentence_transformers_settings
from contrastkit.onnx_export import ONNX_FILE, check_agreement, export_module, onnx_session

# Probe sentences of different lengths, so that the check sees padding and truncation.
PROBE_SENTENCES = (
    "A man is playing a guitar on the street.",
    "short",
    "Contrastive learning pulls two views of one sentence together and pushes the other sentences of "
    "the batch away, " * 20,
    "Vitamin D supplementation does not reduce fractures in older adults.",
)


class TokensToEmbedding(nn.Module):
    """``TextEncoder.forward`` with the token tensors as positional inputs (what the exporter traces)."""

    def __init__(self, encoder: TextEncoder, input_names: Sequence[str]):
        super().__init__()
        self.encoder, self.input_names = encoder, tuple(input_names)

    def forward(self, *tokens: Tensor) -> Tensor:
        return self.encoder(dict(zip(self.input_names, tokens)))


def export_text_onnx(encoder: TextEncoder, folder: str | Path, probe: Sequence[str] = PROBE_SENTENCES) -> Path:
    """Write ``folder/model.onnx`` for ``encoder`` (the folder holds its tokenizer: a
    sentence-transformers export or ``TextEncoder.save``), checked on ``probe``. Returns the file."""
    folder = Path(folder)
    # Trace with padding in the batch, so that the attention mask's path is the one recorded.
    example = encoder.tokenize(["a short one", "a sentence with a few more tokens than the first"])
    names = list(example)
    path = export_module(TokensToEmbedding(encoder, names).cpu(), example, folder / ONNX_FILE,
                         {name: {0: "batch", 1: "tokens"} for name in names})
    expected = encoder.encode(list(probe), batch_size=len(probe)).numpy()
    check_agreement(expected, OnnxTextEncoder(folder).encode(probe, batch_size=len(probe)), path)
    return path


class OnnxTextEncoder:
    """``model.onnx`` of a text folder with the folder's tokenizer, run with onnxruntime."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not (folder / ONNX_FILE).is_file():
            raise DataError(f"'{folder / ONNX_FILE}' does not exist: write it with "
                            f"'contrastkit export --text-model MODEL --format onnx'.")
        self.session = onnx_session(folder / ONNX_FILE, threads)
        self.inputs = [node.name for node in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.max_length = int(sentence_transformers_settings(folder).get("max_length", 256))
        positions = json.loads((folder / "config.json").read_text()).get("max_position_embeddings") \
            if (folder / "config.json").is_file() else None
        if positions:  # as TextEncoder.tokenize: never beyond the model's position table
            self.max_length = min(self.max_length, int(positions))

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """float32 embeddings (N, D), in input order (batches of similar lengths, as TextEncoder.encode)."""
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        embeddings: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            tokens = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="np")
            output = self.session.run(None, {name: tokens[name].astype(np.int64) for name in self.inputs})[0]
            for row, embedding in zip(rows, output):
                embeddings[row] = embedding
        return np.stack(embeddings).astype(np.float32) if texts else np.empty((0, 0), np.float32)
