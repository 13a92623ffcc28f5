"""Pair-score distillation: a bi-encoder's pair similarity regressed onto a teacher's pair scores.

For pairs (a_i, b_i) embedded by the student as ``u_i``, ``v_i`` and scored by a teacher (a
cross-encoder that reads both sentences at once) as ``t_i``::

    loss = 1/N sum_i ( cos(u_i, v_i) - t_i )^2

Distilled Sentence Embedding (Barkan, Razin, Malkiel, Katz, Caciularu & Koenigstein, "Scalable
Attentive Sentence-Pair Modeling via Distilled Sentence Embedding", AAAI 2020,
https://arxiv.org/abs/1908.05161) trains a sentence-embedding student to reconstruct the
sentence-pair scores of a cross-attentive teacher with an L2 loss between the two models' outputs.
There the student scores a pair with a small network over ``[u, v, u * v, |u - v|]``; here the
student's score is the cosine itself, so that the embeddings alone score a pair (what STS
evaluation and retrieval use), and the teacher's score is in the cosine's units (the
cross-encoder of :mod:`contrastkit.modalities.text.cross_encoder` gives sigmoid scores in [0, 1], the STS
score / 5 it was trained on). Used by :mod:`contrastkit.modalities.text.methods.dse`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range
from contrastkit.objectives.registry import OBJECTIVES


def pair_score_errors(u: Tensor, v: Tensor, teacher_scores: Tensor) -> Tensor:
    """``(cos(u_i, v_i) - t_i)^2`` per pair (N,)."""
    cosines = F.cosine_similarity(u, v, dim=1, eps=1e-12)
    return (cosines - teacher_scores.to(cosines.dtype)) ** 2


def pair_score_distillation(u: Tensor, v: Tensor, teacher_scores: Tensor) -> Tensor:
    """``1/N sum_i (cos(u_i, v_i) - t_i)^2``: the mean squared gap between the student's cosine and
    the teacher's score of each pair."""
    return pair_score_errors(u, v, teacher_scores).mean()


@OBJECTIVES.register("pair_score_distillation")
class PairScoreDistillation(ContrastiveObjective):
    r"""Regress the cosine of each pair's two embeddings onto the teacher's score of the pair.

    ::

        loss = 1/N sum_i (cos(u_i, v_i) - t_i)^2

    Called as ``objective(u, v, teacher_scores=t)``: ``u``, ``v`` (N, D) the student's embeddings of
    the pairs' first and second sentences, ``t`` (N,) the teacher's scores, without gradient. A
    mean over pairs: under several processes each pair's term is its own (no in-batch negatives).

    References:
        - Barkan et al., "Scalable Attentive Sentence-Pair Modeling via Distilled Sentence
          Embedding", AAAI 2020. https://arxiv.org/abs/1908.05161
    """

    per_sample_inputs = ("teacher_scores",)
    not_for_view_pairs = (
        "it regresses each pair's cosine onto a teacher's score of that pair (teacher_scores); two views "
        "without scores have nothing to regress onto"
    )

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None,
                   teacher_scores: Tensor | None = None) -> LossTerms:
        _check_pairs(z_a, z_b, teacher_scores)
        errors = pair_score_errors(z_a, z_b, teacher_scores)
        rows = anchor_range(anchor_rows, z_a.shape[0], z_a.device)
        return LossTerms(errors[rows].sum(), z_a.shape[0])


def _check_pairs(u: Tensor, v: Tensor, teacher_scores: Tensor | None) -> None:
    if teacher_scores is None:
        raise DataError("pair_score_distillation needs teacher_scores: one teacher score per pair (N,).")
    if u.dim() != 2 or u.shape != v.shape or teacher_scores.shape != (u.shape[0],):
        raise DataError(
            "pair_score_distillation: the pairs' embeddings must be two (N, D) tensors and the teacher's "
            f"scores (N,), got {tuple(u.shape)}, {tuple(v.shape)} and {tuple(teacher_scores.shape)}.")
