"""iSogCLR: robust global contrastive loss with one learned temperature per training sample.

Qiu et al. "Not All Semantics are Created Equal: Contrastive Self-supervised Learning with
Automatic Temperature Individualization". ICML 2023 (update rules checked against the authors' code,
github.com/zhqiu/contrastive-learning-iSogCLR, ``unimodal_exps/losses.py``; defaults from its README).

Notation. The batch holds ``B`` samples with dataset indices ``idx_i`` and two views; the ``2B``
anchors ``r`` are the rows of ``z = [z_a; z_b]`` (L2-normalised), ``s_rj = z_r . z_j``, ``p(r)``
the other view of the same sample, and ``S_r`` the ``2B - 2`` negatives of ``r`` (every row but
``r`` and ``p(r)``). Each sample has its own temperature ``tau_i`` in ``[tau_min, tau_max]``.

Objective (distributionally robust, KL-constrained, per anchor)::

    F_r(w, tau) = tau_i * log( mean_{j in S_r} exp((s_rj - s_r,p(r)) / tau_i) ) + tau_i * rho

Stochastic algorithm (one step; everything below ``u`` and ``m`` is per *sample*, stored in
buffers of size ``dataset_size`` and indexed by ``idx_i``):

1. Inner term of the current batch, ``g_r = mean_{j in S_r} exp(s_rj / tau_i)``.
2. Moving average (``gamma``), one per view, then stored as their mean::

       u_r = (1 - gamma) * u[idx_i] + gamma * g_r        (u_r = g_r the first time i is seen)
       u[idx_i] <- (u_i + u_{i+B}) / 2

3. Loss whose gradient is the iSogCLR estimator of ``grad_w sum_r F_r`` (the weights are constants)::

       loss = (1 / B) * sum_r [ sum_{j in S_r} (exp(s_rj / tau_i) / u_r) * s_rj / (2B - 2) - s_r,p(r) ]

4. Temperature step: ``dF/dtau`` estimated with ``u``, averaged over the two views, clipped to
   ``+-grad_clip``, smoothed by momentum ``beta`` and applied with rate ``temperature_lr``::

       G_r    = log(u_r) + rho - sum_{j in S_r} (exp(s_rj / tau_i) / u_r) * (s_rj / tau_i) / (2B - 2)
       m[idx] <- (1 - beta) * m[idx] + beta * clip((G_i + G_{i+B}) / 2)
       tau[idx] <- clamp(tau[idx] - temperature_lr * m[idx], tau_min, tau_max)

Why frequent semantics get larger temperatures: with ``u`` exact, ``dF_r/dtau = rho - KL(q_r || uniform)``
where ``q_r`` is the softmax over the negatives of ``s_rj / tau``; the step moves ``tau`` until the
weights are ``rho`` away (in KL) from uniform. An anchor with many similar negatives (a frequent
class) reaches that with a flatter softmax, i.e. a larger ``tau``, than an anchor whose negatives
are all far (a rare class).

Steps 2 and 4 run only in training mode; the loss uses the temperatures from before the step.
The returned value is the surrogate of step 3 (its gradient, not its value, is the point).

Distributed: the state is indexed by global sample index. Under
:class:`contrastkit.nn.distributed.GatheredObjective` the indices are gathered with the embeddings
and every rank updates every entry of the global batch from the full gathered batch, so the state
stays identical on all ranks and equal to a single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    check_pair,
    in_float32,
    normalize,
)


def negatives_mask(batch_size: int, device: torch.device | str | None = None) -> Tensor:
    """(2B, 2B) bool: True where column j is a negative of anchor row r (not r, not its other view)."""
    same_sample = torch.eye(batch_size, dtype=torch.bool, device=device).repeat(2, 2)
    return ~same_sample


def inner_term(similarity: Tensor, temperature: Tensor) -> Tensor:
    """``g_r = mean_{j in S_r} exp(s_rj / tau_r)`` (2B,) from the (2B, 2B) similarities and the
    per-anchor temperatures (2B,)."""
    mask = negatives_mask(similarity.shape[0] // 2, similarity.device)
    exp_logits = torch.exp(similarity / temperature.unsqueeze(1)) * mask
    return exp_logits.sum(1) / (similarity.shape[0] - 2)


def moving_average(previous: Tensor, current: Tensor, gamma: float) -> Tensor:
    """``(1 - gamma) * previous + gamma * current``, or ``current`` where ``previous`` is 0
    (0 marks a sample never seen: a true estimate is a mean of exponentials, so it is > 0)."""
    return torch.where(previous == 0, current, (1 - gamma) * previous + gamma * current)


def isogclr_surrogate_per_anchor(similarity_rows: Tensor, weights: Tensor, positive_similarity: Tensor) -> Tensor:
    """Step 3 for some anchors: ``sum_j weights_rj * s_rj / n - s_r,p(r)`` where ``weights`` are
    ``exp(s_rj / tau) / u_r`` on negatives and 0 elsewhere (constants), ``n`` the negatives count."""
    num_negatives = similarity_rows.shape[1] - 2
    return (weights * similarity_rows).sum(1) / num_negatives - positive_similarity


def temperature_gradient(
    similarity: Tensor, temperature: Tensor, inner_estimate: Tensor, rho: float
) -> Tensor:
    """``G_r`` of step 4 (2B,) from detached similarities (2B, 2B), temperatures (2B,) and
    moving-average estimates ``u_r`` (2B,)."""
    mask = negatives_mask(similarity.shape[0] // 2, similarity.device)
    logits = similarity / temperature.unsqueeze(1)
    weights = torch.exp(logits) * mask / inner_estimate.unsqueeze(1)
    return torch.log(inner_estimate) + rho - (weights * logits).sum(1) / (similarity.shape[0] - 2)


@dataclass
class _Step:
    """What one call computes from the full batch before the state is written."""

    similarity: Tensor  # (2B, 2B), detached
    temperature: Tensor  # (2B,)
    inner_estimate: Tensor  # (2B,) u_r after the moving average


@OBJECTIVES.register("isogclr")
class ISogCLR(ContrastiveObjective):
    """iSogCLR loss with per-sample temperatures (formulas in the module docstring).

    Args:
        dataset_size: number of training samples; ``indices`` must lie in ``[0, dataset_size)``.
        gamma: moving-average rate of the inner-term estimate ``u``.
        rho: KL-ball radius of the DRO objective (larger: sharper weights, smaller temperatures).
        temperature_init, temperature_min, temperature_max: initial value and bounds of ``tau``.
        temperature_lr: step size of the temperature update (the paper's ``eta``).
        temperature_momentum: ``beta``, weight of the new gradient in the temperature momentum.
        grad_clip: clip of the temperature gradient.

    State (buffers, saved in checkpoints): ``inner_estimate`` (u), ``temperature`` (tau) and
    ``temperature_momentum_buffer`` (m), each of shape (dataset_size,).

    Inputs:
        z_a, z_b: (B, d) embeddings of two views; row i of each comes from sample i.
        indices: (B,) dataset indices of the samples (``batch["index"]``), unique within the
            (global) batch.

    Example::

        objective = objectives.get("isogclr", dataset_size=len(source))
        loss = objective(z_a, z_b, indices=batch["index"])

    References:
        - Yuan et al., "Provable Stochastic Optimization for Global Contrastive Learning: Small
          Batch Does Not Harm Performance", ICML 2022 (SogCLR, the moving-average estimator).
    """

    per_sample_inputs = ("indices",)

    def __init__(
        self,
        dataset_size: int,
        gamma: float = 0.8,
        rho: float = 0.4,
        temperature_init: float = 0.1,
        temperature_min: float = 0.05,
        temperature_max: float = 1.0,
        temperature_lr: float = 0.03,
        temperature_momentum: float = 0.5,
        grad_clip: float = 3.0,
    ):
        super().__init__()
        if dataset_size < 1:
            raise ConfigError(
                f"isogclr: dataset_size must be the number of training samples (>= 1), got {dataset_size}."
            )
        if not 0 < temperature_min <= temperature_init <= temperature_max:
            raise ConfigError(
                "isogclr: need 0 < temperature_min <= temperature_init <= temperature_max, got "
                f"{temperature_min}, {temperature_init}, {temperature_max}."
            )
        if not 0 < gamma <= 1 or not 0 < temperature_momentum <= 1:
            raise ConfigError(
                f"isogclr: gamma and temperature_momentum must be in (0, 1], got {gamma}, {temperature_momentum}."
            )
        self.dataset_size = dataset_size
        self.gamma = gamma
        self.rho = rho
        self.temperature_min = temperature_min
        self.temperature_max = temperature_max
        self.temperature_lr = temperature_lr
        self.temperature_momentum = temperature_momentum
        self.grad_clip = grad_clip
        self.register_buffer("inner_estimate", torch.zeros(dataset_size))
        self.register_buffer("temperature", torch.full((dataset_size,), float(temperature_init)))
        self.register_buffer("temperature_momentum_buffer", torch.zeros(dataset_size))

    def _check(self, z_a: Tensor, z_b: Tensor | None, indices: Tensor | None) -> Tensor:
        check_pair(z_a, z_b, "isogclr")
        if indices is None:
            raise DataError(
                "isogclr keeps per-sample state and needs the samples' dataset indices: call it as "
                "isogclr(z_a, z_b, indices=batch['index'])."
            )
        indices = indices.to(self.temperature.device, torch.long).view(-1)
        if indices.shape[0] != z_a.shape[0] or indices.min() < 0 or indices.max() >= self.dataset_size:
            raise DataError(
                f"isogclr: indices must be {z_a.shape[0]} dataset indices in [0, {self.dataset_size}); got "
                f"shape {tuple(indices.shape)}, range [{int(indices.min())}, {int(indices.max())}]. "
                "Set dataset_size to the number of training samples."
            )
        return indices

    @torch.no_grad()
    def _step(self, z: Tensor, indices: Tensor) -> _Step:
        similarity = z.detach() @ z.detach().T
        temperature = self.temperature[indices].to(z.dtype).repeat(2)
        current = inner_term(similarity, temperature)
        previous = self.inner_estimate[indices].to(z.dtype).repeat(2)
        estimate = moving_average(previous, current, self.gamma)
        return _Step(similarity, temperature, estimate)

    @torch.no_grad()
    def _update_state(self, step: _Step, indices: Tensor) -> None:
        batch = indices.shape[0]
        u = step.inner_estimate
        gradient = temperature_gradient(step.similarity, step.temperature, u, self.rho)
        gradient = ((gradient[:batch] + gradient[batch:]) / 2).clamp(-self.grad_clip, self.grad_clip)
        dtype = self.temperature.dtype
        self.inner_estimate[indices] = ((u[:batch] + u[batch:]) / 2).to(dtype)
        momentum = (1 - self.temperature_momentum) * self.temperature_momentum_buffer[indices]
        momentum = momentum + self.temperature_momentum * gradient.to(dtype)
        self.temperature_momentum_buffer[indices] = momentum
        new_temperature = self.temperature[indices] - self.temperature_lr * momentum
        self.temperature[indices] = new_temperature.clamp(self.temperature_min, self.temperature_max)

    @in_float32
    def loss_terms(
        self,
        z_a: Tensor,
        z_b: Tensor | None = None,
        *,
        indices: Tensor | None = None,
        anchor_rows: slice | None = None,
    ) -> LossTerms:
        """Sum over the samples ``anchor_rows`` of their two anchors' surrogate losses, and the
        batch size. The state is updated from the *whole* batch, whatever ``anchor_rows``."""
        indices = self._check(z_a, z_b, indices)
        batch = z_a.shape[0]
        z = normalize(torch.cat([z_a, z_b]))
        step = self._step(z, indices)

        rows = torch.arange(batch, device=z.device)[slice(None) if anchor_rows is None else anchor_rows]
        anchors = torch.cat([rows, rows + batch])  # both views of the selected samples
        partners = torch.cat([rows + batch, rows])
        similarity_rows = z[anchors] @ z.T
        positive = (z[anchors] * z[partners]).sum(-1)
        mask = negatives_mask(batch, z.device)[anchors]
        weights = torch.exp(step.similarity[anchors] / step.temperature[anchors].unsqueeze(1)) * mask
        weights = weights / step.inner_estimate[anchors].unsqueeze(1)
        per_anchor = isogclr_surrogate_per_anchor(similarity_rows, weights, positive)

        if self.training:
            self._update_state(step, indices)
        return LossTerms(per_anchor.sum(), batch)

    def extra_repr(self) -> str:
        return (
            f"dataset_size={self.dataset_size}, gamma={self.gamma}, rho={self.rho}, "
            f"temperature_range=[{self.temperature_min}, {self.temperature_max}], temperature_lr={self.temperature_lr}"
        )
