"""Decoupled contrastive learning (DCL) and its von Mises-Fisher weighted form (DCLW)."""

from __future__ import annotations

import torch
from torch import Tensor

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
def dcl_terms(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float,
    sigma: float | None = None,
    anchor_rows: slice | None = None,
    chunk_size: int | None = None,
) -> LossTerms:
    """DCL (``sigma=None``) or DCLW terms of the anchors of samples ``anchor_rows``; see :class:`DCL`."""
    check_pair(z_a, z_b, "dcl")
    n = z_a.shape[0]
    z = normalize(torch.cat([z_a, z_b]))
    anchors = two_view_anchors(anchor_rows, n, z.device)
    positives = (anchors + n) % (2 * n)
    queries = z[anchors]
    scale = 1.0 / temperature
    # Decoupling: the positive leaves the denominator along with the anchor itself.
    excluded = torch.stack([anchors, positives], dim=1)
    lse_negatives = masked_logsumexp(queries, z, scale, excluded, chunk_size)
    positive_logits = (queries * z[positives]).sum(dim=1) * scale
    if sigma is not None:
        positive_logits = positive_logits * vmf_weights(z[:n], z[n:], sigma)[anchors % n]
    return LossTerms((lse_negatives - positive_logits).sum(), 2 * n)


def vmf_weights(u_a: Tensor, u_b: Tensor, sigma: float) -> Tensor:
    """DCLW weights ``w_i = 2 - exp(u_a_i . u_b_i / sigma) / mean_k exp(u_a_k . u_b_k / sigma)``.

    Computed as ``2 - N * softmax(c / sigma)`` over the N positive pairs of the (global) batch,
    from unit vectors, and detached: the weights rescale the positive term but are not trained
    through, as in the reference implementation.
    """
    cosines = (u_a.detach() * u_b.detach()).sum(dim=1)
    return 2.0 - u_a.shape[0] * torch.softmax(cosines / sigma, dim=0)


@OBJECTIVES.register("dcl")
class DCL(ContrastiveObjective):
    r"""Decoupled contrastive loss: NT-Xent without the positive in the denominator.

    With ``z = normalize(cat([z_a, z_b]))`` (2N rows), ``p(i) = (i + N) mod 2N`` and
    ``s_ij = z_i . z_j / temperature``::

        loss_i = -w_i * s_{i p(i)} + log sum_{j not in {i, p(i)}} exp(s_ij)
        loss   = mean over the 2N anchors i

    with ``w_i = 1`` (DCL). Removing the positive from the denominator removes the
    negative-positive coupling factor of NT-Xent's gradient, so small batches train well.
    Embeddings are L2-normalised internally. The reference code sums the two directions'
    means, which is twice this value (the same optimum; scale the learning rate accordingly).

    Args:
        temperature: ``tau``.
        chunk_size: compute the similarities ``chunk_size`` rows at a time (exact; O(chunk x 2N)
            memory), as for :class:`~contrastkit.objectives.infonce.InfoNCE`.

    Inputs:
        z_a, z_b: (N, d) embeddings of the two views; row i of each comes from sample i.

    References:
        - Yeh et al., "Decoupled Contrastive Learning", ECCV 2022. https://arxiv.org/abs/2110.06848
    """

    def __init__(self, temperature: float = 0.1, chunk_size: int | None = None):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.chunk_size = chunk_size

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return dcl_terms(z_a, z_b, self.temperature, None, anchor_rows, self.chunk_size)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, chunk_size={self.chunk_size}"


@OBJECTIVES.register("dclw")
class DCLW(DCL):
    r"""DCL with the negative von Mises-Fisher weight on the positive term.

    As :class:`DCL`, with ``c_i = u_a_i . u_b_i`` the cosine of sample ``i``'s two views and both
    of its anchors weighted by::

        w_i = 2 - exp(c_i / sigma) / mean_{k < N} exp(c_k / sigma)

    over the N positive pairs of the whole (global) batch; ``w`` is detached. Easy positives
    (large ``c_i``) get weights below 1, hard ones up to 2; the mean weight is 1.

    Args:
        temperature: ``tau``.
        sigma: concentration of the weighting, 0.5 in the paper.
        chunk_size: as for :class:`DCL`.

    References:
        - Yeh et al., "Decoupled Contrastive Learning", ECCV 2022, Sec. 3.3 (DCLW).
          https://arxiv.org/abs/2110.06848
    """

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, chunk_size: int | None = None):
        super().__init__(temperature, chunk_size)
        self.sigma = check_temperature(sigma, "sigma")

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return dcl_terms(z_a, z_b, self.temperature, self.sigma, anchor_rows, self.chunk_size)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sigma={self.sigma}, chunk_size={self.chunk_size}"
