"""Contrastive Predictive Coding: InfoNCE over the latents of future steps.

van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018
(https://arxiv.org/abs/1807.03748), Sec. 2. An encoder maps a sequence to latents ``z_t``, an
autoregressive model summarises ``z_{<=t}`` into a context ``c_t``, and a linear map per offset
``k`` predicts ``p_{t,k} = W_k c_t``; the score of a candidate ``z`` is ``exp(z^T W_k c_t)``
(Eq. 3). The method computes the predictions; this loss only scores them, so its inputs are
``predictions`` (B, T, K, D) and ``latents`` (B, T, D).

For sequence ``i``, step ``t`` and offset ``k = 1..K`` with ``t + k < T`` (Eq. 4, InfoNCE)::

    l(i, t, k) = -log  exp(p_{i,t,k} . z_{i,t+k}) / ( sum_j exp(p_{i,t,k} . z_{j,t+k})
                                                     + sum_{s != t+k} exp(p_{i,t,k} . z_{i,s}) )

    loss = mean over all (i, t, k) of l(i, t, k)

The negatives are the latents of the other sequences of the batch at the same step (``j != i``)
and those of the same sequence at the other steps (``s != t + k``): the paper draws negatives from
the batch and from the same sequence; here every one of them is used, so the loss is exact and has
no sampling noise. Scores are raw dot products (no normalisation, no temperature), as in the paper.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32, mask_value
from contrastkit.objectives.registry import OBJECTIVES


def _check(predictions: Tensor, latents: Tensor) -> None:
    if predictions.dim() != 4 or latents.dim() != 3 or predictions.shape[:2] != latents.shape[:2] \
            or predictions.shape[3] != latents.shape[2]:
        raise DataError(f"cpc: predictions must be (B, T, K, D) and latents (B, T, D) with the same B, T and D; "
                        f"got {tuple(predictions.shape)} and {tuple(latents.shape)}.")
    if predictions.shape[2] >= latents.shape[1]:
        raise DataError(f"cpc: {predictions.shape[2]} prediction steps need sequences longer than that; the "
                        f"latents have {latents.shape[1]} steps. Lower the steps or crop longer clips.")


@in_float32
def cpc_terms(predictions: Tensor, latents: Tensor, anchor_rows: slice | None = None) -> LossTerms:
    """The summed ``l(i, t, k)`` of the sequences ``anchor_rows`` (all when None) and the count of
    all ``(i, t, k)`` of the batch (module docstring)."""
    _check(predictions, latents)
    n, steps, offsets, _ = predictions.shape
    rows = anchor_range(anchor_rows, n, latents.device)
    total = latents.new_zeros(())
    for k in range(1, offsets + 1):
        p = predictions[rows, : steps - k, k - 1]  # (R, T-k, D): anchors t = 0 .. T-k-1
        targets = latents[:, k:]  # (B, T-k, D): z_{j, t+k}
        across_batch = torch.einsum("rtd,jtd->rtj", p, targets)  # (R, T-k, B)
        within_sequence = torch.einsum("rtd,rsd->rts", p, latents[rows])  # (R, T-k, T)
        # Within the sequence, z_{i,t+k} is the positive: it is already counted across the batch.
        own_step = torch.arange(k, steps, device=latents.device)
        within_sequence = within_sequence.scatter(2, own_step.view(1, -1, 1).expand(len(rows), -1, 1),
                                                  mask_value(within_sequence.dtype))
        logits = torch.cat([across_batch, within_sequence], dim=2)
        positive = across_batch.gather(2, rows.view(-1, 1, 1).expand(-1, steps - k, 1)).squeeze(2)
        total = total + (torch.logsumexp(logits, dim=2) - positive).sum()
    count = n * sum(steps - k for k in range(1, offsets + 1))
    return LossTerms(total, count)


@OBJECTIVES.register("cpc")
class CPCInfoNCE(ContrastiveObjective):
    r"""CPC's InfoNCE over future steps (van den Oord et al. 2018; formula in the module docstring).

    Called as ``objective(predictions, latents)``: ``predictions[i, t, k-1] = W_k c_{i,t}`` (B, T,
    K, D), ``latents[i, t] = z_{i,t}`` (B, T, D). Under several processes (``GatheredObjective``)
    the sequences of every process are negatives, and the loss is that of one process on the
    concatenated batch.

    References:
        - van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding",
          arXiv 2018, Eq. 3-4. https://arxiv.org/abs/1807.03748
    """

    not_for_view_pairs: ClassVar[str] = (
        "it scores per-step predictions (B, T, K, D) of future latents (B, T, D), not two views")

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return cpc_terms(z_a, z_b, anchor_rows)
