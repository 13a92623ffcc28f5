"""What an encoder with a term residual is for: the query tower of one corpus.

``hybrid-distill`` (``student=term-residual``) trains a table of token vectors added to the base model's
embedding (:mod:`contrastkit.modalities.text.term_residual`) so that *queries* rank *one corpus* the way the
dense + BM25 hybrid does; the corpus keeps the base model's embeddings. Two consequences, which this
module turns into defaults:

- **Retrieval**: the residual is applied on the query side only. Without a ``--document-model``, the
  documents are embedded by the same encoder *without* its residual (:func:`document_tower`), which is
  the base model the residual was trained against (a run's ``document_encoder/`` holds the same weights).
- **General text** (STS, pair classification, clustering): the residual moves every sentence that holds
  a trained token, and general similarity pays for it (issue 31: -3.8 Spearman on a held-out STS set).
  ``evaluate`` keeps the model it was given -- a figure must be of the model named on the command line,
  and measuring what the adaptation costs is a legitimate use -- but says, once per call, that the model
  is a query tower for its corpus, what it cost on the general guard when it was trained (from the run's
  ``summary.json``, :mod:`contrastkit.modalities.text.general_guard`), and which folder holds the base model
  (and, for a residual with a corpus gate, that general text gets little of the residual).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from contrastkit.modalities.text.encoders import TextEncoder

SUMMARY_FILE = "summary.json"


class QueryTowerWarning(UserWarning):
    """A query tower trained for one corpus is used on general text."""


def document_tower(encoder: TextEncoder) -> TextEncoder:
    """The encoder without its term residual (sharing the Transformer and tokenizer): the tower that
    embeds documents for a query tower with a residual. An encoder without one (or any other object with
    ``encode``) is returned as is."""
    if getattr(encoder, "term_residual", None) is None:
        return encoder
    return TextEncoder(encoder.transformer, encoder.tokenizer, pooling=encoder.pooling,
                       normalize=encoder.normalize, max_length=encoder.max_length)


def trained_for(encoder: TextEncoder) -> dict | None:
    """The corpus description a term residual was trained for (None: no residual, or one saved
    without it)."""
    residual = encoder.term_residual
    return None if residual is None else (residual.corpus or {})


def guard_cost(model_folder: str | Path) -> dict | None:
    """The general guard's record (``general_guard`` of its parent's ``summary.json``) of the run that
    wrote ``model_folder`` as its encoder, or None when there is no such record."""
    summary = Path(model_folder).expanduser().parent / SUMMARY_FILE
    try:
        recorded = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    saved = recorded.get("encoder_dir")
    if saved and Path(saved).resolve() != Path(model_folder).expanduser().resolve():
        return None  # another model beside the run's (e.g. its residual restricted afterwards): not its cost
    guard = recorded.get("general_guard")
    return guard if isinstance(guard, dict) and guard.get("loss") else None


def general_use_message(encoder: TextEncoder, model: str | Path, task: str) -> str | None:
    """The warning for scoring a query tower on general text (``task``), or None for an encoder
    without a term residual."""
    corpus = trained_for(encoder)
    if corpus is None:
        return None
    where = corpus.get("path") or "its training corpus"
    message = (f"'{model}' carries a term residual trained as the query tower for retrieval over {where} "
               f"(documents: the base model). On general text ({task}) it is not the base model: ")
    residual = encoder.term_residual
    if residual.gate_center is not None:
        message += ("its corpus gate gives a text the residual in proportion to how close it is to the corpus, "
                    "so general text gets little of it, but not none. ")
    guard = guard_cost(model) if isinstance(model, (str, Path)) and Path(str(model)).exists() else None
    if guard is not None:
        loss = guard["loss"]
        per_set = ", ".join(f"{name} {value:+.2f}" for name, value in loss.items()
                            if name not in ("mean", "max", "worst"))
        message += (f"its run measured a loss of {loss['mean']:.2f} points on average on the general guard "
                    f"({guard.get('split', '?')} splits; loss per set, before - after: {per_set}). ")
    else:
        message += "its cost on general text was not recorded with it (see contrastkit.modalities.text.general_guard). "
    base = Path(str(model)).parent / "document_encoder"
    message += (f"For general sentences use the base model{f' ({base})' if base.is_dir() else ''}; this model's "
                "figure here measures what the adaptation costs.")
    return message


def warn_general_use(encoder: TextEncoder, model: str | Path, task: str) -> None:
    """Emit :func:`general_use_message` as a :class:`QueryTowerWarning` when it applies."""
    message = general_use_message(encoder, model, task)
    if message:
        warnings.warn(message, QueryTowerWarning, stacklevel=2)


__all__ = ["QueryTowerWarning", "document_tower", "general_use_message", "guard_cost", "trained_for",
           "warn_general_use"]
