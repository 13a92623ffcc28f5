"""Shuffled group whitening (SGW), the feature transform of WhitenedCSE (Zhuo et al., ACL 2023).

For a batch ``x`` (N, D), a permutation ``perm`` of the D feature indices and G groups of
``s = D / G`` features::

    x_p      = x[:, perm]                                    shuffle the features
    X_g      = x_p[:, g*s:(g+1)*s] - mean over the batch     (N, s), for g = 0 .. G-1
    Sigma_g  = X_g^T X_g / N                                 (s, s) covariance of group g
    Y_g      = X_g W_g                                       whitened: Y_g^T Y_g / N = I
    y        = cat_g(Y_g)[:, argsort(perm)]                  un-shuffle

with ``W_g`` either ZCA whitening, ``W = U diag(lambda + eps)^(-1/2) U^T`` from the eigenpairs
``Sigma_g = U diag(lambda) U^T`` (the paper's choice and the authors' default engine), or
Cholesky whitening, ``W = L^-T`` with ``Sigma_g + eps I = L L^T`` (triangular; its backward pass
has no 1 / (lambda_i - lambda_j) terms, so it is the stable choice when eigenvalues may coincide).
The covariance is divided by N, as in the authors' code, so the whitened groups have identity
covariance in that sense. Whitening within groups only needs N > s samples, not N > D, and a
new permutation puts different features together at every call: each call whitens the same
batch differently, which is what makes SGW outputs usable as extra positives.

ZCA on a single group (G = 1) does not depend on ``perm``: for a permutation matrix P,
``ZCA(x P) = ZCA(x) P`` because ZCA whitening is equivariant to rotations (and P is one).
Group whitening runs in float32 with autocast off (float64 inputs stay float64), and the
decompositions in float64 (a few small matrices; the cost is negligible).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import in_float32

WHITENING_METHODS = ("zca", "cholesky")


def inverse_permutation(permutation: Tensor) -> Tensor:
    """``inverse`` with ``inverse[permutation[j]] = j``, so ``x[:, p][:, inverse] == x`` exactly."""
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return inverse


def whitening_matrices(covariances: Tensor, method: str = "zca", eps: float = 1e-5) -> Tensor:
    """Whitening matrices ``W`` (G, s, s) with ``W^T Sigma W = I`` for covariances (G, s, s)
    (up to ``eps`` added to the eigenvalues / the diagonal)."""
    if method not in WHITENING_METHODS:
        raise ConfigError(f"Unknown whitening method '{method}'. Valid methods: {', '.join(WHITENING_METHODS)}.")
    sigma = covariances.double()
    identity = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
    if method == "zca":
        eigenvalues, eigenvectors = torch.linalg.eigh(sigma)
        scale = (eigenvalues.clamp_min(0) + eps).rsqrt()
        w = eigenvectors @ torch.diag_embed(scale) @ eigenvectors.transpose(-1, -2)
    else:
        lower = torch.linalg.cholesky(sigma + eps * identity)
        # W = L^-T: solve L Z = I for Z = L^-1, then transpose.
        w = torch.linalg.solve_triangular(lower, identity.expand_as(sigma), upper=False).transpose(-1, -2)
    return w.to(covariances.dtype)


@in_float32
def group_whiten(x: Tensor, num_groups: int, method: str = "zca", eps: float = 1e-5) -> Tensor:
    """Whiten each of ``num_groups`` consecutive blocks of features of ``x`` (N, D) over the batch."""
    if x.dim() != 2:
        raise DataError(f"group_whiten: expected a (batch, features) tensor, got shape {tuple(x.shape)}.")
    n, d = x.shape
    if num_groups < 1 or d % num_groups:
        raise ConfigError(
            f"Shuffled group whitening splits the {d} features into num_groups equal groups, so "
            f"num_groups must divide {d}; got {num_groups}. Valid choices: "
            f"{', '.join(str(g) for g in range(1, d + 1) if d % g == 0)}."
        )
    if n < 2:
        raise DataError(f"group_whiten: whitening needs a batch of at least 2 samples, got {n}.")
    groups = x.reshape(n, num_groups, d // num_groups).transpose(0, 1)  # (G, N, s)
    centred = groups - groups.mean(dim=1, keepdim=True)
    covariances = centred.transpose(1, 2) @ centred / n  # (G, s, s)
    whitened = centred @ whitening_matrices(covariances, method, eps)  # (G, N, s)
    return whitened.transpose(0, 1).reshape(n, d)


def shuffled_group_whiten(x: Tensor, num_groups: int, permutation: Tensor, method: str = "zca",
                          eps: float = 1e-5) -> Tensor:
    """Group whitening of ``x[:, permutation]``, returned in the original feature order."""
    if permutation.shape != (x.shape[1],):
        raise DataError(
            f"shuffled_group_whiten: the permutation must have one entry per feature ({x.shape[1]}), "
            f"got shape {tuple(permutation.shape)}."
        )
    whitened = group_whiten(x[:, permutation], num_groups, method, eps)
    return whitened[:, inverse_permutation(permutation)]
