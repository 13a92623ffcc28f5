"""CLIP's symmetric cross-entropy against momentum keys and queues (CoCoSoDa's inter-modal loss).

With online embeddings ``u = normalize(a)``, ``v = normalize(b)`` (N rows), the momentum
encoders' keys of the same batch ``k^a = normalize(keys_a)``, ``k^b = normalize(keys_b)``, the
queues of earlier keys ``Q^a`` (K_a rows) and ``Q^b`` (K_b rows), and
``scale = min(exp(logit_scale), max_scale)``::

    logits^{ab}_r = scale * u_r . [k^b_1 .. k^b_N, Q^b_1 .. Q^b_{K_b}]      (candidates of a_r)
    logits^{ba}_r = scale * v_r . [k^a_1 .. k^a_N, Q^a_1 .. Q^a_{K_a}]      (candidates of b_r)
    loss = ( mean_r CE(logits^{ab}_r, r) + mean_r CE(logits^{ba}_r, r) ) / 2

The positive of ``a_r`` is the momentum key of its partner ``b_r``; the other keys of the batch
and the queue are its negatives. With keys equal to the online embeddings and empty queues this is
exactly the catalogue's ``clip`` (tested). CoCoSoDa (Shi et al. 2023) contrasts the online query
with momentum keys and a queue in the same way (MoCo's estimator across modalities); keeping the
batch's own keys as negatives, as here, gives it CLIP's in-batch negatives too.

Registered as ``queued_clip``; used by the two-tower method with momentum encoders
(:mod:`contrastkit.modalities.pairs.two_tower`). Follows the ``loss_terms`` protocol of
:mod:`contrastkit.nn.distributed`: ``keys_a`` / ``keys_b`` are per-sample inputs (gathered with
the embeddings); the queues are the same on every process.

References:
    - Shi et al., "CoCoSoDa: Effective Contrastive Learning for Code Search", ICSE 2023.
      https://arxiv.org/abs/2204.03293
    - Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
      ICML 2021. https://arxiv.org/abs/2103.00020
    - He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    LossTerms,
    anchor_range,
    check_pair,
    in_float32,
    normalize,
)
from contrastkit.objectives.clip import CLIPLoss


def _candidates(keys: Tensor, queue: Tensor | None, dim: int, name: str) -> Tensor:
    if queue is None or queue.shape[0] == 0:
        return normalize(keys)
    if queue.dim() != 2 or queue.shape[1] != dim:
        raise DataError(f"queued clip: the queue '{name}' must be (K, {dim}) like the embeddings, "
                        f"got {tuple(queue.shape)}.")
    return torch.cat([normalize(keys), normalize(queue)])


@in_float32
def queued_clip_terms(
    a: Tensor,
    b: Tensor,
    keys_a: Tensor,
    keys_b: Tensor,
    logit_scale: Tensor,
    queue_a: Tensor | None = None,
    queue_b: Tensor | None = None,
    max_scale: float = 100.0,
    anchor_rows: slice | None = None,
) -> LossTerms:
    """Queued CLIP terms of the rows ``anchor_rows``; see the module docstring."""
    check_pair(a, b, "queued clip")
    check_pair(keys_a, keys_b, "queued clip (keys)")
    if keys_a.shape != a.shape:
        raise DataError(f"queued clip: keys {tuple(keys_a.shape)} must match the embeddings {tuple(a.shape)}.")
    n, dim = a.shape
    rows = anchor_range(anchor_rows, n, a.device)
    scale = logit_scale.exp().clamp(max=max_scale)
    a_to_b = scale * normalize(a)[rows] @ _candidates(keys_b, queue_b, dim, "queue_b").T
    b_to_a = scale * normalize(b)[rows] @ _candidates(keys_a, queue_a, dim, "queue_a").T
    total = (F.cross_entropy(a_to_b, rows, reduction="sum") + F.cross_entropy(b_to_a, rows, reduction="sum")) / 2
    return LossTerms(total, n)


@OBJECTIVES.register("queued_clip")
class QueuedCLIP(CLIPLoss):
    r"""The queued CLIP loss with CLIP's learned logit scale (initialised at ``log(1 / init_temperature)``,
    clamped at ``max_scale``): the catalogue's ``clip`` with momentum keys and queues as candidates.

    With ``u = normalize(a)``, ``v = normalize(b)``, the momentum keys ``k^a = normalize(keys_a)``,
    ``k^b = normalize(keys_b)``, the queues ``Q^a``, ``Q^b`` and ``scale = min(exp(logit_scale), max_scale)``::

        logits^{ab}_r = scale * u_r . [k^b_1 .. k^b_N, Q^b_1 .. Q^b_{K_b}]
        logits^{ba}_r = scale * v_r . [k^a_1 .. k^a_N, Q^a_1 .. Q^a_{K_a}]
        loss = ( mean_r CE(logits^{ab}_r, r) + mean_r CE(logits^{ba}_r, r) ) / 2

    Called as ``objective(a, b, keys_a=..., keys_b=..., queue_a=..., queue_b=...)``; ``keys_a`` and
    ``keys_b`` are per-sample inputs (gathered across processes with the embeddings), the queues
    must be the same on every process. See the module docstring for the papers.

    Args:
        init_temperature, max_scale, learn_scale: as for :class:`~contrastkit.objectives.clip.CLIPLoss`.
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("keys_a", "keys_b")
    not_for_view_pairs = "it needs the momentum encoders' keys of the batch (keys_a, keys_b) beside the two embeddings"

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None,
                   keys_a: Tensor | None = None, keys_b: Tensor | None = None,
                   queue_a: Tensor | None = None, queue_b: Tensor | None = None) -> LossTerms:
        if keys_a is None or keys_b is None:
            raise DataError("queued clip needs the momentum keys of the batch (keys_a, keys_b).")
        return queued_clip_terms(z_a, z_b, keys_a, keys_b, self.logit_scale, queue_a, queue_b,
                                 self.max_scale, anchor_rows)
