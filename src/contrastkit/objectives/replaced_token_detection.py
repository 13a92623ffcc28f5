"""ELECTRA's replaced-token detection: a per-token binary loss, "was this token replaced?".

Clark, Luong, Le & Manning, "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than
Generators", ICLR 2020, Sec. 2 (https://arxiv.org/abs/2003.10555); used as phase 1 and, beside a
sentence-level contrastive term, phase 2 of the bag-of-tricks report on GLUE ("Bag of Tricks for
Effective Language Model Pretraining and Downstream Adaptation: A Case Study on GLUE", Zhong et
al., 2023, https://arxiv.org/abs/2302.09268).

A small generator fills the masked positions of ``x`` with samples from its MLM distribution,
giving ``x^corrupt``; the discriminator reads ``x^corrupt`` and scores each token ``t`` with a logit
``s_t`` of "replaced" (``sigma(s_t)``; the paper writes ``D = 1 - sigma(s_t)``, the probability of
"original", which is the same model). With ``y_t = 1[x^corrupt_t != x_t]`` -- a sampled token that
happens to equal the original counts as original -- and ``N`` the non-padding tokens of the batch::

    L_Disc = 1/|N| sum_{(i,t) in N} -( y_t log sigma(s_t) + (1 - y_t) log(1 - sigma(s_t)) )

    L_ELECTRA = L_MLM(generator) + lambda L_Disc,      lambda = 50 (the paper's, Sec. 3.1 / App. A)

The mean is over every non-padding token of the batch, special tokens included, as ELECTRA's code
weights the per-token loss by the input mask. The generator is trained by maximum likelihood only:
no gradient flows from L_Disc through the sampling into the generator.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES

ELECTRA_DISCRIMINATOR_WEIGHT = 50.0


def replaced_labels(corrupted_ids: Tensor, original_ids: Tensor) -> Tensor:
    """``y = 1[x^corrupt != x]`` as float: a generator sample equal to the original is not replaced."""
    return (corrupted_ids != original_ids).float()


def _check(logits: Tensor, replaced: Tensor, attention_mask: Tensor) -> None:
    if logits.dim() != 2 or replaced.shape != logits.shape or attention_mask.shape != logits.shape:
        raise DataError(f"replaced_token_detection: logits, replaced and attention_mask must all be (B, L); got "
                        f"{tuple(logits.shape)}, {tuple(replaced.shape)} and {tuple(attention_mask.shape)}.")


@in_float32
def replaced_token_detection_terms(logits: Tensor, replaced: Tensor, attention_mask: Tensor,
                                   anchor_rows: slice | None = None) -> LossTerms:
    """The summed binary cross-entropy of the non-padding tokens of sequences ``anchor_rows`` (all
    when None) over the number of non-padding tokens of the whole batch (at least 1)."""
    _check(logits, replaced, attention_mask)
    rows = anchor_range(anchor_rows, logits.shape[0], logits.device)
    weights = attention_mask.to(logits.dtype)
    per_token = F.binary_cross_entropy_with_logits(logits[rows], replaced[rows].to(logits.dtype), reduction="none")
    return LossTerms((per_token * weights[rows]).sum(), weights.sum().clamp_min(1))


def replaced_token_detection_loss(logits: Tensor, replaced: Tensor, attention_mask: Tensor) -> Tensor:
    """``L_Disc``: the mean per-token binary cross-entropy over the non-padding tokens."""
    return replaced_token_detection_terms(logits, replaced, attention_mask).mean()


def electra_loss(generator_mlm: Tensor, discriminator_rtd: Tensor,
                 discriminator_weight: float = ELECTRA_DISCRIMINATOR_WEIGHT) -> Tensor:
    """``L_MLM + lambda L_Disc``: ELECTRA's joint loss of generator and discriminator."""
    return generator_mlm + discriminator_weight * discriminator_rtd


@OBJECTIVES.register("replaced_token_detection")
class ReplacedTokenDetection(ContrastiveObjective):
    r"""ELECTRA's discriminator loss (formula in the module docstring), scaled by ``weight``.

    Called as ``objective(logits, None, replaced=y, attention_mask=m)``: ``logits`` (B, L) the
    discriminator's "replaced" logits, ``y`` (B, L) 1 where the token differs from the original
    (:func:`replaced_labels`), ``m`` (B, L) 1 on real tokens, 0 on padding.

    Distributed: ``replaced`` and ``attention_mask`` are per-sequence inputs; the sum over a
    process's sequences is divided by the gathered batch's count of tokens.

    Args:
        weight: a factor on the loss; ``lambda`` = 50 gives ELECTRA's term as it enters
            ``L_MLM + lambda L_Disc`` (default 1: the plain mean).

    References:
        - Clark et al., "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than
          Generators", ICLR 2020, Sec. 2. https://arxiv.org/abs/2003.10555
        - Zhong et al., "Bag of Tricks for Effective Language Model Pretraining and Downstream
          Adaptation: A Case Study on GLUE", 2023. https://arxiv.org/abs/2302.09268
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("replaced", "attention_mask")
    not_for_view_pairs: ClassVar[str] = ("it scores per-token 'replaced' logits (B, L) against which tokens a "
                                         "generator replaced, not two views")

    def __init__(self, weight: float = 1.0):
        super().__init__()
        if weight <= 0:
            raise ConfigError(f"replaced_token_detection: weight must be positive, got {weight}.")
        self.weight = float(weight)

    def forward(self, logits: Tensor, unused: None = None, **inputs: Tensor) -> Tensor:
        return self.loss_terms(logits, unused, **inputs).mean()

    def loss_terms(self, logits: Tensor, unused: None = None, *, replaced: Tensor, attention_mask: Tensor,
                   anchor_rows: slice | None = None) -> LossTerms:
        if unused is not None:
            raise DataError("replaced_token_detection takes the logits alone; the second input must be None.")
        terms = replaced_token_detection_terms(logits, replaced, attention_mask, anchor_rows)
        return LossTerms(self.weight * terms.total, terms.count)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"

