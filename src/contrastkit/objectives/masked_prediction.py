"""Masked-token regression: I-JEPA's loss between predicted and target tokens, in latent space.

Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture", CVPR 2023, Eq. 1 (https://arxiv.org/abs/2301.08243). For M target blocks ``B_i``,
predictions ``s_hat_{i,j}`` and target-encoder tokens ``s_y_j`` of width D::

    loss = 1/M sum_i mean_{j in B_i} || s_hat_{i,j} - s_y_j ||^2 / D        (``loss="l2"``)
    loss = 1/M sum_i mean_{j in B_i} 1/D sum_k smoothL1(s_hat_{i,j,k} - s_y_{j,k})   (``"smooth_l1"``)

Eq. 1 sums the squared L2 distances over a block's tokens; the reference code (and this module)
takes the mean over every element -- over tokens and over the D features -- so that the loss
does not grow with the block size or the width. The blocks of a batch have the same number of
tokens, so the mean over elements is the mean over blocks of each block's mean. Smooth-L1 is the
reference code's (Huber with threshold 1). Used by :mod:`contrastkit.modalities.image.methods.jepa`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32

LOSSES = ("l2", "smooth_l1")


def _check(predictions: Tensor, targets: Tensor, loss: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"masked_token_regression: loss must be 'l2' or 'smooth_l1', got {loss!r}.")
    if predictions.shape != targets.shape or predictions.dim() < 2:
        raise DataError(
            "masked_token_regression: predictions and targets must have the same shape, (rows, D) or "
            f"(rows, tokens, D) with rows = predicted blocks, got {tuple(predictions.shape)} and "
            f"{tuple(targets.shape)}."
        )


def _element_errors(predictions: Tensor, targets: Tensor, loss: str) -> Tensor:
    if loss == "l2":
        return F.mse_loss(predictions, targets, reduction="none")
    return F.smooth_l1_loss(predictions, targets, reduction="none")


@in_float32
def masked_token_regression(predictions: Tensor, targets: Tensor, loss: str = "l2") -> Tensor:
    """The mean over every element of the squared (``l2``) or smooth-L1 error, in float32 (float64
    stays float64): I-JEPA's Eq. 1 divided by the number of tokens and the width D."""
    _check(predictions, targets, loss)
    if loss == "l2":
        return F.mse_loss(predictions, targets)
    return F.smooth_l1_loss(predictions, targets)


@in_float32
def masked_token_regression_terms(predictions: Tensor, targets: Tensor, loss: str = "l2",
                                  anchor_rows: slice | None = None) -> LossTerms:
    """The summed element errors of the rows ``anchor_rows`` (all when None; a row is a predicted
    block, or a token for 2-d inputs), over the number of elements of the whole batch."""
    _check(predictions, targets, loss)
    errors = _element_errors(predictions, targets, loss).reshape(predictions.shape[0], -1)
    rows = anchor_range(anchor_rows, predictions.shape[0], predictions.device)
    return LossTerms(errors[rows].sum(), errors.numel())


@OBJECTIVES.register("masked_token_regression")
class MaskedTokenRegression(ContrastiveObjective):
    r"""I-JEPA's regression of masked tokens onto the target encoder's tokens, in latent space.

    ::

        loss = 1/(N T D) sum_{r, t, k} e(s_hat_{r,t,k} - s_y_{r,t,k}),   e(x) = x^2  or  smoothL1(x)

    over ``N`` rows (predicted blocks), ``T`` tokens per row and width ``D``: the mean over
    tokens of ``||s_hat - s_y||^2 / D`` (Eq. 1 divided by the block size and the width, as the
    reference code's mean over elements). Called as ``objective(predictions, targets)``, both
    ``(N, T, D)`` (or ``(N, D)``, one token per row). Neither input is detached here: the method
    computes the targets without gradient (I-JEPA's target encoder is an EMA). Inputs in bf16 /
    fp16 are computed in float32; float64 stays float64.

    A mean over rows of equal size: splitting the rows across processes and gathering them
    (:class:`~contrastkit.nn.distributed.GatheredObjective`) gives the one-process loss.

    Args:
        loss: ``"l2"`` (the paper) or ``"smooth_l1"`` (the reference code's).

    References:
        - Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive
          Architecture", CVPR 2023, Eq. 1. https://arxiv.org/abs/2301.08243
    """

    not_for_view_pairs = (
        "it is a regression without negatives: (z_a, z_b) are a predictor's masked tokens and a target "
        "encoder's tokens whose gradient the method stops (I-JEPA); on two views alone it collapses"
    )

    def __init__(self, loss: str = "l2"):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"masked_token_regression: loss must be 'l2' or 'smooth_l1', got {loss!r}.")
        self.loss = loss

    def forward(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return masked_token_regression(predictions, targets, self.loss)

    def loss_terms(self, predictions: Tensor, targets: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        return masked_token_regression_terms(predictions, targets, self.loss, anchor_rows)

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}"
