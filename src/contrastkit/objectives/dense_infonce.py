"""Dense InfoNCE: a contrastive loss between the positions of two views' feature maps.

Chaitanya, Erdil, Karani & Konukoglu, "Contrastive learning of global and local features for medical
image segmentation with limited annotations", NeurIPS 2020 (https://arxiv.org/abs/2006.10511), Sec. 2.2,
the local contrastive loss. A feature map of view ``a`` and one of view ``b`` of the same images are
compared position by position: the position of ``b`` that shows the same part of the image (the
``correspondence``, worked out by the method from the views' geometry) is the positive, the other
positions are negatives.

Inputs: ``maps_a`` (N, h, w, D) and ``maps_b`` (N, h', w', D), channels last (one D-vector per
position); ``correspondence`` (N, h, w) long, for each position ``p`` of image ``i``'s map in view
``a`` the flat index ``c(i, p) = row * w' + column`` of its position in view ``b``, or -1 where that
point of the image is not in view ``b`` (outside the two crops' overlap). With ``s(u, v)`` the cosine
similarity and ``tau`` the temperature, for every valid anchor ``(i, p)``::

    l(i, p) = -log  exp(s(a_ip, b_i,c(i,p)) / tau) / sum_{(j, q) in K(i)} exp(s(a_ip, b_jq) / tau)

    loss = sum over valid (i, p) of l(i, p) / (number of valid (i, p))

``negatives="image"`` (the paper's choice): ``K(i)`` is every position ``q`` of image ``i``'s own map
in view ``b`` (the other regions of the same image are the negatives). ``negatives="batch"``: ``K(i)``
is every position of every image of the batch in view ``b`` (other images' positions are negatives
too). A batch without any valid anchor has loss 0.

Deviations from the paper, on purpose: the paper's anchors come from one view and its negatives from
both views' maps of the same image; here the keys are view ``b``'s positions only, so that one
correspondence map (a -> b) defines the loss; the method symmetrises by calling it again with the
views swapped and the b -> a correspondence. The paper's views are intensity transforms of one volume
slice, so its positions correspond one to one; here the views may be cropped, flipped and rescaled,
and the correspondence follows that geometry.

Distributed: ``correspondence`` is a per-sample input; with ``negatives="image"`` every term is within
an image, with ``"batch"`` the keys are the gathered global batch; the count is that of the global batch.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    anchor_range,
    check_temperature,
    in_float32,
    normalize,
)
from contrastkit.objectives.registry import OBJECTIVES

NEGATIVES = ("image", "batch")


def _check(maps_a: Tensor, maps_b: Tensor, correspondence: Tensor) -> None:
    if maps_a.dim() != 4 or maps_b.dim() != 4 or maps_a.shape[0] != maps_b.shape[0] \
            or maps_a.shape[3] != maps_b.shape[3]:
        raise DataError(f"dense_infonce: maps must be (N, h, w, D) and (N, h', w', D) with the same N and D "
                        f"(channels last); got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}.")
    if tuple(correspondence.shape) != tuple(maps_a.shape[:3]):
        raise DataError(f"dense_infonce: correspondence must be (N, h, w) = {tuple(maps_a.shape[:3])} (for each "
                        f"position of maps_a, an index into maps_b's h' * w' positions or -1), got "
                        f"{tuple(correspondence.shape)}.")
    positions_b = maps_b.shape[1] * maps_b.shape[2]
    if correspondence.numel() and (int(correspondence.max()) >= positions_b or int(correspondence.min()) < -1):
        raise DataError(f"dense_infonce: correspondence indices must be in [-1, {positions_b}) (maps_b has "
                        f"{positions_b} positions); got values from {int(correspondence.min())} to "
                        f"{int(correspondence.max())}.")


@in_float32
def dense_infonce_terms(maps_a: Tensor, maps_b: Tensor, correspondence: Tensor, temperature: float,
                        negatives: str = "image", anchor_rows: slice | None = None) -> LossTerms:
    """The summed ``l(i, p)`` of the images ``anchor_rows`` (all when None) and the number of valid
    anchors of the whole batch (at least 1); see the module docstring."""
    _check(maps_a, maps_b, correspondence)
    n, positions_b = maps_a.shape[0], maps_b.shape[1] * maps_b.shape[2]
    rows = anchor_range(anchor_rows, n, maps_a.device)
    anchors = normalize(maps_a[rows].flatten(1, 2))  # (R, P, D)
    keys = normalize(maps_b.flatten(1, 2))  # (N, Q, D)
    target = correspondence[rows].flatten(1).long()  # (R, P)
    valid = target >= 0
    if negatives == "image":
        logits = torch.einsum("rpd,rqd->rpq", anchors, keys[rows]) / temperature  # (R, P, Q)
        positive = target.clamp(min=0)
    else:
        logits = torch.einsum("rpd,jqd->rpjq", anchors, keys).flatten(2) / temperature  # (R, P, N * Q)
        positive = rows[:, None] * positions_b + target.clamp(min=0)
    terms = torch.logsumexp(logits, dim=2) - logits.gather(2, positive[:, :, None]).squeeze(2)
    total = torch.where(valid, terms, torch.zeros_like(terms)).sum()
    count = (correspondence >= 0).sum().clamp(min=1)
    return LossTerms(total, count)


@OBJECTIVES.register("dense_infonce")
class DenseInfoNCE(ContrastiveObjective):
    r"""Per-position InfoNCE between two views' feature maps (Chaitanya et al. 2020's local loss;
    formula in the module docstring).

    Args:
        temperature: ``tau`` (the paper: 0.1).
        negatives: ``"image"`` (other positions of the same image, the paper's) or ``"batch"``
            (every position of every image of the batch).

    Called as ``objective(maps_a, maps_b, correspondence=c)`` with ``maps_*`` (N, h, w, D) and
    ``c`` (N, h, w) long (index into ``maps_b``'s positions, -1 where there is none).

    References:
        - Chaitanya, Erdil, Karani & Konukoglu, "Contrastive learning of global and local features
          for medical image segmentation with limited annotations", NeurIPS 2020, Sec. 2.2, Eq. 3.
          https://arxiv.org/abs/2006.10511
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("correspondence",)
    not_for_view_pairs: ClassVar[str] = (
        "it compares positions of two views' feature maps (N, h, w, D) through a correspondence map, "
        "not pooled embeddings; the gcl-local method uses it")

    def __init__(self, temperature: float = 0.1, negatives: str = "image"):
        super().__init__()
        if negatives not in NEGATIVES:
            raise ConfigError(f"dense_infonce: negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}.")
        self.temperature = check_temperature(temperature)
        self.negatives = negatives

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, correspondence: Tensor,
                   anchor_rows: slice | None = None) -> LossTerms:
        return dense_infonce_terms(z_a, z_b, correspondence, self.temperature, self.negatives, anchor_rows)
