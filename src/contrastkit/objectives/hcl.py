"""Hard negative contrastive loss (HCL): debiased NT-Xent with negatives reweighted by hardness."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    check_pair,
    check_temperature,
    in_float32,
    mask_value,
    normalize,
    two_view_anchors,
)


@in_float32
def hcl_terms(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float,
    beta: float,
    tau_plus: float,
    anchor_rows: slice | None = None,
) -> LossTerms:
    """HCL terms of the anchors of samples ``anchor_rows``, in log space; see :class:`HCL`."""
    check_pair(z_a, z_b, "hcl")
    n = z_a.shape[0]
    z = normalize(torch.cat([z_a, z_b]))
    anchors = two_view_anchors(anchor_rows, n, z.device)
    positives = (anchors + n) % (2 * n)
    queries = z[anchors]
    logits = queries @ z.T / temperature  # l_ij
    positive_logits = logits.gather(1, positives[:, None]).squeeze(1)  # l_ip
    not_negative = torch.stack([anchors, positives], dim=1)
    num_negatives = 2 * n - 2

    def logsumexp_negatives(values: Tensor) -> Tensor:
        # Mask after scaling: beta * (masked value) would be 0, not -inf, when beta = 0.
        return torch.logsumexp(values.scatter(1, not_negative, mask_value(values.dtype)), dim=1)

    # log R_i = log( sum_j imp_ij e^{l_ij} / mean_j imp_ij ),  imp_ij = e^{beta l_ij}
    log_reweighted = (
        math.log(num_negatives)
        + logsumexp_negatives((beta + 1.0) * logits)
        - logsumexp_negatives(beta * logits)
    )
    if tau_plus > 0:
        # log(R_i - tau_plus * M * e^{l_ip}), written as log R_i + log(1 - e^{d_i}); -inf when d_i >= 0.
        d = math.log(tau_plus * num_negatives) + positive_logits - log_reweighted
        debiased = d < 0
        d_safe = torch.where(debiased, d, torch.full_like(d, -1.0))
        log_numerator = torch.where(
            debiased, log_reweighted + torch.log(-torch.expm1(d_safe)), torch.full_like(d, -math.inf)
        )
    else:
        log_numerator = log_reweighted
    # Ng_i = max(numerator / (1 - tau_plus), M * e^{-1/tau}), the paper's clamp at the smallest
    # value the true negative sum can take with cosine similarities in [-1, 1].
    log_floor = math.log(num_negatives) - 1.0 / temperature
    log_ng = torch.clamp_min(log_numerator - math.log1p(-tau_plus), log_floor)
    losses = torch.logaddexp(positive_logits, log_ng) - positive_logits
    return LossTerms(losses.sum(), 2 * n)


@OBJECTIVES.register("hcl")
class HCL(ContrastiveObjective):
    r"""Hard negative contrastive loss of Robinson et al.: debiased NT-Xent with hard negatives.

    With ``z = normalize(cat([z_a, z_b]))`` (2N rows), ``p(i) = (i + N) mod 2N``,
    ``l_ij = z_i . z_j / temperature``, the ``M = 2N - 2`` negatives ``j not in {i, p(i)}``,
    importance weights ``imp_ij = exp(beta * l_ij)`` and debiasing prior ``tau_plus``::

        R_i    = sum_j imp_ij exp(l_ij) / mean_j imp_ij                       (over negatives j)
        Ng_i   = max( (R_i - tau_plus * M * exp(l_ip)) / (1 - tau_plus),  M * exp(-1 / temperature) )
        loss_i = -log( exp(l_ip) / (exp(l_ip) + Ng_i) )
        loss   = mean over the 2N anchors i

    ``beta`` is the concentration on hard negatives (0: uniform, i.e. the debiased loss of
    Chuang et al. 2020); ``tau_plus`` the prior probability that a "negative" shares the anchor's
    class (0: no debiasing; ``beta = tau_plus = 0`` is NT-Xent). The weights are not detached,
    as in the official code. The clamp keeps ``Ng_i`` at or above its theoretical minimum.
    Computed in log space (``R_i`` via two log-sum-exps), so it is finite at temperature 0.01.
    Embeddings are L2-normalised internally.

    Args:
        temperature: ``tau`` (0.5 in the paper's image experiments).
        beta: concentration parameter of the hardness weighting (paper: 0.5-1; larger values
            focus harder, as used e.g. for multimodal activity recognition).
        tau_plus: class prior ``tau^+`` in [0, 1) (paper: 0.1).

    Inputs:
        z_a, z_b: (N, d) embeddings of the two views; row i of each comes from sample i.

    References:
        - Robinson et al., "Contrastive Learning with Hard Negative Samples", ICLR 2021.
          https://arxiv.org/abs/2010.04592 (official code: github.com/joshr17/HCL)
        - Chuang et al., "Debiased Contrastive Learning", NeurIPS 2020. https://arxiv.org/abs/2007.00224
    """

    def __init__(self, temperature: float = 0.5, beta: float = 1.0, tau_plus: float = 0.1):
        super().__init__()
        self.temperature = check_temperature(temperature)
        if not 0.0 <= tau_plus < 1.0:
            raise ConfigError(f"Option 'tau_plus' of hcl must be in [0, 1), got {tau_plus}; the paper uses 0.1.")
        if beta < 0:
            raise ConfigError(f"Option 'beta' of hcl must be >= 0, got {beta}; 0 weights all negatives equally.")
        self.beta = float(beta)
        self.tau_plus = float(tau_plus)

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return hcl_terms(z_a, z_b, self.temperature, self.beta, self.tau_plus, anchor_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, beta={self.beta}, tau_plus={self.tau_plus}"
