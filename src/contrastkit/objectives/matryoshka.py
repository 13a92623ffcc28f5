"""Matryoshka Representation Learning: one loss at several nested prefixes of the embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import LossTerms
from contrastkit.objectives.registry import OBJECTIVES

# Keyword inputs that are embeddings too (a queue, extra or hard negatives): truncated with z_a, z_b.
EMBEDDING_INPUTS = ("keys", "extra_negatives", "negatives")
SMALLEST_DEFAULT_DIM = 8  # the paper's nesting {8, 16, ..., d}


def default_dims(dim: int) -> list[int]:
    """The paper's nesting: ``d, d/2, d/4, ...`` down to 8 (``[d]`` alone when d <= 8)."""
    dims = [dim]
    while dims[-1] // 2 >= SMALLEST_DEFAULT_DIM:
        dims.append(dims[-1] // 2)
    return dims


def check_dims(dims: Sequence[int] | None, weights: Sequence[float] | None) -> tuple[tuple[int, ...] | None,
                                                                                   tuple[float, ...] | None]:
    """Distinct positive dimensions (largest first) and one non-negative weight per dimension (not all 0)."""
    if dims is None:
        if weights is not None:
            raise ConfigError("Matryoshka weights need their dimensions: give dims as well (one weight per dim).")
        return None, None
    dims = list(dims)
    if not dims or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in dims):
        raise ConfigError(f"Matryoshka dims must be positive integers, e.g. 384,256,128,64; got {dims!r}.")
    if len(set(dims)) != len(dims):
        raise ConfigError(f"Matryoshka dims must be distinct, got {dims!r}.")
    weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dims):
        raise ConfigError(f"Give one Matryoshka weight per dimension: {len(dims)} dims ({dims}) but "
                          f"{len(weights)} weights ({weights}).")
    if any(not w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"Matryoshka weights must be >= 0 and not all 0, got {weights}.")
    order = sorted(range(len(dims)), key=lambda i: -dims[i])
    return tuple(dims[i] for i in order), tuple(weights[i] for i in order)


def truncated_inputs(z_a: Tensor, z_b: Tensor | None, extra: dict[str, Any], dim: int,
                     full_dim: int) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """The first ``dim`` features of the embeddings and of the embedding-valued inputs."""
    def cut(value: Any, name: str) -> Any:
        if not isinstance(value, Tensor):
            return value
        if value.shape[-1] != full_dim:
            raise DataError(f"matryoshka: '{name}' has {value.shape[-1]} features, the embeddings {full_dim}; "
                            "embedding-valued inputs must be in the same space.")
        return value[..., :dim]

    extra = {k: (cut(v, k) if k in EMBEDDING_INPUTS else v) for k, v in extra.items()}
    return z_a[..., :dim], None if z_b is None else cut(z_b, "z_b"), extra


