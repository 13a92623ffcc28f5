"""Masked language modelling: cross-entropy over the vocabulary at the masked positions only.

Devlin, Chang, Lee & Toutanova, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", NAACL 2019, Sec. 3.1 "Task #1: Masked LM" (https://arxiv.org/abs/1810.04805). With
``M`` the positions chosen for masking in the batch (:func:`contrastkit.modalities.text.masked_lm.
mask_tokens`: 15 % of the ordinary tokens, 80/10/10 [MASK] / random / kept), ``s_{i,t}`` the logits
over the vocabulary V at token ``t`` of sequence ``i`` and ``x_{i,t}`` the original token::

    L_MLM = 1/|M| sum_{(i,t) in M} -log softmax(s_{i,t})[x_{i,t}]

Positions outside ``M`` carry the target -100 and take no part: neither the loss nor its gradient
depends on their logits. The mean is over the masked tokens of the whole batch (as BERT's and
Hugging Face's ``ignore_index`` cross-entropy), not a mean of per-sequence means. A batch without
a masked token has loss 0. Used by ELECTRA's generator (``rtd-contrastive``) and B-PROP.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES

IGNORE_INDEX = -100


def _check(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() < 2 or targets.shape != logits.shape[:-1]:
        raise DataError(f"masked_language_modelling: logits must be (B, L, V) and targets (B, L) token ids "
                        f"(-100 where not masked), or packed (M, V) and (M,); got {tuple(logits.shape)} and "
                        f"{tuple(targets.shape)}.")
    if targets.dtype.is_floating_point:
        raise DataError(f"masked_language_modelling: targets are integer token ids, got dtype {targets.dtype}.")
    largest = int(targets.max()) if targets.numel() else -1
    if largest >= logits.shape[-1]:
        raise DataError(f"masked_language_modelling: a target id ({largest}) is not below the vocabulary size "
                        f"V = {logits.shape[-1]} of the logits.")


@in_float32
def masked_token_terms(logits: Tensor, targets: Tensor, anchor_rows: slice | None = None) -> LossTerms:
    """The summed cross-entropy of the masked tokens of sequences ``anchor_rows`` (all when None)
    over the number of masked tokens of the whole batch (at least 1)."""
    _check(logits, targets)
    rows = anchor_range(anchor_rows, logits.shape[0], logits.device)
    masked = targets != IGNORE_INDEX
    # Read only the masked positions' logits, so the others get no gradient at all (not even 0 * inf).
    selected = masked[rows]
    cross_entropy = F.cross_entropy(logits[rows][selected], targets[rows][selected], reduction="sum")
    return LossTerms(cross_entropy, masked.sum().clamp_min(1))


def masked_token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``L_MLM``: the mean cross-entropy over the masked positions (``targets != -100``)."""
    return masked_token_terms(logits, targets).mean()


@OBJECTIVES.register("masked_language_modelling")
class MaskedLanguageModelling(ContrastiveObjective):
    r"""BERT's masked-language-model loss (formula in the module docstring).

    Called as ``objective(logits, None, targets=x)``: ``logits`` (B, L, V) over the vocabulary,
    ``x`` (B, L) the original token ids at the masked positions and -100 elsewhere (the ``labels``
    of :func:`~contrastkit.modalities.text.masked_lm.mask_tokens`). The masked positions alone may
    be passed packed, ``logits`` (M, V) and ``x`` (M,): a method then spends the projection onto
    the vocabulary on the masked tokens only (``rtd-contrastive`` does).

    Distributed: ``targets`` is a per-row input (a sequence, or a masked token when packed); the sum
    over a process's rows is divided by the number of masked tokens of the gathered batch, so the
    processes' shares add up to the one-process loss (packed rows may differ in number per process).

    References:
        - Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
          Understanding", NAACL 2019, Sec. 3.1. https://arxiv.org/abs/1810.04805
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("targets",)
    not_for_view_pairs: ClassVar[str] = ("it scores per-token logits over a vocabulary (B, L, V) against the "
                                         "masked tokens' ids, not two views")

    def forward(self, logits: Tensor, unused: None = None, **inputs: Tensor) -> Tensor:
        return self.loss_terms(logits, unused, **inputs).mean()

    def loss_terms(self, logits: Tensor, unused: None = None, *, targets: Tensor,
                   anchor_rows: slice | None = None) -> LossTerms:
        if unused is not None:
            raise DataError("masked_language_modelling takes the logits alone; the second input must be None.")
        return masked_token_terms(logits, targets, anchor_rows)
