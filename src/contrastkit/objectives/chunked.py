"""The log-sum-exp over similarities that InfoNCE-style losses share, whole or in row blocks.

For queries ``q`` (A, d), keys ``k`` (M, d), a scale ``s = 1 / temperature`` and per-row excluded
columns ``E_i`` (the anchor itself, and for DCL its positive)::

    lse_i = log sum_{j not in E_i} exp(s * q_i . k_j)

Computed whole, autograd keeps the (A, M) logits for the backward pass: O(A M) memory, which
at A = M = 2N = 16384 is 1 GiB in float32. :func:`masked_logsumexp` with ``chunk_size`` computes
the same value in blocks of ``chunk_size`` rows with a custom autograd function that stores only
``q``, ``k`` and ``lse`` and recomputes each block in the backward pass. The gradient is exact,
because with ``p_ij = exp(s q_i . k_j - lse_i)`` (zero for ``j`` in ``E_i``) and upstream
gradient ``g_i``::

    d/dq_i = s * g_i * sum_j p_ij k_j          d/dk_j = s * sum_i g_i p_ij q_i

and both sums split over row blocks. Peak memory is O(chunk_size x M) (one block of logits
and its probabilities), plus the outputs. This is the recomputation idea of the cached and
chunked losses of sentence-transformers (GradCache) and open_clip, specialised to one log-sum-exp.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from contrastkit.errors import ConfigError
from contrastkit.objectives._common import mask_value


def masked_logits(queries: Tensor, keys: Tensor, scale: float, excluded: Tensor) -> Tensor:
    """``scale * queries @ keys.T`` with columns ``excluded[i]`` of row ``i`` set to the dtype's min."""
    # In place: the matmul's backward needs only its inputs, so this saves two (A, M) copies.
    logits = (queries @ keys.T).mul_(scale)
    return logits.scatter_(1, excluded, mask_value(logits.dtype))


def masked_logsumexp(
    queries: Tensor, keys: Tensor, scale: float, excluded: Tensor, chunk_size: int | None = None
) -> Tensor:
    """Row-wise ``log sum_{j not in excluded[i]} exp(scale * queries[i] . keys[j])``.

    Args:
        queries: (A, d) anchors.
        keys: (M, d) candidates.
        scale: inverse temperature.
        excluded: (A, E) LongTensor of column indices left out of row ``i``'s sum.
        chunk_size: rows per block; None computes all rows at once (faster, O(A M) memory).

    Returns:
        (A,) tensor of log-sum-exps, differentiable w.r.t. ``queries`` and ``keys`` (first order).
    """
    if chunk_size is None or chunk_size >= queries.shape[0]:
        return torch.logsumexp(masked_logits(queries, keys, scale, excluded), dim=1)
    if chunk_size < 1:
        raise ConfigError(f"Option 'chunk_size' must be a positive number of rows, got {chunk_size}.")
    return _ChunkedMaskedLogSumExp.apply(queries, keys, scale, excluded, int(chunk_size))


class _ChunkedMaskedLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, queries: Tensor, keys: Tensor, scale: float, excluded: Tensor, chunk_size: int) -> Tensor:
        lse = queries.new_empty(queries.shape[0])
        for start in range(0, queries.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            lse[rows] = torch.logsumexp(masked_logits(queries[rows], keys, scale, excluded[rows]), dim=1)
        ctx.save_for_backward(queries, keys, excluded, lse)
        ctx.scale = scale
        ctx.chunk_size = chunk_size
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_lse: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        queries, keys, excluded, lse = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q = torch.zeros_like(queries) if need_q else None
        grad_k = torch.zeros_like(keys) if need_k else None
        for start in range(0, queries.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            logits = masked_logits(queries[rows], keys, ctx.scale, excluded[rows])
            # weights[i, j] = s * g_i * p_ij; excluded columns have p_ij = exp(min - lse) = 0.
            weights = torch.exp(logits - lse[rows, None]).mul_(grad_lse[rows, None] * ctx.scale)
            if need_q:
                grad_q[rows] = weights @ keys
            if need_k:
                grad_k.addmm_(weights.T, queries[rows])
        return grad_q, grad_k, None, None, None
