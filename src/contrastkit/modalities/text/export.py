"""Export a text encoder as a folder that ``sentence_transformers.SentenceTransformer(folder)`` loads.

A :class:`~contrastkit.modalities.text.encoders.TextEncoder` is ``normalise?(pool(transformer(tokens)))``
with tokens truncated at ``max_length``. sentence-transformers describes the same pipeline as a list
of modules, so the folder holds::

    config.json, model.safetensors, tokenizer files   the Transformer (module 0, at the folder's root)
    sentence_bert_config.json     {"max_seq_length": max_length, "do_lower_case": false}
    1_Pooling/config.json         the pooling: pooling_mode_mean_tokens | _cls_token | _lasttoken
    2_Normalize/                  present only when the encoder L2-normalises
    modules.json                  the module list: Transformer, Pooling[, Normalize]
    config_sentence_transformers.json   versions, no prompts, cosine similarity

The files use the classic module names (``sentence_transformers.models.Transformer`` ...) and the
boolean ``pooling_mode_*`` keys, which every sentence-transformers release from 2.x reads (6.x maps
them onto its new module paths). ``last`` pooling is sentence-transformers' ``lasttoken``: the last
position whose attention mask is 1, with the tokenizer's right padding.

The export checks itself: the folder is read back with :meth:`TextEncoder.from_folder`, which
takes pooling, normalisation and length from these files, and must embed probe sentences exactly
like the encoder that was exported.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.encoders import TextEncoder, load_text_encoder

POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}
ALL_POOLING_KEYS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                    "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
PROBE_SENTENCES = (
    "A man is playing a guitar on the street.",
    "Contrastive learning pulls two views of one sentence together.",
    "short",
)


def sentence_transformers_files(encoder: TextEncoder) -> dict[str, object]:
    """The sentence-transformers description of ``encoder``: {relative file name: JSON content}."""
    if encoder.pooling not in POOLING_KEYS:
        raise ConfigError(f"Pooling '{encoder.pooling}' has no sentence-transformers equivalent; "
                          f"exportable poolings: {', '.join(POOLING_KEYS)}.")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if encoder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling = {"word_embedding_dimension": encoder.output_dim}
    pooling.update({key: key == POOLING_KEYS[encoder.pooling] for key in ALL_POOLING_KEYS})
    pooling["include_prompt"] = True
    return {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": {"max_seq_length": encoder.max_length, "do_lower_case": False},
        "config_sentence_transformers.json": {"__version__": _versions(), "prompts": {}, "default_prompt_name": None,
                                              "similarity_fn_name": "cosine"},
    }


def export_sentence_transformers(encoder: TextEncoder, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``encoder`` as a sentence-transformers folder (see the module docstring); returns it.

    Raises ConfigError when ``out_dir`` already holds a model (unless ``overwrite``) or when the
    folder read back does not embed like ``encoder``.
    """
    if encoder.term_residual is not None:
        raise ConfigError("This encoder carries a term residual (a learned vector per token added to its embedding, "
                          "from hybrid-distill's student=term-residual), which sentence-transformers has no module "
                          "for: an export would embed differently. Use the folder with contrastkit "
                          "(TextEncoder.from_folder, contrastkit evaluate), or train with --option student=encoder.")
    folder = Path(out_dir)
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise ConfigError(f"'{folder}' is not empty; nothing is overwritten. Choose another output folder "
                              f"(or pass overwrite=True / --overwrite).")
        shutil.rmtree(folder)  # a stale 2_Normalize/ from an earlier export would change the pipeline
    folder.mkdir(parents=True, exist_ok=True)
    encoder.transformer.save_pretrained(str(folder))
    encoder.tokenizer.save_pretrained(str(folder))
    for name, content in sentence_transformers_files(encoder).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
    if encoder.normalize:
        (folder / "2_Normalize").mkdir(exist_ok=True)  # Normalize has no settings; the folder names the module
    _check_round_trip(encoder, folder)
    return folder


def export_text_model(text_model: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                      onnx: bool = False) -> Path:
    """`contrastkit export --text-model FOLDER --format sentence-transformers` (``onnx``: ``--format onnx``,
    the same folder plus ``model.onnx``, :mod:`contrastkit.modalities.text.onnx`)."""
    encoder = load_text_encoder(text_model)
    folder = export_sentence_transformers(encoder, out_dir, overwrite=overwrite)
    if onnx:
        from contrastkit.modalities.text.onnx import export_text_onnx

        export_text_onnx(encoder, folder)
    return folder


def _check_round_trip(encoder: TextEncoder, folder: Path) -> None:
    reloaded = TextEncoder.from_folder(folder).to(encoder.device)
    settings = (reloaded.pooling, reloaded.normalize, reloaded.max_length)
    if settings != (encoder.pooling, encoder.normalize, encoder.max_length):
        raise ConfigError(f"The export in '{folder}' reads back as pooling/normalize/max_length {settings}, not "
                          f"{(encoder.pooling, encoder.normalize, encoder.max_length)}.")
    expected = encoder.encode(PROBE_SENTENCES, batch_size=len(PROBE_SENTENCES))
    actual = reloaded.encode(PROBE_SENTENCES, batch_size=len(PROBE_SENTENCES))
    if not torch.equal(expected, actual):
        raise ConfigError(f"The exported model in '{folder}' does not reproduce the encoder's embeddings (largest "
                          f"difference {(expected - actual).abs().max():.3g}); the transformer did not save as it runs.")


def _versions() -> dict[str, str]:
    """The versions that wrote the folder (sentence-transformers only when installed: it is not needed
    to write the folder, only to load it)."""
    import transformers

    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        versions["sentence_transformers"] = version("sentence-transformers")
    except PackageNotFoundError:
        pass
    return versions
