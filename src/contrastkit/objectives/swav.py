"""SwAV's swapped prediction with Sinkhorn-Knopp equal-partition codes.

Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020 (https://arxiv.org/abs/2006.09882), Sec. 3.1 and
Eqs. 1-3.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, in_float32
from contrastkit.objectives.registry import OBJECTIVES

# LightlySSL's SwaVLoss defaults, used by its CIFAR-10 benchmark (and the paper's ImageNet values).
PAPER_TEMPERATURE = 0.1
PAPER_EPSILON = 0.05
PAPER_SINKHORN_ITERATIONS = 3


@in_float32
@torch.no_grad()
def sinkhorn_codes(scores: Tensor, epsilon: float = PAPER_EPSILON,
                   iterations: int = PAPER_SINKHORN_ITERATIONS) -> Tensor:
    """Soft codes (B, K) of the scores (B, K) of B samples against K prototypes (the paper's Eq. 3).

    The transportation polytope asks every prototype to receive the mass 1/K and every sample to
    give 1/B. Starting from ``P = exp(scores / epsilon) / sum(exp(scores / epsilon))``, each
    iteration scales the columns (prototypes) to 1/K, then the rows (samples) to 1/B; the codes
    are ``B * P``, each row a distribution over the prototypes. It runs in the log domain. A last
    scaling of the rows to 1/B leaves the codes unchanged after an iteration, and with ``iterations=0`` gives the plain
    per-sample softmax ``softmax(scores / epsilon)``, which drops the equal partition (the
    collapsing variant the tests use). No gradient flows through the codes.

    Every sum runs over the rows given: called on the gathered global batch (and a queue), the
    partition is that of the global batch, as the paper's code all-reduces its sums.
    """
    # The same scalings in the log domain (a division is a subtraction of a logsumexp): no exp
    # overflows or underflows to a zero column, whatever the scale of scores / epsilon.
    num_samples, num_prototypes = scores.shape
    log_codes = scores / epsilon
    log_codes = log_codes - torch.logsumexp(log_codes.flatten(), dim=0)
    for _ in range(iterations):
        log_codes = log_codes - torch.logsumexp(log_codes, dim=0, keepdim=True) - math.log(num_prototypes)
        log_codes = log_codes - torch.logsumexp(log_codes, dim=1, keepdim=True) - math.log(num_samples)
    return torch.softmax(log_codes, dim=1)


@in_float32
def swapped_prediction_terms(scores: Tensor, num_global: int, temperature: float = PAPER_TEMPERATURE,
                             epsilon: float = PAPER_EPSILON, iterations: int = PAPER_SINKHORN_ITERATIONS,
                             queue_scores: Tensor | None = None, anchor_rows: slice | None = None) -> LossTerms:
    """SwAV's loss terms of the samples ``anchor_rows`` (all when None); see :class:`SwAVLoss`.

    ``scores`` (B, V, K): every crop's scores against the prototypes, the ``num_global`` global
    crops first; ``queue_scores`` (L, num_global, K): the scores of past batches' global crops,
    joined to the batch for the codes only."""
    num_samples, num_crops, _ = scores.shape
    codes = []
    for crop in range(num_global):
        crop_scores = scores[:, crop].detach()
        if queue_scores is not None:
            crop_scores = torch.cat([crop_scores, queue_scores[:, crop].to(crop_scores)])
        codes.append(sinkhorn_codes(crop_scores, epsilon, iterations)[:num_samples])
    samples = anchor_range(anchor_rows, num_samples, scores.device)
    log_predictions = F.log_softmax(scores[samples] / temperature, dim=-1)  # (b, V, K)
    total = log_predictions.new_zeros(())
    for crop, code in enumerate(codes):
        others = [v for v in range(num_crops) if v != crop]
        total = total - (code[samples].unsqueeze(1) * log_predictions[:, others]).sum()
    return LossTerms(total, num_samples * num_global * (num_crops - 1))


@OBJECTIVES.register("swav")
class SwAVLoss(ContrastiveObjective):
    r"""SwAV: predict the code of one crop from the prototype scores of another.

    With ``s_v`` the scores of crop v of a sample against K prototypes (cosines of the normalised
    projection and the normalised prototypes; V crops, the first G global), ``q_i`` the
    Sinkhorn-Knopp code of global crop i (:func:`sinkhorn_codes`, no gradient) and
    ``p_v = softmax(s_v / tau)``::

        loss = 1 / (B G (V - 1)) sum_b sum_{i < G} sum_{v != i} -sum_k q_{b,i,k} log p_{b,v,k}

    the swapped prediction of the paper's Eq. 1 summed over the multi-crop pairs (Sec. 3.2): each
    crop predicts the codes of the global crops other than itself. Codes come from the global crops
    only (the paper's ``crops_for_assign``); normalised by the number of terms as the paper's code
    (and LightlySSL's ``SwaVLoss``).

    Inputs: ``scores`` (B, V, K) as ``z_a``, and ``z_b`` None; or two views (B, K) each, stacked as
    V = 2 global crops. ``queue_scores`` (L, G, K), optional: the scores of L past samples' global
    crops (the paper's queue, for small batches), joined to the batch for the Sinkhorn codes only;
    the same on every process (not a per-sample input).

    Data parallelism: under :class:`~contrastkit.nn.distributed.GatheredObjective` the scores of
    the global batch are gathered, so the Sinkhorn sums run over the global batch (the paper's code
    all-reduces them); rank r sums the terms of its own samples with the global count. The loss and
    the gradients equal one process on the whole batch.

    Args:
        num_global: G, the leading crops whose codes are predicted (default 2).
        temperature: tau of the predictions (default 0.1).
        epsilon: the entropic regularisation of the codes (default 0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (default 3; 0 drops the equal partition).

    References:
        - Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
          Assignments", NeurIPS 2020, Eqs. 1-3 and Sec. 3.2. https://arxiv.org/abs/2006.09882
        - Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.

    Example::

        scores = prototypes(normalize(projection(backbone(crops))))   # (B, V, K)
        loss = objectives.get("swav")(scores)
    """

    not_for_view_pairs: ClassVar[str] = (
        "it takes prototype scores of every crop, (B, V, K): use --method swav, which has the prototypes"
    )

    def __init__(self, num_global: int = 2, temperature: float = PAPER_TEMPERATURE, epsilon: float = PAPER_EPSILON,
                 sinkhorn_iterations: int = PAPER_SINKHORN_ITERATIONS):
        super().__init__()
        if not isinstance(num_global, int) or num_global < 1:
            raise ConfigError(f"swav: num_global must be a positive integer (the paper: 2), got {num_global!r}.")
        if not temperature > 0 or not epsilon > 0:
            raise ConfigError(f"swav: temperature and epsilon must be positive (the paper: 0.1 and 0.05), got "
                              f"{temperature} and {epsilon}.")
        if not isinstance(sinkhorn_iterations, int) or sinkhorn_iterations < 0:
            raise ConfigError(f"swav: sinkhorn_iterations must be a whole number >= 0 (the paper: 3), got "
                              f"{sinkhorn_iterations!r}.")
        self.num_global = num_global
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = sinkhorn_iterations

    def loss_terms(self, z_a: Tensor, z_b: Tensor | None = None, *, queue_scores: Tensor | None = None,
                   anchor_rows: slice | None = None) -> LossTerms:
        scores = self._crops(z_a, z_b)
        if queue_scores is not None and (queue_scores.dim() != 3 or queue_scores.shape[1:] != (
                self.num_global, scores.shape[2])):
            raise DataError(f"swav: queue_scores must be (L, {self.num_global}, {scores.shape[2]}), got "
                            f"{tuple(queue_scores.shape)}.")
        return swapped_prediction_terms(scores, self.num_global, self.temperature, self.epsilon,
                                        self.sinkhorn_iterations, queue_scores, anchor_rows)

    def forward(self, z_a: Tensor, z_b: Tensor | None = None, *, queue_scores: Tensor | None = None) -> Tensor:
        return self.loss_terms(z_a, z_b, queue_scores=queue_scores).mean()

    def _crops(self, z_a: Tensor, z_b: Tensor | None) -> Tensor:
        if z_b is not None:
            if z_a.dim() != 2 or z_b.shape != z_a.shape:
                raise DataError(f"swav: two views must both be (B, K), got {tuple(z_a.shape)} and {tuple(z_b.shape)}.")
            z_a = torch.stack([z_a, z_b], dim=1)
        if z_a.dim() != 3 or z_a.shape[1] < max(2, self.num_global):
            raise DataError(f"swav: scores must be (B, V, K) with V >= max(2, num_global = {self.num_global}) crops, "
                            f"got {tuple(z_a.shape)}.")
        return z_a

    def extra_repr(self) -> str:
        return (f"num_global={self.num_global}, temperature={self.temperature}, epsilon={self.epsilon}, "
                f"sinkhorn_iterations={self.sinkhorn_iterations}")
