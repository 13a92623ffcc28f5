"""How a linear predictor relates to the correlation of its input: the DirectPred paper's quantity.

Tian, Chen & Ganguli ("Understanding self-supervised learning dynamics without contrastive pairs",
ICML 2021, Sec. 3-4, Fig. 3) show that during BYOL / SimSiam training a linear predictor ``W``
(``p = W f``) and the correlation ``F = E[f f^T]`` of its input come to share their eigenvectors,
and DirectPred builds ``W`` from ``F``'s eigenvectors outright. With ``F = U diag(s) U^T``
(``u_j`` the j-th column of ``U``, ``s`` in decreasing order):

- eigen-alignment of eigenvector ``j`` (the paper's measure)::

      a_j = cos(W u_j, u_j) = u_j^T W u_j / ||W u_j||

  1 when ``u_j`` is an eigenvector of ``W`` with a positive eigenvalue, whatever ``W``'s other
  eigenvectors do; summarised as the plain mean over ``j`` and the mean weighted by ``s_j``
  (directions where ``F`` has no variance have arbitrary eigenvectors and say little).
- off-diagonal mass of ``W`` in ``F``'s eigenbasis: with ``M = U^T W U``::

      offdiagonal_mass = ||M - diag(M)||_F / ||M||_F

  0 when ``W`` is diagonal in that basis (fully aligned), about ``sqrt(1 - 1/d)`` for a random ``W``.
- asymmetry ``||W - W^T||_F / (2 ||W||_F)`` (0 for a symmetric ``W``; the paper shows a trained
  ``W`` becomes symmetric) and the eigenvalues of the symmetric part ``(W + W^T) / 2``.

All functions take numpy arrays or torch tensors and compute in float64 numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastkit.core.errors import DataError


def _square(matrix: Any, name: str) -> np.ndarray:
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise DataError(f"{name} must be a square (d, d) matrix, got shape {array.shape}.")
    return array


def correlation_eigenbasis(correlation: Any) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``s`` (decreasing) and eigenvectors ``U`` (columns) of ``F``'s symmetric part."""
    F = _square(correlation, "F")
    s, U = np.linalg.eigh((F + F.T) / 2)
    return s[::-1], U[:, ::-1]


def eigen_alignment(predictor: Any, correlation: Any) -> np.ndarray:
    """``a_j = cos(W u_j, u_j)`` for each eigenvector ``u_j`` of ``F``, largest eigenvalue first."""
    W = _square(predictor, "W")
    _, U = correlation_eigenbasis(correlation)
    if W.shape != U.shape:
        raise DataError(f"W {W.shape} and F {U.shape} must have the same size (the predictor's input size).")
    mapped = W @ U  # column j is W u_j
    norms = np.linalg.norm(mapped, axis=0)
    cosines = np.einsum("ij,ij->j", mapped, U) / np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, cosines, 0.0)


def offdiagonal_mass(predictor: Any, correlation: Any) -> float:
    """``||M - diag(M)||_F / ||M||_F`` with ``M = U^T W U`` (0: W diagonal in F's eigenbasis)."""
    W = _square(predictor, "W")
    _, U = correlation_eigenbasis(correlation)
    M = U.T @ W @ U
    total = np.linalg.norm(M)
    return float(np.linalg.norm(M - np.diag(np.diag(M))) / total) if total > 0 else 0.0


def predictor_eigenvalues(predictor: Any) -> np.ndarray:
    """Eigenvalues of ``(W + W^T) / 2``, largest first."""
    W = _square(predictor, "W")
    return np.linalg.eigvalsh((W + W.T) / 2)[::-1]


def asymmetry(predictor: Any) -> float:
    """``||W - W^T||_F / (2 ||W||_F)``: 0 for a symmetric predictor."""
    W = _square(predictor, "W")
    total = np.linalg.norm(W)
    return float(np.linalg.norm(W - W.T) / (2 * total)) if total > 0 else 0.0


def predictor_report(predictor: Any, correlation: Any) -> dict[str, Any]:
    """Scalars for logging (``eigen_alignment``, ``eigen_alignment_weighted``,
    ``offdiagonal_mass``, ``asymmetry``, ``eigenvalue_max``, ``eigenvalue_min``) and the full
    ``eigen_alignment_per_direction``, ``predictor_eigenvalues`` and ``correlation_eigenvalues``
    arrays (decreasing order of F's / W's eigenvalues)."""
    s, _ = correlation_eigenbasis(correlation)
    alignment = eigen_alignment(predictor, correlation)
    weights = np.clip(s, 0.0, None)
    eigenvalues = predictor_eigenvalues(predictor)
    return {
        "eigen_alignment": float(alignment.mean()),
        "eigen_alignment_weighted": float((alignment * weights).sum() / weights.sum()) if weights.sum() > 0
        else float(alignment.mean()),
        "offdiagonal_mass": offdiagonal_mass(predictor, correlation),
        "asymmetry": asymmetry(predictor),
        "eigenvalue_max": float(eigenvalues[0]),
        "eigenvalue_min": float(eigenvalues[-1]),
        "eigen_alignment_per_direction": alignment,
        "predictor_eigenvalues": eigenvalues,
        "correlation_eigenvalues": s,
    }


def scalar_summary(report: dict[str, Any], prefix: str = "predictor_") -> dict[str, float]:
    """The scalar entries of :func:`predictor_report`, prefixed (what a per-epoch log takes)."""
    return {f"{prefix}{key}": float(value) for key, value in report.items() if np.isscalar(value)}
