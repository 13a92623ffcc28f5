"""Matryoshka training and evaluation for text: a method's in-batch loss at nested dimensions, and
scores of an encoder at each truncated dimension.

Training: :func:`use_matryoshka` replaces the objective of a text method by the catalogue's
:class:`~contrastkit.objectives.matryoshka.Matryoshka` around it (Kusupati et al., "Matryoshka
Representation Learning", NeurIPS 2022), still gathered across processes. It applies to methods whose
loss is one in-batch contrastive objective on the encoder's own embeddings (``supports_matryoshka``:
simcse, contriever with in-batch negatives, ict, mnrl); the others say why not. ``contrastkit text
--matryoshka-dims 384,256,128,64 [--matryoshka-weights 1,1,1,1]`` calls it.

Evaluation: an embedding cut to its first ``m`` features and re-normalised is the model at dimension
``m``; :func:`contrastkit.modalities.text.evaluation.sts_spearman_at_dims` and
:func:`~contrastkit.modalities.text.evaluation.evaluate_retrieval_at_dims` score every dimension from
one encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.matryoshka import check_dims, matryoshka_loss

NOT_SUPPORTED = ("its loss is not one in-batch contrastive objective over the encoder's own embeddings "
                 "(it weights, whitens, projects or distils them first)")


def parse_numbers(text: str | Sequence | None, option: str, kind: type) -> list | None:
    """``"384,256"`` (or a list) -> ``[384, 256]``; None stays None."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [kind(str(part).strip()) for part in parts]
    except ValueError as error:
        raise ConfigError(f"{option} takes comma-separated {'integers' if kind is int else 'numbers'}, e.g. "
                          f"384,256,128,64; got '{text}'.") from error
    return values


def parse_dims(text: str | Sequence[int] | None, option: str = "--matryoshka-dims") -> list[int] | None:
    dims = parse_numbers(text, option, int)
    if dims is not None:
        check_dims(dims, None)
    return dims


def check_eval_dims(dims: Sequence[int], full_dim: int) -> list[int]:
    """``dims`` (largest first), each at most the encoder's ``full_dim``."""
    dims = list(check_dims(list(dims), None)[0])
    if dims[0] > full_dim:
        raise ConfigError(f"Dimension {dims[0]} asked for, but the encoder's embeddings have {full_dim}; every "
                          f"dimension must be at most {full_dim}.")
    return dims


def use_matryoshka(method: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None,
                   method_name: str | None = None) -> nn.Module:
    """``method`` with its objective computed at each of ``dims`` (weighted by ``weights``, 1 each by
    default) and summed; refused (ConfigError) for a method that cannot, or dims above the encoder's."""
    name = method_name or getattr(method, "name", type(method).__name__.lower())
    if not getattr(method, "supports_matryoshka", False):
        reason = getattr(method, "matryoshka_refusal", NOT_SUPPORTED)
        raise ConfigError(f"The text method '{name}' cannot train with --matryoshka-dims: {reason}. Methods that can: "
                          f"simcse, contriever (queue_size=0), ict, mnrl.")
    check_eval_dims(dims, method.encoder.output_dim)
    objective = method.objective
    if not isinstance(objective, GatheredObjective):
        raise ConfigError(f"The text method '{name}' has no gathered in-batch objective to nest.")
    method.objective = GatheredObjective(matryoshka_loss(objective.objective, dims, weights),
                                         local_loss=objective.local_loss)
    return method
