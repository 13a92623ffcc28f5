"""DINO's self-distillation loss: the student's crops predict the centred, sharpened teacher outputs.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin, "Emerging Properties in Self-Supervised
Vision Transformers", ICCV 2021 (https://arxiv.org/abs/2104.14294), Eqs. 2-4 and Algorithm 1.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES

# LightlySSL's DINOLoss defaults, used by its CIFAR-10 benchmark (the paper's: tau_s 0.1, tau_t 0.04
# to 0.07, m 0.9).
PAPER_STUDENT_TEMPERATURE = 0.1
PAPER_TEACHER_TEMPERATURE = 0.04
PAPER_CENTER_MOMENTUM = 0.9


@in_float32
@torch.no_grad()
def updated_center(teacher: Tensor, center: Tensor, momentum: float) -> Tensor:
    """``c <- m c + (1 - m) mean_{b, i} t_{b,i}``: the teacher outputs (B, G, K) averaged over the
    samples and the global crops (the paper's Eq. 4); no gradient."""
    return momentum * center + (1.0 - momentum) * teacher.reshape(-1, teacher.shape[-1]).mean(dim=0)


@in_float32
def dino_terms(student: Tensor, teacher: Tensor, center: Tensor,
               student_temperature: float = PAPER_STUDENT_TEMPERATURE,
               teacher_temperature: float = PAPER_TEACHER_TEMPERATURE,
               anchor_rows: slice | None = None) -> LossTerms:
    """DINO's cross-entropy terms of the samples ``anchor_rows`` (all when None), for a given centre;
    see :class:`DINOLoss`. ``student`` (B, V, K), the G global crops first; ``teacher`` (B, G, K)."""
    num_samples, num_crops, _ = student.shape
    num_global = teacher.shape[1]
    samples = anchor_range(anchor_rows, num_samples, student.device)
    targets = F.softmax((teacher[samples].detach() - center) / teacher_temperature, dim=-1)  # (b, G, K)
    log_predictions = F.log_softmax(student[samples] / student_temperature, dim=-1)  # (b, V, K)
    total = log_predictions.new_zeros(())
    for crop in range(num_global):
        others = [v for v in range(num_crops) if v != crop]  # not the student's view of the same crop
        total = total - (targets[:, crop].unsqueeze(1) * log_predictions[:, others]).sum()
    return LossTerms(total, num_samples * num_global * (num_crops - 1))


@OBJECTIVES.register("dino")
class DINOLoss(ContrastiveObjective):
    r"""DINO: cross-entropy from the centred, sharpened teacher to the student, over crop pairs.

    With ``s_v`` the student's outputs (K logits) of crop v of a sample (V crops, the first G
    global), ``t_i`` the teacher's of global crop i, a centre ``c`` (K) and temperatures
    ``tau_s > tau_t``::

        P_t(i) = softmax((t_i - c) / tau_t)          (centring and sharpening; no gradient)
        P_s(v) = softmax(s_v / tau_s)
        loss   = 1 / (B G (V - 1)) sum_b sum_{i < G} sum_{v != i} -sum_k P_t(i)_k log P_s(v)_k
        c     <- m c + (1 - m) mean_{b, i} t_{b,i}        (after the loss, from this batch)

    Every global crop of the teacher is predicted from every student crop but the same one (the
    paper's Algorithm 1 for two crops; Eq. 3 for multi-crop); normalised by the number of terms as
    the paper's code. Centring keeps one dimension from dominating, sharpening keeps the output
    from turning uniform: either alone collapses (the paper's Fig. 7).

    The centre is the buffer ``center`` (saved in checkpoints), updated in training mode only
    (``objective.eval()`` leaves it); it is allocated at ``output_dim`` or at the first batch.
    ``teacher_temperature`` may be given per call (the method's warm-up schedule); otherwise the
    constructor's value is used.

    Inputs: ``student`` (B, V, K) as ``z_a`` and ``teacher`` (B, G, K) as ``z_b``; or two (B, K)
    views each, for V = G = 2.

    Data parallelism: under :class:`~contrastkit.nn.distributed.GatheredObjective` both are gathered;
    every rank updates the centre from the whole gathered teacher batch (the paper's code
    all-reduces the batch centre), so the centre stays the same on every rank and equals the
    one-process centre, and rank r sums the terms of its own samples with the global count.

    Args:
        output_dim: K, to allocate the centre at once (None: at the first batch).
        student_temperature: tau_s (default 0.1).
        teacher_temperature: tau_t when none is passed per call (default 0.04).
        center_momentum: m (default 0.9); 1 keeps the centre at zero, i.e. no centring (the
            collapsing variant the tests use).

    References:
        - Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
          Eqs. 2-4, Algorithm 1. https://arxiv.org/abs/2104.14294
    """

    not_for_view_pairs: ClassVar[str] = (
        "it takes a student's outputs of every crop and a momentum teacher's of the global crops: use --method dino"
    )

    def __init__(self, output_dim: int | None = None, student_temperature: float = PAPER_STUDENT_TEMPERATURE,
                 teacher_temperature: float = PAPER_TEACHER_TEMPERATURE,
                 center_momentum: float = PAPER_CENTER_MOMENTUM):
        super().__init__()
        if not student_temperature > 0 or not teacher_temperature > 0:
            raise ConfigError(f"dino: the temperatures must be positive (the paper: 0.1 and 0.04), got "
                              f"{student_temperature} and {teacher_temperature}.")
        if not 0.0 <= center_momentum <= 1.0:
            raise ConfigError(f"dino: center_momentum must be in [0, 1] (the paper: 0.9), got {center_momentum}.")
        if output_dim is not None and (not isinstance(output_dim, int) or output_dim < 1):
            raise ConfigError(f"dino: output_dim must be a positive integer or None, got {output_dim!r}.")
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(output_dim or 0))

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, teacher_temperature: float | None = None,
                   anchor_rows: slice | None = None) -> LossTerms:
        student, teacher = self._crops(z_a, z_b)
        center = self.center if self.center.numel() else student.new_zeros(student.shape[-1])
        if center.shape != (student.shape[-1],):
            raise DataError(f"dino: its centre has {center.numel()} dimensions but the outputs have "
                            f"{student.shape[-1]}; build the objective with output_dim={student.shape[-1]}.")
        tau_t = self.teacher_temperature if teacher_temperature is None else float(teacher_temperature)
        terms = dino_terms(student, teacher, center, self.student_temperature, tau_t, anchor_rows)
        if self.training:
            self._store(updated_center(teacher, center, self.center_momentum))
        return terms

    def forward(self, z_a: Tensor, z_b: Tensor, *, teacher_temperature: float | None = None) -> Tensor:
        return self.loss_terms(z_a, z_b, teacher_temperature=teacher_temperature).mean()

    @staticmethod
    def _crops(z_a: Tensor, z_b: Tensor) -> tuple[Tensor, Tensor]:
        if z_b is None:
            raise DataError("dino: needs the student's outputs (B, V, K) and the teacher's (B, G, K).")
        if z_a.dim() == 2 and z_b.dim() == 2:
            return torch.stack([z_a, z_b], dim=1), torch.stack([z_a, z_b], dim=1)
        if (z_a.dim() != 3 or z_b.dim() != 3 or z_a.shape[0] != z_b.shape[0] or z_a.shape[2] != z_b.shape[2]
                or not 1 <= z_b.shape[1] <= z_a.shape[1] or z_a.shape[1] < 2):
            raise DataError(f"dino: the student's outputs must be (B, V, K) and the teacher's (B, G, K) with "
                            f"1 <= G <= V and V >= 2, got {tuple(z_a.shape)} and {tuple(z_b.shape)}.")
        return z_a, z_b

    @torch.no_grad()
    def _store(self, center: Tensor) -> None:
        if self.center.shape == center.shape:
            self.center.copy_(center)  # in place: the buffer stays the tensor that DDP knows
        else:
            self.center = center.to(self.center.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "center")
        if saved is not None and self.center.numel() == 0 and saved.numel() > 0:
            self.center = torch.zeros_like(saved, dtype=self.center.dtype, device=self.center.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"output_dim={self.center.numel() or None}, student_temperature={self.student_temperature}, "
                f"teacher_temperature={self.teacher_temperature}, center_momentum={self.center_momentum}")
