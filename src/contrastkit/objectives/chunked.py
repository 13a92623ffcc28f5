"""The log-sum-exp over similarities that InfoNCE-style losses share, with a hand-written backward.

For queries ``q`` (A, d), keys ``k`` (M, d), a scale ``s = 1 / temperature`` and per-row excluded
columns ``E_i`` (the anchor itself, and for DCL its positive)::

    lse_i = log sum_{j not in E_i} exp(s * q_i . k_j)

With ``p_ij = exp(s q_i . k_j - lse_i)`` (zero for ``j`` in ``E_i``) and upstream gradient
``g_i`` the gradient is::

    d/dq_i = s * g_i * sum_j p_ij k_j          d/dk_j = s * sum_i g_i p_ij q_i

and both sums split over blocks of rows ``i``. :func:`masked_logsumexp` computes this with one
custom autograd function in two modes:

- whole (``chunk_size=None``): the (A, M) logits are kept for the backward pass, O(A M) memory
  (1 GiB in float32 at A = M = 2N = 16384) and no recomputation;
- chunked (``chunk_size`` rows): only ``q``, ``k`` and ``lse`` are kept and each block of logits
  is recomputed in the backward pass; peak memory O(chunk_size x M) at the price of one more
  (A, M, d) matrix product. This is the recomputation idea of the cached and chunked losses of
  sentence-transformers (GradCache) and open_clip, specialised to one log-sum-exp.

Both give the same value and gradient. Why not plain autograd for the whole mode: autograd
through ``mm -> mul -> scatter_ -> logsumexp`` keeps the logits too, but its backward makes four
(A, M) temporaries (the scatter's masked copy, the scale's product, ``exp`` and the product
with ``g``), where the rule above needs one, computed block by block. The backward is first
order only (no double backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from contrastkit.core.errors import ConfigError
from contrastkit.objectives.base import mask_value

# Rows per block of the whole mode's temporaries (the log-sum-exp's shifted exponentials and the
# backward's probabilities): blocks of about 2^22 elements (16 MiB in float32) bound them without
# making the matrix products too thin to run at full speed.
_BLOCK_ELEMENTS = 2**22


def masked_logits(queries: Tensor, keys: Tensor, scale: float, excluded: Tensor) -> Tensor:
    """``scale * queries @ keys.T`` with columns ``excluded[i]`` of row ``i`` set to the dtype's min."""
    # The scale multiplies the (A, d) operand, not the (A, M) product: one pass fewer over the big matrix.
    logits = (queries * scale) @ keys.T
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
        chunk_size: rows per block, recomputed in the backward pass (O(chunk_size x M) memory);
            None keeps the whole (A, M) logits instead (faster, O(A M) memory).

    Returns:
        (A,) tensor of log-sum-exps, differentiable w.r.t. ``queries`` and ``keys`` (first order).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"Option 'chunk_size' must be a positive number of rows, got {chunk_size}.")
    keep_logits = chunk_size is None or chunk_size >= queries.shape[0]
    block_rows = max(1, _BLOCK_ELEMENTS // max(1, keys.shape[0])) if keep_logits else int(chunk_size)
    return _MaskedLogSumExp.apply(queries, keys, scale, excluded, block_rows, keep_logits)


def _row_blocks(rows: int, block_rows: int) -> list[slice]:
    return [slice(start, start + block_rows) for start in range(0, rows, block_rows)]


class _MaskedLogSumExp(torch.autograd.Function):
    """Forward and backward over blocks of ``block_rows`` rows; the logits kept or recomputed."""

    @staticmethod
    def forward(
        ctx: Any, queries: Tensor, keys: Tensor, scale: float, excluded: Tensor, block_rows: int, keep_logits: bool
    ) -> Tensor:
        blocks = _row_blocks(queries.shape[0], block_rows)
        lse = queries.new_empty(queries.shape[0])
        if keep_logits:
            logits = masked_logits(queries, keys, scale, excluded)
            for rows in blocks:
                torch.logsumexp(logits[rows], dim=1, out=lse[rows])
            ctx.save_for_backward(queries, keys, lse, logits)
        else:
            for rows in blocks:
                torch.logsumexp(masked_logits(queries[rows], keys, scale, excluded[rows]), dim=1, out=lse[rows])
            ctx.save_for_backward(queries, keys, lse, excluded)
        ctx.scale, ctx.blocks, ctx.keep_logits = scale, blocks, keep_logits
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_lse: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        queries, keys, lse, logits_or_excluded = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q = torch.empty_like(queries) if need_q else None
        grad_k = torch.zeros_like(keys) if need_k else None
        row_factor = grad_lse * ctx.scale  # s * g_i
        for rows in ctx.blocks:
            if ctx.keep_logits:
                block = logits_or_excluded[rows] - lse[rows, None]  # a new tensor: the saved logits stay intact
            else:
                block = masked_logits(queries[rows], keys, ctx.scale, logits_or_excluded[rows]).sub_(lse[rows, None])
            # weights[i, j] = s * g_i * p_ij; excluded columns have p_ij = exp(min - lse) = 0.
            weights = block.exp_().mul_(row_factor[rows, None])
            if need_q:
                torch.mm(weights, keys, out=grad_q[rows])
            if need_k:
                grad_k.addmm_(weights.T, queries[rows])
        return grad_q, grad_k, None, None, None, None
