"""Representative words prediction (ROP): a pairwise loss on two word sets' relevance to a document.

PROP and B-PROP sample two word sets ``s+`` and ``s-`` for a document d and call the one with the higher
likelihood under the document the positive; a relevance model scores each (set, document) pair (the
[CLS] output of a cross-encoder through a linear layer) and is trained to rank the positive above::

    hinge:    loss_i = max(0, margin - score(s+_i, d_i) + score(s-_i, d_i))      (PROP's, margin 1)
    softmax:  loss_i = -log( exp(score(s+_i, d_i)) / (exp(score(s+_i, d_i)) + exp(score(s-_i, d_i))) )
                     = softplus(score(s-_i, d_i) - score(s+_i, d_i))
    loss = 1/N sum_i loss_i

References:
    - Ma, Guo, Zhang, Fan, Ji & Cheng, "PROP: Pre-training with Representative Words Prediction for
      Ad-hoc Retrieval", WSDM 2021. https://arxiv.org/abs/2010.10137
    - Ma, Guo, Zhang, Fan, Ji & Cheng, "B-PROP: Bootstrapped Pre-training with Representative Words
      Prediction for Ad-hoc Retrieval", SIGIR 2021. https://arxiv.org/abs/2104.09791

Used by :mod:`contrastkit.modalities.text.methods.bprop`; the word sets come from
:mod:`contrastkit.modalities.text.representative_words`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES

FORMS = ("hinge", "softmax")


@in_float32
def pairwise_ranking_losses(positive_scores: Tensor, negative_scores: Tensor, form: str = "hinge",
                            margin: float = 1.0) -> Tensor:
    """(N,) per-pair losses: ``max(0, margin - s+ + s-)`` (hinge) or ``softplus(s- - s+)`` (softmax)."""
    if form == "hinge":
        return (margin - positive_scores + negative_scores).clamp_min(0.0)
    if form == "softmax":
        return F.softplus(negative_scores - positive_scores)
    raise ConfigError(f"Unknown pairwise form '{form}'. Valid forms: {', '.join(FORMS)}.")


def representative_words_loss(positive_scores: Tensor, negative_scores: Tensor, form: str = "hinge",
                              margin: float = 1.0) -> Tensor:
    """``1/N sum_i loss_i``: the mean pairwise loss of the module docstring."""
    return pairwise_ranking_losses(positive_scores, negative_scores, form, margin).mean()


@OBJECTIVES.register("representative_words")
class RepresentativeWordsRanking(ContrastiveObjective):
    r"""Rank each document's more likely word set above its less likely one (PROP / B-PROP's ROP).

    ::

        loss = 1/N sum_i max(0, margin - s+_i + s-_i)          (form="hinge", PROP's margin 1)
        loss = 1/N sum_i softplus(s-_i - s+_i)                 (form="softmax")

    Called as ``objective(positive_scores, negative_scores)``: two (N,) (or (N, 1)) relevance scores,
    row i the scores of document i with its positive and its negative word set. Each pair's term is
    its own (no in-batch negatives), so under several processes the loss is the mean over the pairs
    of all of them.

    Args:
        form: ``hinge`` (default) or ``softmax``.
        margin: the hinge's margin (1.0).

    References:
        - Ma et al., "PROP: Pre-training with Representative Words Prediction for Ad-hoc Retrieval",
          WSDM 2021. https://arxiv.org/abs/2010.10137
        - Ma et al., "B-PROP: Bootstrapped Pre-training with Representative Words Prediction for
          Ad-hoc Retrieval", SIGIR 2021. https://arxiv.org/abs/2104.09791
    """

    not_for_view_pairs = (
        "it ranks two relevance scores of each document (its positive and its negative word set), "
        "not two views' embeddings"
    )

    def __init__(self, form: str = "hinge", margin: float = 1.0):
        super().__init__()
        if form not in FORMS:
            raise ConfigError(f"Unknown pairwise form '{form}'. Valid forms: {', '.join(FORMS)}.")
        if not margin >= 0:
            raise ConfigError(f"Option 'margin' must be 0 or more, got {margin}.")
        self.form, self.margin = form, float(margin)

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        positive, negative = _scores(z_a, "positive"), _scores(z_b, "negative")
        if positive.shape != negative.shape:
            raise DataError(f"representative_words: one positive and one negative score per document, got "
                            f"{tuple(positive.shape)} and {tuple(negative.shape)} scores.")
        losses = pairwise_ranking_losses(positive, negative, self.form, self.margin)
        rows = anchor_range(anchor_rows, positive.shape[0], positive.device)
        return LossTerms(losses[rows].sum(), positive.shape[0])

    def extra_repr(self) -> str:
        return f"form={self.form}, margin={self.margin}"


def _scores(scores: Tensor, which: str) -> Tensor:
    if scores.dim() == 2 and scores.shape[1] == 1:
        return scores[:, 0]
    if scores.dim() != 1:
        raise DataError(f"representative_words: the {which} scores must be (N,) or (N, 1), got {tuple(scores.shape)}.")
    return scores
