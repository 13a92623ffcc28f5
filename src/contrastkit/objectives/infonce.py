"""InfoNCE / NT-Xent, the SimCLR loss, with an optional queue of extra negatives (MoCo)."""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    check_pair,
    check_temperature,
    in_float32,
    normalize,
    two_view_anchors,
)
from contrastkit.objectives.chunked import masked_logsumexp


@in_float32
def ntxent_terms(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float,
    keys: Tensor | None = None,
    anchor_rows: slice | None = None,
    chunk_size: int | None = None,
) -> LossTerms:
    """NT-Xent terms of the anchors of samples ``anchor_rows`` (all when None); see :class:`InfoNCE`."""
    check_pair(z_a, z_b, "infonce")
    n = z_a.shape[0]
    z = normalize(torch.cat([z_a, z_b]))  # (2N, d); row i and row i + N are the two views
    anchors = two_view_anchors(anchor_rows, n, z.device)  # (A,)
    positives = (anchors + n) % (2 * n)
    candidates = z
    if keys is not None:
        if keys.dim() != 2 or keys.shape[1] != z.shape[1]:
            raise DataError(
                f"infonce: queue 'keys' must have shape (K, {z.shape[1]}) like the embeddings, got {tuple(keys.shape)}."
            )
        candidates = torch.cat([z, normalize(keys)])
    queries = z[anchors]
    scale = 1.0 / temperature
    lse = masked_logsumexp(queries, candidates, scale, anchors[:, None], chunk_size)
    positive_logits = (queries * z[positives]).sum(dim=1) * scale
    return LossTerms((lse - positive_logits).sum(), 2 * n)


@OBJECTIVES.register("infonce", "ntxent")
class InfoNCE(ContrastiveObjective):
    r"""NT-Xent (normalised temperature-scaled cross-entropy), the InfoNCE loss of SimCLR.

    With ``z = normalize(cat([z_a, z_b]))`` (2N rows; rows ``i`` and ``i + N`` are the two views
    of sample ``i``), ``p(i) = (i + N) mod 2N`` and ``s_ij = z_i . z_j / temperature``::

        loss_i = -s_{i p(i)} + log( sum_{j != i} exp(s_ij) + sum_{q < K} exp(z_i . k_q / temperature) )
        loss   = mean over the 2N anchors i

    The denominator holds the positive and the 2N - 2 other rows of the batch, plus the K
    normalised queue ``keys`` when given (MoCo-style extra negatives). Embeddings are
    L2-normalised internally (cosine similarity), as in the paper.

    Args:
        temperature: ``tau``; 0.1-0.5 for SimCLR-style training. Works down to 0.01 in float32,
            bfloat16 and float16 (the maths always runs in float32).
        chunk_size: if set, the (2N) x (2N + K) similarities are computed ``chunk_size`` rows at a
            time and recomputed in the backward pass: the same value and gradient with peak memory
            O(chunk_size x 2N) instead of O((2N)^2). See :mod:`contrastkit.objectives.chunked`.

    Inputs:
        z_a, z_b: (N, d) embeddings of the two views; row i of each comes from sample i.
        keys: optional (K, d) extra negatives, the same on every process (e.g.
            :class:`contrastkit.nn.queue.MemoryQueue` ``.keys()``), no gradient needed.

    References:
        - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
          ICML 2020 (SimCLR, NT-Xent). https://arxiv.org/abs/2002.05709
        - van den Oord et al., "Representation Learning with Contrastive Predictive Coding",
          2018 (InfoNCE). https://arxiv.org/abs/1807.03748
        - He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
          CVPR 2020 (queue of negatives). https://arxiv.org/abs/1911.05722

    Example::

        objective = objectives.get("ntxent", temperature=0.2)
        loss = objective(projector(encoder(view_a)), projector(encoder(view_b)))
    """

    def __init__(self, temperature: float = 0.1, chunk_size: int | None = None):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.chunk_size = chunk_size

    def loss_terms(
        self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None, keys: Tensor | None = None
    ) -> LossTerms:
        return ntxent_terms(z_a, z_b, self.temperature, keys, anchor_rows, self.chunk_size)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, chunk_size={self.chunk_size}"
