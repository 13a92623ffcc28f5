"""Image-text (or any two-modality) objectives: CLIP's symmetric cross-entropy and SigLIP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    anchor_range,
    check_pair,
    in_float32,
    normalize,
)


@in_float32
def clip_terms(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    max_scale: float = 100.0,
    anchor_rows: slice | None = None,
) -> LossTerms:
    """CLIP terms of the image rows and text rows ``anchor_rows``; see :class:`CLIPLoss`."""
    check_pair(image, text, "clip")
    n = image.shape[0]
    image, text = normalize(image), normalize(text)
    rows = anchor_range(anchor_rows, n, image.device)
    scale = logit_scale.exp().clamp(max=max_scale)
    image_to_text = scale * image[rows] @ text.T  # row r: image r against every text
    text_to_image = scale * text[rows] @ image.T
    total = (
        F.cross_entropy(image_to_text, rows, reduction="sum") + F.cross_entropy(text_to_image, rows, reduction="sum")
    ) / 2
    return LossTerms(total, n)


@in_float32
def siglip_terms(
    image: Tensor,
    text: Tensor,
    log_temperature: Tensor,
    bias: Tensor,
    anchor_rows: slice | None = None,
) -> LossTerms:
    """SigLIP terms of the pairs (r, j) for image rows r in ``anchor_rows``; see :class:`SigLIPLoss`."""
    check_pair(image, text, "siglip")
    n = image.shape[0]
    image, text = normalize(image), normalize(text)
    rows = anchor_range(anchor_rows, n, image.device)
    logits = image[rows] @ text.T * log_temperature.exp() + bias
    # z_ij = +1 on the matching pair, -1 elsewhere.
    signs = torch.full_like(logits, -1.0)
    signs[torch.arange(len(rows), device=logits.device), rows] = 1.0
    return LossTerms(-F.logsigmoid(signs * logits).sum(), n)


@OBJECTIVES.register("clip")
class CLIPLoss(ContrastiveObjective):
    r"""CLIP's symmetric cross-entropy over image-text similarities, with a learned logit scale.

    With ``u = normalize(image)``, ``v = normalize(text)`` (row i of each from pair i) and
    ``scale = min(exp(logit_scale), max_scale)``::

        logits_ij = scale * u_i . v_j
        loss = ( CE(logits, targets = arange(N)) + CE(logits^T, targets = arange(N)) ) / 2

    with each cross-entropy the mean over its N rows. ``logit_scale`` is a learnable parameter
    initialised to ``log(1 / 0.07)``; ``scale`` is clamped at ``max_scale = 100`` (the paper
    clips it there to prevent training instability); beyond the clamp its gradient is zero.

    Args:
        init_temperature: initial ``1 / scale`` (0.07 in the paper).
        max_scale: the clamp on ``exp(logit_scale)``.
        learn_scale: False keeps ``logit_scale`` fixed (a buffer).

    Inputs:
        z_a: (N, d) image embeddings; z_b: (N, d) text embeddings of the matching captions.
        (Any two modalities or views: row i of each is a positive pair.)

    References:
        - Radford et al., "Learning Transferable Visual Models From Natural Language
          Supervision", ICML 2021. https://arxiv.org/abs/2103.00020
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0, learn_scale: bool = True):
        super().__init__()
        init = torch.tensor(math.log(1.0 / init_temperature))
        if learn_scale:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.max_scale = float(max_scale)

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return clip_terms(z_a, z_b, self.logit_scale, self.max_scale, anchor_rows)

    def extra_repr(self) -> str:
        return f"max_scale={self.max_scale}"


@OBJECTIVES.register("siglip")
class SigLIPLoss(ContrastiveObjective):
    r"""SigLIP: a binary (sigmoid) loss on every image-text pair, with learned temperature and bias.

    With ``u = normalize(image)``, ``v = normalize(text)``, ``t = exp(t')`` and bias ``b``,
    and ``z_ij = 1`` if ``i = j`` else ``-1``::

        loss = -1/N * sum_i sum_j log sigmoid( z_ij * (t * u_i . v_j + b) )

    normalised by the number of rows N, as in the paper's pseudo-code. ``t'`` starts at
    ``log 10`` and ``b`` at ``-10``, so that the N^2 - N negatives do not dominate the first steps.

    Args:
        init_log_temperature: initial ``t'``.
        init_bias: initial ``b``.

    Inputs:
        z_a: (N, d) image embeddings; z_b: (N, d) text embeddings of the matching captions.

    References:
        - Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023.
          https://arxiv.org/abs/2303.15343
    """

    def __init__(self, init_log_temperature: float = math.log(10.0), init_bias: float = -10.0):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(float(init_log_temperature)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return siglip_terms(z_a, z_b, self.log_temperature, self.bias, anchor_rows)
