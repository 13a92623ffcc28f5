"""Predictors of the non-contrastive methods (BYOL, SimSiam, DirectPred).

Their losses, ``normalized_mse`` (BYOL) and ``negative_cosine`` (SimSiam), are in the objectives
catalogue, :mod:`contrastkit.objectives.predictive`; they are imported here for the methods that
import them from this module.

Linear predictors ``p = W f`` keep a moving average of the correlation of their input (Tian, Chen &
Ganguli, "Understanding self-supervised learning dynamics without contrastive pairs", ICML 2021)::

    F <- rho * F + (1 - rho) * E_B[f f^T]

- :class:`LinearPredictor`: ``W`` is trained by gradient descent; ``F`` is only observed, for the
  eigen-alignment diagnostic (the paper's Fig. 3: a trained ``W`` aligns its eigenvectors with
  ``F``'s).
- :class:`DirectPredictor`: ``W`` is never trained but set from ``F`` every ``frequency`` steps.
  With ``F = U diag(s) U^T`` (negative ``s_j`` clipped to 0)::

      DirectPred (Tian et al. 2021, Eq. 18):  W = U diag(p) U^T,  p_j = sqrt(s_j / max_k s_k) + eps
      DirectCopy (Wang, Chen, Du & Tian 2021, "Towards demystifying representation learning with
      non-contrastive self-supervision"):   W = F / ||F||_2 + eps I

  ``||F||_2`` is the spectral norm (= max_k s_k for a PSD ``F``), so DirectCopy is DirectSet(alpha)
  of that paper, ``W = U diag((s / max s)^alpha) U^T + eps I``, at alpha = 1 and DirectPred the same at
  alpha = 1/2: the two differ only in the power applied to the normalised spectrum.

Both predictors expose ``weight_matrix`` (the (d, d) ``W`` with ``p = W f``) and ``correlation``
(``F``), which :mod:`contrastkit.evaluation.predictor_diagnostics` compares.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.nn.distributed import gather_no_grad
from contrastkit.core.errors import ConfigError
from contrastkit.nn.heads import PredictionHead
from contrastkit.objectives.predictive import negative_cosine, normalized_mse  # noqa: F401 (re-exported)

PREDICTOR_KINDS = ("mlp", "linear", "none")


class CorrelationEstimate(nn.Module):
    """``F <- rho * F + (1 - rho) * f^T f / N`` over the global batch (all processes), without
    gradient. The first update sets ``F = f^T f / N`` (no decay from the zero start). ``F`` and
    the update count are buffers, so checkpoints keep them."""

    matrix: Tensor
    updates: Tensor

    def __init__(self, dim: int, rho: float):
        super().__init__()
        if not 0.0 <= rho < 1.0:
            raise ConfigError(f"The correlation averaging rate rho must be in [0, 1), got {rho!r}.")
        self.rho = float(rho)
        self.register_buffer("matrix", torch.zeros(dim, dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, f: Tensor) -> Tensor:
        f = gather_no_grad(f.detach()).float()
        batch_correlation = f.T @ f / f.shape[0]
        rho = self.rho if int(self.updates) > 0 else 0.0
        self.matrix.mul_(rho).add_(batch_correlation.to(self.matrix), alpha=1.0 - rho)
        self.updates += 1
        return self.matrix

    def extra_repr(self) -> str:
        return f"dim={self.matrix.shape[0]}, rho={self.rho}"


def clipped_eigh(correlation: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending, negatives set to 0) and eigenvectors of the symmetric part of
    ``correlation``, in float64 (float32 ``eigh`` loses the small eigenvalues of a
    badly conditioned F)."""
    symmetric = (correlation.double() + correlation.double().T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
    return eigenvalues.clamp_min(0.0), eigenvectors


def directpred_weights(correlation: Tensor, eps: float) -> Tensor:
    """``W = U diag(sqrt(s / max s) + eps) U^T`` from ``F = U diag(s) U^T`` (DirectPred)."""
    s, U = clipped_eigh(correlation)
    top = s.max()
    p = (s / top).sqrt() + eps if top > 0 else torch.full_like(s, eps)
    return (U * p) @ U.T


def directcopy_weights(correlation: Tensor, eps: float) -> Tensor:
    """``W = F / ||F||_2 + eps I`` (DirectCopy); F is used as it is (no clipping, no decomposition
    beyond its spectral norm)."""
    matrix = correlation.double()
    norm = torch.linalg.matrix_norm(matrix, ord=2)
    identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    return (matrix / norm if norm > 0 else torch.zeros_like(matrix)) + eps * identity


class LinearPredictor(nn.Module):
    """A trained linear predictor ``p = W f`` (no bias), observing the correlation ``F`` of its
    input in training mode (for diagnostics only)."""

    def __init__(self, dim: int, rho: float = 0.3):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.correlation_estimate = CorrelationEstimate(dim, rho)

    def forward(self, f: Tensor) -> Tensor:
        if self.training:
            self.correlation_estimate.update(f)
        return self.linear(f)

    @property
    def weight_matrix(self) -> Tensor:
        return self.linear.weight.detach()

    @property
    def correlation(self) -> Tensor:
        return self.correlation_estimate.matrix


class DirectPredictor(nn.Module):
    """A linear predictor ``p = W f`` set from the correlation of its input (DirectPred or
    DirectCopy, see the module docstring); it has no trainable parameters.

    In training mode each call first updates ``F`` with the (detached) batch, then, every
    ``frequency`` calls (the first included), recomputes ``W``. Until then ``W = I``. Gradients
    flow through ``W f`` into ``f`` but not into ``W``. ``W``, ``F`` and the call count are
    buffers, so a resumed run continues with the same predictor.

    Args:
        dim: size of ``f`` (the projector's output).
        rho: averaging rate of ``F`` (paper: 0.3).
        eps: added to every eigenvalue (DirectPred) or to the diagonal (DirectCopy) (paper: 0.1).
        frequency: steps between recomputations of ``W``.
        directcopy: use DirectCopy's ``W = F / ||F||_2 + eps I`` instead of DirectPred's.
    """

    weight: Tensor

    def __init__(self, dim: int, rho: float = 0.3, eps: float = 0.1, frequency: int = 1,
                 directcopy: bool = False):
        super().__init__()
        if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
            raise ConfigError(f"DirectPred's frequency (steps between predictor updates) must be a "
                              f"positive integer, got {frequency!r}.")
        if not isinstance(eps, int | float) or eps < 0:
            raise ConfigError(f"DirectPred's eps must be a non-negative number (paper: 0.1), got {eps!r}.")
        self.eps = float(eps)
        self.frequency = frequency
        self.directcopy = bool(directcopy)
        self.correlation_estimate = CorrelationEstimate(dim, rho)
        self.register_buffer("weight", torch.eye(dim))

    def forward(self, f: Tensor) -> Tensor:
        if self.training:
            correlation = self.correlation_estimate.update(f)
            if (int(self.correlation_estimate.updates) - 1) % self.frequency == 0:
                self.weight.copy_(self.weights_from(correlation))
        return f @ self.weight.to(f.dtype).T

    def weights_from(self, correlation: Tensor) -> Tensor:
        if self.directcopy:
            return directcopy_weights(correlation, self.eps)
        return directpred_weights(correlation, self.eps)

    @property
    def weight_matrix(self) -> Tensor:
        return self.weight

    @property
    def correlation(self) -> Tensor:
        return self.correlation_estimate.matrix

    def extra_repr(self) -> str:
        rule = "directcopy" if self.directcopy else "directpred"
        return f"{rule}, eps={self.eps}, frequency={self.frequency}"


def build_predictor(kind: str | bool, dim: int, hidden_dim: int) -> nn.Module:
    """``mlp`` (Linear-BN-ReLU-Linear, ``dim -> hidden_dim -> dim``), ``linear`` or ``none``
    (``False`` too: the identity, i.e. no predictor)."""
    if kind is False or kind is None:
        kind = "none"
    if kind == "mlp":
        return PredictionHead(dim, hidden_dim, dim)
    if kind == "linear":
        return LinearPredictor(dim)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"The option predictor must be one of {', '.join(PREDICTOR_KINDS)} (or false), got {kind!r}.")


def linear_predictor_matrices(predictor: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(W, F)`` of a linear predictor that has seen at least one training batch, else None
    (MLP predictors, no predictor, or nothing observed yet)."""
    estimate = getattr(predictor, "correlation_estimate", None)
    if estimate is None or int(estimate.updates) == 0:
        return None
    return predictor.weight_matrix, predictor.correlation