class Matryoshka(nn.Module):
    r"""Matryoshka Representation Learning (MRL): an objective at several nested prefixes.

    With ``M`` the dimensions (``m_1 > m_2 > ...``), ``c_m`` their weights, ``z[:, :m]`` the first
    ``m`` features of every row and ``L`` the wrapped objective::

        loss = sum_{m in M}  c_m * L( z_a[:, :m], z_b[:, :m], **extra[:, :m] )

    Each prefix is an embedding on its own: an objective that L2-normalises its inputs (InfoNCE,
    query-key InfoNCE, multiple negatives, every cosine loss of the catalogue) normalises the
    *prefix*, so the cosine at dimension ``m`` is trained, which is what is searched with once the
    embedding is cut to ``m`` features. Embedding-valued keyword inputs (``keys``, ``extra_negatives``,
    ``negatives``: a queue, hard negatives) are cut alike; others (labels, weights) pass unchanged.

    The weighted *sum* is the paper's (Eq. 1, ``c_m = 1``) and sentence-transformers' MatryoshkaLoss;
    it is not divided by ``sum c_m``, so four dimensions give about four times the gradient of one
    (AdamW, which the text methods use, is insensitive to that scale).

    Data-parallel: when ``L`` has ``loss_terms``, so has the wrapper (:class:`MatryoshkaTerms`):
    ``total = sum_m c_m total_m / count_m`` over the anchors asked for and ``count = 1``, which sums
    over any partition of the anchors to the full loss, as :mod:`contrastkit.nn.distributed` needs.

    Args:
        objective: the wrapped objective module.
        dims: the dimensions; None: the paper's ``d, d/2, ...`` down to 8, from the input's ``d``.
        weights: ``c_m``, one per dimension (default 1 each).

    Inputs: those of ``objective``; ``z_a`` (N, d) (and ``z_b``) with ``d >= max(dims)``.

    References:
        - Kusupati, Bhatt, Rege, Wallingford, Sinha, Ramanujan, Howard-Snyder, Chen, Kakade, Jain &
          Farhadi, "Matryoshka Representation Learning", NeurIPS 2022. https://arxiv.org/abs/2205.13147

    Example::

        objective = objectives.get("matryoshka", objective="infonce", temperature=0.05, dims=[384, 256, 128, 64])
        loss = objective(encoder(view_a), encoder(view_b))
    """

    def __init__(self, objective: nn.Module, dims: Sequence[int] | None = None,
                 weights: Sequence[float] | None = None):
        super().__init__()
        if isinstance(objective, Matryoshka):
            raise ConfigError("matryoshka: the objective is already a Matryoshka loss; wrap the inner objective once.")
        self.objective = objective
        self.dims, self.weights = check_dims(dims, weights)
        self.per_sample_inputs = tuple(getattr(objective, "per_sample_inputs", ()))
        self.not_for_view_pairs = getattr(objective, "not_for_view_pairs", "")

    def nesting(self, full_dim: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """``(dims, weights)`` for inputs of ``full_dim`` features."""
        if self.dims is None:
            dims = default_dims(full_dim)
            return tuple(dims), (1.0,) * len(dims)
        if self.dims[0] > full_dim:
            raise DataError(f"matryoshka: dimension {self.dims[0]} asked for, but the embeddings have {full_dim} "
                            f"features; every dim must be at most {full_dim}.")
        return self.dims, self.weights

    def forward(self, z_a: Tensor, z_b: Tensor | None = None, **extra: Any) -> Tensor:
        full_dim = z_a.shape[-1]
        loss = z_a.new_zeros(())
        for dim, weight in zip(*self.nesting(full_dim)):
            a, b, cut = truncated_inputs(z_a, z_b, extra, dim, full_dim)
            loss = loss + weight * self.objective(a, b, **cut)
        return loss

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}"


class MatryoshkaTerms(Matryoshka):
    """:class:`Matryoshka` around an objective with ``loss_terms``: usable with ``local_loss``."""

    def loss_terms(self, z_a: Tensor, z_b: Tensor | None = None, *, anchor_rows: slice | None = None,
                   **extra: Any) -> LossTerms:
        full_dim = z_a.shape[-1]
        total = z_a.new_zeros((), dtype=torch.promote_types(z_a.dtype, torch.float32))
        for dim, weight in zip(*self.nesting(full_dim)):
            a, b, cut = truncated_inputs(z_a, z_b, extra, dim, full_dim)
            terms = self.objective.loss_terms(a, b, anchor_rows=anchor_rows, **cut)
            total = total + weight * terms.total / terms.count
        return LossTerms(total, 1.0)

    def forward(self, z_a: Tensor, z_b: Tensor | None = None, **extra: Any) -> Tensor:
        return self.loss_terms(z_a, z_b, **extra).mean()


def matryoshka_loss(objective: nn.Module, dims: Sequence[int] | None = None,
                    weights: Sequence[float] | None = None) -> Matryoshka:
    """``objective`` at the nested ``dims`` (:class:`Matryoshka`, with ``loss_terms`` when it has them)."""
    cls = MatryoshkaTerms if hasattr(objective, "loss_terms") else Matryoshka
    return cls(objective, dims, weights)


@OBJECTIVES.register("matryoshka")
def matryoshka(objective: str | nn.Module = "infonce", dims: Sequence[int] | None = None,
               weights: Sequence[float] | None = None, temperature: float | None = None,
               **objective_options: Any) -> Matryoshka:
    """The catalogue entry: ``objective`` (a name, built with ``temperature`` and ``objective_options``,
    or a module) at the nested ``dims`` (:class:`Matryoshka`)."""
    if isinstance(objective, str):
        if objective == "matryoshka":
            raise ConfigError("matryoshka: name the inner objective (e.g. objective='infonce'), not matryoshka.")
        if temperature is not None:
            objective_options["temperature"] = temperature
        objective = OBJECTIVES.build(objective, **objective_options)
    elif objective_options or temperature is not None:
        raise ConfigError("matryoshka: options of the inner objective go with its name; a module comes configured.")
    return matryoshka_loss(objective, dims, weights)
