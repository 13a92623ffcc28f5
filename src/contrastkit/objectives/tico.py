"""TiCo: transformation invariance and covariance contrast, with a running covariance matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.barlow_twins import check_batch_statistics
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32, normalize
from contrastkit.objectives.registry import OBJECTIVES

# beta and rho of LightlySSL's TiCoLoss and its ImageNet benchmark (given there as the paper's).
PAPER_COVARIANCE_MOMENTUM = 0.9
PAPER_COVARIANCE_WEIGHT = 8.0


@in_float32
@torch.no_grad()
def updated_covariance(z_a: Tensor, previous: Tensor, momentum: float) -> Tensor:
    """``C_t = beta C_{t-1} + (1 - beta) (1 / N) sum_i u_i u_i^T`` with ``u = normalize(z_a)``; no gradient."""
    u = normalize(z_a)
    return momentum * previous + (1.0 - momentum) * (u.T @ u) / z_a.shape[0]


@in_float32
def tico_terms(z_a: Tensor, z_b: Tensor, covariance: Tensor, covariance_weight: float = PAPER_COVARIANCE_WEIGHT,
               anchor_rows: slice | None = None) -> LossTerms:
    """TiCo's terms ``-cos(z_a_i, z_b_i) + rho u_i^T C u_i`` of the samples ``anchor_rows`` (all when
    None), count N, for a given covariance ``C`` (already updated with this batch); see :class:`TiCo`."""
    check_batch_statistics(z_a, z_b, "tico")
    d = z_a.shape[1]
    if covariance.shape != (d, d):
        raise DataError(f"tico: the covariance must be ({d}, {d}) like the embeddings, got {tuple(covariance.shape)}.")
    samples = anchor_range(anchor_rows, z_a.shape[0], z_a.device)
    u_a, u_b = normalize(z_a[samples]), normalize(z_b[samples])
    invariance = -(u_a * u_b).sum(dim=1)
    contrast = ((u_a @ covariance) * u_a).sum(dim=1)
    return LossTerms((invariance + covariance_weight * contrast).sum(), z_a.shape[0])


@OBJECTIVES.register("tico")
class TiCo(ContrastiveObjective):
    r"""TiCo: agree across views, and contrast each embedding with a running covariance matrix.

    With ``u_i = z_a_i / ||z_a_i||`` and ``v_i = z_b_i / ||z_b_i||`` (N rows, d columns)::

        C_t  = beta C_{t-1} + (1 - beta) (1 / N) sum_i u_i u_i^T          (C_0 = 0; no gradient)
        loss = -(1 / N) sum_i u_i . v_i  +  rho (1 / N) sum_i u_i^T C_t u_i

    The first term is the transformation invariance; the second, the covariance contrast,
    ``u^T C u = sum_past w_j (u . u_j)^2``, pushes ``u_i`` away from the directions that the
    current and past batches' embeddings occupy, like MoCo's queue of negatives with an implicit
    memory of unlimited size (the paper's reading). ``C`` is the uncentred second moment of the
    normalised embeddings of view a, kept in the buffer ``covariance`` (saved in checkpoints); it
    is updated from the batch in training mode only (``objective.eval()`` leaves it as it is) and
    carries no gradient, as in LightlySSL's ``TiCoLoss`` (which also adds the constant 1 to the
    loss). ``C`` holds view a only: in the paper's setting z_a is the online network's projection
    and z_b a momentum encoder's (:mod:`contrastkit.modalities.image.methods.tico`).

    The loss has no temperature; it can be used on SimCLR's view pairs (``--method simclr
    --objective tico``), where both inputs get gradients.

    Data parallelism: :class:`~contrastkit.nn.distributed.GatheredObjective` gathers the global
    batch; every rank updates ``C`` from all N rows of the gathered z_a (so the buffer stays the
    same on every rank and equals the one-process buffer), and rank r sums the terms of its own
    samples with count N. The loss, the gradients and the buffer after each step equal one process
    on the concatenated batch (tests/objectives/test_objectives_redundancy.py checks two steps).

    Args:
        covariance_momentum: ``beta`` (default 0.9).
        covariance_weight: ``rho`` (default 8). Both defaults are those of LightlySSL's
            ``TiCoLoss``, whose docstring gives them as the paper's, and of its ImageNet benchmark
            (beta 0.9, rho 8); they were not checked against the paper's text here. TiCo is not in
            LightlySSL's CIFAR-10 benchmark, so there are no CIFAR-10 values to take.
        dim: the embedding dimension d, to allocate ``C`` (d x d) at once; when None it is
            allocated at the first batch (and from the checkpoint when one is loaded).

    Inputs:
        z_a, z_b: (N, d) embeddings of the two views, N >= 2; row i of each comes from sample i.

    References:
        - Zhu, Liu & Huang, "TiCo: Transformation Invariance and Covariance Contrast for
          Self-Supervised Visual Representation Learning", 2022. https://arxiv.org/abs/2206.10698

    Example::

        objective = objectives.get("tico", dim=256)
        loss = objective(projector(encoder(view_a)), target_projector(target_encoder(view_b)))
    """

    def __init__(self, covariance_momentum: float = PAPER_COVARIANCE_MOMENTUM,
                 covariance_weight: float = PAPER_COVARIANCE_WEIGHT, dim: int | None = None):
        super().__init__()
        if not 0.0 <= covariance_momentum < 1.0:
            raise ConfigError(
                f"tico: covariance_momentum (beta) must be in [0, 1), got {covariance_momentum}; the paper uses 0.9."
            )
        if not covariance_weight >= 0:
            raise ConfigError(f"tico: covariance_weight (rho) must be >= 0, got {covariance_weight}; the paper uses 8.")
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"tico: dim must be a positive integer (the embedding size) or None, got {dim!r}.")
        self.covariance_momentum = float(covariance_momentum)
        self.covariance_weight = float(covariance_weight)
        # (0, 0) until the first batch when the dimension is not given.
        self.register_buffer("covariance", torch.zeros(dim or 0, dim or 0))

    def loss_terms(self, z_a: Tensor, z_b: Tensor, *, anchor_rows: slice | None = None) -> LossTerms:
        check_batch_statistics(z_a, z_b, "tico")
        d = z_a.shape[1]
        previous = self.covariance if self.covariance.numel() else z_a.new_zeros(d, d)
        if previous.shape != (d, d):
            raise DataError(
                f"tico: its running covariance is {tuple(previous.shape)} but the embeddings have {d} dimensions; "
                f"build the objective with dim={d}."
            )
        covariance = updated_covariance(z_a, previous, self.covariance_momentum)
        if self.training:
            self._store(covariance)
        return tico_terms(z_a, z_b, covariance, self.covariance_weight, anchor_rows)

    @torch.no_grad()
    def _store(self, covariance: Tensor) -> None:
        if self.covariance.shape == covariance.shape:
            self.covariance.copy_(covariance)  # in place: the buffer stays the tensor that DDP knows
        else:
            self.covariance = covariance.to(self.covariance.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "covariance")
        if saved is not None and self.covariance.numel() == 0 and saved.numel() > 0:
            self.covariance = torch.zeros_like(saved, dtype=self.covariance.dtype, device=self.covariance.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"covariance_momentum={self.covariance_momentum}, covariance_weight={self.covariance_weight}, "
                f"dim={self.covariance.shape[0] or None}")
