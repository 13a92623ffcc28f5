"""MSN's prototype cross-entropy with target sharpening and mean-entropy maximisation.

Assran, Caron, Misra, Bojanowski, Bordes, Vincent, Joulin, Rabbat & Ballas, "Masked Siamese
Networks for Label-Efficient Learning", ECCV 2022 (https://arxiv.org/abs/2204.07141), Sec. 3 and
Eqs. 1-2.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.swav import sinkhorn_codes

# The paper's (and LightlySSL's MSNLoss) values: tau 0.1, targets sharpened with T 0.25 (tau+ =
# 0.025), mean-entropy weight 1, three Sinkhorn iterations on the targets (LightlySSL's default; the
# paper's code has it on as well).
PAPER_TEMPERATURE = 0.1
PAPER_SHARPEN_TEMPERATURE = 0.25
PAPER_REGULARIZATION_WEIGHT = 1.0
PAPER_SINKHORN_ITERATIONS = 3


@in_float32
def msn_terms(anchors: Tensor, targets: Tensor, prototypes: Tensor, temperature: float = PAPER_TEMPERATURE,
              sharpen_temperature: float = PAPER_SHARPEN_TEMPERATURE,
              regularization_weight: float = PAPER_REGULARIZATION_WEIGHT,
              sinkhorn_iterations: int = PAPER_SINKHORN_ITERATIONS, anchor_rows: slice | None = None) -> LossTerms:
    """MSN's loss terms of the samples ``anchor_rows`` (all when None); see :class:`MSNLoss`.

    ``anchors`` (B, M, d): M anchor views per sample; ``targets`` (B, d): the target view;
    ``prototypes`` (K, d). The mean-entropy term is a statistic of the whole batch: each anchor view
    adds ``lambda (log K - H(p_mean))`` to the sum, whose normaliser is B M."""
    num_samples, num_views, _ = anchors.shape
    num_prototypes = prototypes.shape[0]
    units = F.normalize(prototypes, dim=-1)
    log_p = F.log_softmax(F.normalize(anchors, dim=-1) @ units.T / temperature, dim=-1)  # (B, M, K)
    with torch.no_grad():
        # softmax(s / tau) ** (1 / T), renormalised, is softmax(s / (tau T)); in logs for Sinkhorn.
        target_logits = F.normalize(targets, dim=-1) @ units.T / (temperature * sharpen_temperature)
        target_p = sinkhorn_codes(F.log_softmax(target_logits, dim=-1), epsilon=1.0, iterations=sinkhorn_iterations)
    samples = anchor_range(anchor_rows, num_samples, anchors.device)
    total = -(target_p[samples].unsqueeze(1) * log_p[samples]).sum()
    if regularization_weight:
        mean_p = log_p.exp().mean(dim=(0, 1))  # over every anchor view of the batch
        entropy = -(mean_p * mean_p.clamp_min(1e-30).log()).sum()
        total = total + len(samples) * num_views * regularization_weight * (math.log(num_prototypes) - entropy)
    return LossTerms(total, num_samples * num_views)


@OBJECTIVES.register("msn")
class MSNLoss(ContrastiveObjective):
    r"""MSN: masked anchor views predict the sharpened prototype assignment of an unmasked target view.

    With ``z_{b,m}`` the projection of anchor view m of sample b (masked patches dropped), ``z+_b``
    the EMA target's projection of the target view, K prototypes ``q_k`` (learned; every vector is
    L2-normalised in the loss) and temperatures ``tau`` and ``T``::

        p_{b,m}  = softmax(<z_{b,m}, q> / tau)
        p+_b     = sinkhorn(softmax(<z+_b, q> / tau) ** (1 / T))         (sharpened; no gradient)
        p_mean   = mean_{b,m} p_{b,m}
        loss     = 1 / (B M) sum_{b,m} H(p+_b, p_{b,m})  +  lambda (log K - H(p_mean))

    ``H(p+, p) = -sum_k p+_k log p_k``. The second term (mean-entropy maximisation, ME-MAX) keeps
    the prototypes in use across the batch: without it (``regularization_weight = 0``) every view
    can be assigned to one prototype (the paper's Sec. 3 and Table 6). ``log K`` makes it
    non-negative (LightlySSL adds it too). The Sinkhorn-Knopp step (``sinkhorn_iterations``, the
    equal-partition scaling of :func:`~contrastkit.objectives.swav.sinkhorn_codes` applied to the
    sharpened targets) follows LightlySSL's ``MSNLoss`` and the paper's code; 0 skips it.

    Inputs: anchors (B, M, d) or (B, d) as ``z_a``; targets (B, d) as ``z_b``; ``prototypes``
    (K, d), a parameter of the method (the same on every process, not a per-sample input).

    Data parallelism: under :class:`~contrastkit.nn.distributed.GatheredObjective` every rank
    computes the Sinkhorn targets and ``p_mean`` over the whole gathered batch and sums the
    cross-entropy of its own samples: loss and gradients equal one process on the whole batch.

    Args:
        temperature: tau (default 0.1).
        sharpen_temperature: T (default 0.25; the targets' temperature is tau T = 0.025).
        regularization_weight: lambda (default 1).
        sinkhorn_iterations: on the targets (default 3; 0 skips them).

    References:
        - Assran et al., "Masked Siamese Networks for Label-Efficient Learning", ECCV 2022, Sec. 3.
          https://arxiv.org/abs/2204.07141

    Example::

        anchors = projection(encoder(anchor_views, keep=unmasked))        # (B, M, d)
        targets = target_projection(target_encoder(target_view))          # (B, d)
        loss = objectives.get("msn")(anchors, targets, prototypes=prototypes)
    """

    not_for_view_pairs: ClassVar[str] = (
        "it needs learned prototypes beside the two views: use --method msn, which has them"
    )

    def __init__(self, temperature: float = PAPER_TEMPERATURE, sharpen_temperature: float = PAPER_SHARPEN_TEMPERATURE,
                 regularization_weight: float = PAPER_REGULARIZATION_WEIGHT,
                 sinkhorn_iterations: int = PAPER_SINKHORN_ITERATIONS):
        super().__init__()
        if not temperature > 0 or not 0 < sharpen_temperature <= 1:
            raise ConfigError(f"msn: temperature must be positive and sharpen_temperature in (0, 1] (the paper: 0.1 "
                              f"and 0.25), got {temperature} and {sharpen_temperature}.")
        if not regularization_weight >= 0:
            raise ConfigError(f"msn: regularization_weight must be >= 0 (the paper: 1), got {regularization_weight}.")
        if not isinstance(sinkhorn_iterations, int) or sinkhorn_iterations < 0:
            raise ConfigError(f"msn: sinkhorn_iterations must be a whole number >= 0, got {sinkhorn_iterations!r}.")
        self.temperature = float(temperature)
        self.sharpen_temperature = float(sharpen_temperature)
        self.regularization_weight = float(regularization_weight)
        self.sinkhorn_iterations = sinkhorn_iterations

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, prototypes: Tensor,
                   anchor_rows: slice | None = None) -> LossTerms:
        anchors = z_a.unsqueeze(1) if z_a.dim() == 2 else z_a
        if (anchors.dim() != 3 or z_b is None or z_b.dim() != 2 or z_b.shape[0] != anchors.shape[0]
                or prototypes.dim() != 2 or not anchors.shape[2] == z_b.shape[1] == prototypes.shape[1]):
            raise DataError(f"msn: needs anchors (B, M, d) or (B, d), targets (B, d) and prototypes (K, d); got "
                            f"{tuple(z_a.shape)}, {None if z_b is None else tuple(z_b.shape)} and "
                            f"{tuple(prototypes.shape)}.")
        return msn_terms(anchors, z_b, prototypes, self.temperature, self.sharpen_temperature,
                         self.regularization_weight, self.sinkhorn_iterations, anchor_rows)

    def forward(self, z_a: Tensor, z_b: Tensor, *, prototypes: Tensor) -> Tensor:  # type: ignore[override]
        return self.loss_terms(z_a, z_b, prototypes=prototypes).mean()

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, sharpen_temperature={self.sharpen_temperature}, "
                f"regularization_weight={self.regularization_weight}, sinkhorn_iterations={self.sinkhorn_iterations}")
