"""List-wise distillation: KL between a teacher's and a student's softmaxed score rows.

For a query q with teacher scores ``t_j`` and student scores ``s_j`` over the same documents j
(a row of each), temperatures ``tau_t`` and ``tau``::

    loss(q) = KL( softmax(t / tau_t) || softmax(s / tau) )
            = sum_j p_j (log p_j - log softmax(s / tau)_j),    p = softmax(t / tau_t)

averaged over the queries (rows). It is the cross-entropy to the teacher's softened distribution
(Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, Sec. 2,
https://arxiv.org/abs/1503.02531) minus the teacher's entropy (a constant for the student), taken
over a list of candidates as in the list-wise distillation of dense retrievers (RocketQAv2, Ren et
al., EMNLP 2021, https://arxiv.org/abs/2110.07367; here over the whole corpus, not a sampled list).
Used by :mod:`contrastkit.modalities.text.methods.hybrid_distill`, whose teacher is the dense +
BM25 fusion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, check_temperature


def listwise_distillation(student: Tensor, teacher: Tensor, temperature: float,
                          teacher_temperature: float) -> Tensor:
    """Mean over rows of ``KL(softmax(teacher / tau_t) || softmax(student / tau))``; rows are queries,
    columns the documents both score (Q, N)."""
    target = torch.log_softmax(teacher / teacher_temperature, dim=1)
    return torch.nn.functional.kl_div(torch.log_softmax(student / temperature, dim=1), target,
                                      log_target=True, reduction="batchmean")


def listwise_distillation_terms(student: Tensor, teacher: Tensor, temperature: float, teacher_temperature: float,
                                anchor_rows: slice | None = None) -> LossTerms:
    """The KL of the rows ``anchor_rows`` (all when None), summed, over the number of rows Q."""
    target = torch.log_softmax(teacher / teacher_temperature, dim=1)
    per_row = F.kl_div(torch.log_softmax(student / temperature, dim=1), target, log_target=True,
                       reduction="none").sum(dim=1)
    rows = anchor_range(anchor_rows, student.shape[0], student.device)
    return LossTerms(per_row[rows].sum(), student.shape[0])


@OBJECTIVES.register("listwise_distillation")
class ListwiseDistillation(ContrastiveObjective):
    r"""List-wise distillation of a teacher's ranking into a student's scores: a KL per row.

    ::

        loss = 1/Q sum_q sum_j p_qj (log p_qj - log softmax(s_q / tau)_j),   p_q = softmax(t_q / tau_t)

    Called as ``objective(student, teacher)``, both ``(Q, N)``: row q holds the scores of query q
    for the same N candidates (hybrid-distill: the whole corpus). The teacher is not detached
    here; pass scores without gradient (as hybrid-distill does) unless the teacher is trained too.

    A mean over rows (queries): splitting the queries across processes and gathering them
    (:class:`~contrastkit.nn.distributed.GatheredObjective`) gives the one-process loss.

    Args:
        temperature: tau of the student's softmax (hybrid-distill: 0.05).
        teacher_temperature: tau_t of the teacher's (0.05).

    References:
        - Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, Sec. 2.
          https://arxiv.org/abs/1503.02531
        - Ren et al., "RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage
          Re-ranking", EMNLP 2021 (dynamic list-wise distillation). https://arxiv.org/abs/2110.07367
    """

    not_for_view_pairs = (
        "it is a distillation without negatives: (z_a, z_b) are a student's and a teacher's score rows over "
        "the same candidates; on two views' embeddings it only aligns their softmaxes and collapses"
    )

    def __init__(self, temperature: float = 0.05, teacher_temperature: float = 0.05):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.teacher_temperature = check_temperature(teacher_temperature, "teacher_temperature")

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        _check_scores(student, teacher)
        return listwise_distillation(student, teacher, self.temperature, self.teacher_temperature)

    def loss_terms(self, student: Tensor, teacher: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        _check_scores(student, teacher)
        return listwise_distillation_terms(student, teacher, self.temperature, self.teacher_temperature, anchor_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, teacher_temperature={self.teacher_temperature}"


def _check_scores(student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise DataError(
            "listwise_distillation: the student's and the teacher's scores must be (queries, candidates) "
            f"tensors of the same shape, got {tuple(student.shape)} and {tuple(teacher.shape)}."
        )
