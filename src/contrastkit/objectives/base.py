"""Helpers shared by the objectives: the ``loss_terms`` contract, float32 maths, masks, checks.

Every objective here follows the protocol of :mod:`contrastkit.nn.distributed`: a pure function
``*_terms(...) -> LossTerms(total, count)`` holds the maths, and the module's ``forward`` returns
``total / count``. ``anchor_rows`` (a slice of sample indices, ``None`` = all) selects whose loss
terms are summed, so that each process can compute only its own rows against the global batch.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError

FunctionT = TypeVar("FunctionT", bound=Callable[..., Any])


class LossTerms(NamedTuple):
    """``total``: sum of the selected anchors' loss terms; ``count``: the full batch's normaliser.

    The loss is ``total / count``; see :mod:`contrastkit.nn.distributed` for why the two are apart.
    """

    total: Tensor
    count: Tensor | float

    def mean(self) -> Tensor:
        return self.total / self.count


class ContrastiveObjective(nn.Module, abc.ABC):
    """Base of the objectives that implement ``loss_terms``: ``forward`` is ``total / count``.

    Subclasses set ``per_sample_inputs`` (keyword arguments with one row per sample, gathered
    across processes by :class:`contrastkit.nn.distributed.GatheredObjective`) and implement
    ``loss_terms(z_a, z_b, *, anchor_rows=None, **extra) -> LossTerms``.
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ()
    # Why the objective does not read (z_a, z_b) as two views of the same samples ("" when it does);
    # methods that feed view pairs (SimCLR) refuse such objectives with this reason.
    not_for_view_pairs: ClassVar[str] = ""

    @abc.abstractmethod
    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None, **extra: Any) -> LossTerms:
        """The summed loss terms of ``anchor_rows`` and the whole batch's normaliser."""

    def forward(self, z_a: Tensor, z_b: Tensor, **extra: Any) -> Tensor:
        return self.loss_terms(z_a, z_b, **extra).mean()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating type is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def in_float32(fn: FunctionT) -> FunctionT:
    """Run ``fn`` with autocast off and its floating tensor arguments upcast to float32.

    Why: at temperature 0.01 the logits reach +-100, where a bfloat16 value is only known to
    +-0.5, so a softmax over bf16 logits is wrong by a large factor. The embeddings may come in
    bf16/fp16 (autocast); the similarity maths runs in float32 (float64 stays float64) and
    the gradient flows back to the inputs in their own dtype.
    """

    def upcast(value: Any) -> Any:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.to(compute_dtype(value.dtype))
        return value

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*(upcast(a) for a in args), **{k: upcast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def normalize(z: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (cosine similarity); safe for zero rows."""
    return F.normalize(z, dim=-1, eps=1e-12)


def mask_value(dtype: torch.dtype) -> float:
    """The most negative finite value of ``dtype``: ``exp`` of it minus any max is exactly 0,
    and unlike ``-inf`` it never produces ``inf - inf = nan`` in a hand-written reduction."""
    return torch.finfo(dtype).min


def anchor_range(anchor_rows: slice | None, n: int, device: torch.device) -> Tensor:
    """Sample indices selected by ``anchor_rows`` (all ``n`` when None), as a LongTensor."""
    if anchor_rows is None:
        return torch.arange(n, device=device)
    start, stop, step = anchor_rows.indices(n)
    return torch.arange(start, stop, step, device=device)


def two_view_anchors(anchor_rows: slice | None, n: int, device: torch.device) -> Tensor:
    """Rows of ``cat([z_a, z_b])`` that are anchors for samples ``anchor_rows``: ``i`` and ``n + i``."""
    samples = anchor_range(anchor_rows, n, device)
    return torch.cat([samples, samples + n])


def check_temperature(temperature: float, name: str = "temperature") -> float:
    if not temperature > 0:
        raise ConfigError(f"Option '{name}' must be a positive number, got {temperature}; typical values are 0.05-0.5.")
    return float(temperature)


def check_pair(z_a: Tensor, z_b: Tensor | None, objective: str, allow_single: bool = False) -> None:
    """Both views are (N, d) with the same shape (``z_b`` may be None when ``allow_single``)."""
    if z_a.dim() != 2:
        raise DataError(
            f"{objective}: embeddings must be a 2-d tensor (batch, dim), got shape {tuple(z_a.shape)}; "
            "flatten the encoder output or add a projection head."
        )
    if z_b is None:
        if not allow_single:
            raise DataError(f"{objective}: needs two views z_a and z_b (row i of each = sample i), got only z_a.")
        return
    if z_b.shape != z_a.shape:
        raise DataError(
            f"{objective}: the two views must have the same shape (row i of each = sample i), got "
            f"z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)}."
        )
    if z_a.shape[0] < 2:
        raise DataError(f"{objective}: needs a batch of at least 2 samples to have negatives, got {z_a.shape[0]}.")


def check_per_sample(value: Tensor, n: int, name: str, objective: str) -> None:
    if value.dim() < 1 or value.shape[0] != n:
        raise DataError(
            f"{objective}: '{name}' must have one entry per sample (first dimension {n}), got shape "
            f"{tuple(value.shape)}."
        )
