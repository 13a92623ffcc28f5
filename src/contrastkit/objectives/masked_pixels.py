"""MAE's reconstruction loss: per-patch-normalised pixel regression on the masked patches only.

He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
Sec. 3 "Reconstruction target" (https://arxiv.org/abs/2111.06377). An image is a set of P patches
``x_p`` of V values (pixels x channels); a random subset M of them is masked, the decoder predicts
``x_hat_p`` for p in M, and::

    loss = 1 / (|M| V) sum_{p in M} || x_hat_p - t(x_p) ||^2

    t(x) = (x - mean(x)) / sqrt(var(x) + eps)     (``norm_pix_loss``: each patch normalised by
                                                   its own mean and unbiased variance, eps 1e-6)
    t(x) = x                                      (plain pixels)

The visible patches are not in the loss ("computing the loss only on masked patches", Sec. 3);
the paper reports that normalised targets improve the representation (Table 1c).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES

NORM_PIX_EPS = 1e-6  # MAE's code: (target - mean) / (var + 1.e-6) ** .5


def normalize_patches(patches: Tensor, eps: float = NORM_PIX_EPS) -> Tensor:
    """Each patch (the last dimension) minus its mean, over ``sqrt(var + eps)`` (unbiased variance)."""
    mean, variance = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (variance + eps).sqrt()


def _targets(predictions: Tensor, patches: Tensor, masked_index: Tensor | None, norm_pix_loss: bool) -> Tensor:
    if masked_index is not None:
        if masked_index.dim() != 2 or patches.dim() != 3 or masked_index.shape[0] != patches.shape[0]:
            raise DataError(f"masked_pixel_regression: masked_index must be (B, M) for patches (B, P, V), got "
                            f"{tuple(masked_index.shape)} and {tuple(patches.shape)}.")
        patches = torch.gather(patches, 1, masked_index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    if predictions.shape != patches.shape:
        raise DataError(f"masked_pixel_regression: predictions {tuple(predictions.shape)} do not match the "
                        f"masked patches {tuple(patches.shape)}; predict (B, M, V) for the M masked patches.")
    return normalize_patches(patches) if norm_pix_loss else patches


@in_float32
def masked_pixel_regression(predictions: Tensor, patches: Tensor, masked_index: Tensor | None = None,
                            norm_pix_loss: bool = True) -> Tensor:
    """MAE's loss: predictions (B, M, V) for the patches ``masked_index`` (B, M) of ``patches`` (B, P, V)
    (every patch, in raster order; when ``masked_index`` is None, predictions cover ``patches`` row for
    row). Only the masked patches' values are read."""
    targets = _targets(predictions, patches, masked_index, norm_pix_loss)
    return (predictions - targets).square().mean()


@in_float32
def masked_pixel_regression_terms(predictions: Tensor, patches: Tensor, masked_index: Tensor | None = None,
                                  norm_pix_loss: bool = True, anchor_rows: slice | None = None) -> LossTerms:
    """The summed squared errors of the images ``anchor_rows`` (all when None) over the number of
    predicted values of the whole batch."""
    errors = (predictions - _targets(predictions, patches, masked_index, norm_pix_loss)).square()
    rows = anchor_range(anchor_rows, predictions.shape[0], predictions.device)
    return LossTerms(errors[rows].sum(), errors.numel())


@OBJECTIVES.register("masked_pixel_regression")
class MaskedPixelRegression(ContrastiveObjective):
    r"""MAE's pixel reconstruction loss on the masked patches only, with per-patch normalised targets.

    ::

        loss = 1 / (|M| V) sum_{p in M} || x_hat_p - (x_p - mean(x_p)) / sqrt(var(x_p) + 1e-6) ||^2

    over the masked patches M of every image (V values per patch). Called as
    ``objective(predictions, patches, masked_index=None)``: ``predictions`` (B, M, V) for the
    patches ``masked_index`` (B, M) of ``patches`` (B, P, V); without ``masked_index``,
    ``predictions`` and ``patches`` have the same shape (2-d rows are one patch each). Every image
    masks the same number of patches, so under data parallelism the gathered loss equals the
    one-process loss (``masked_index`` is a per-sample input).

    Args:
        norm_pix_loss: normalise each target patch by its own mean and standard deviation (MAE's
            default for its best representations); False regresses the pixels themselves.

    References:
        - He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022, Sec. 3 and
          Table 1c. https://arxiv.org/abs/2111.06377
    """

    per_sample_inputs = ("masked_index",)
    not_for_view_pairs = (
        "it regresses a decoder's predictions of masked patches onto their pixels (MAE), not one view's "
        "embedding onto another's"
    )

    def __init__(self, norm_pix_loss: bool = True):
        super().__init__()
        self.norm_pix_loss = bool(norm_pix_loss)

    def forward(self, predictions: Tensor, patches: Tensor, masked_index: Tensor | None = None) -> Tensor:
        return masked_pixel_regression(predictions, patches, masked_index, self.norm_pix_loss)

    def loss_terms(self, predictions: Tensor, patches: Tensor, *, anchor_rows: slice | None = None,
                   masked_index: Tensor | None = None) -> LossTerms:
        return masked_pixel_regression_terms(predictions, patches, masked_index, self.norm_pix_loss, anchor_rows)

    def extra_repr(self) -> str:
        return f"norm_pix_loss={self.norm_pix_loss}"
