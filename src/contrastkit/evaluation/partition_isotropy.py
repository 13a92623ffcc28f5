"""Isotropy as the partition-function ratio of Mu & Viswanath ("All-but-the-Top: Simple and Effective
Postprocessing for Word Representations", ICLR 2018, https://arxiv.org/abs/1702.01417, Sec. 2).

For vectors w_1 .. w_n (rows of W) the partition function of a unit direction c is
``Z(c) = sum_i exp(c . w_i)``; a set is isotropic when Z is the same constant in every direction
(Arora et al. 2016), and the measure is::

    I(W) = min_c Z(c) / max_c Z(c)     in (0, 1],   1 = isotropic

with c, as in the paper, restricted to the eigenvectors of W^T W (the principal directions). An
eigenvector's sign is arbitrary, and Z(c) != Z(-c) for a set that is not centred, so both signs are
taken: ``c in {+-e_k}``. Computed in float64 through log-sums (``log Z(c) = logsumexp_i c . w_i``), so
the ratio stays exact where Z itself would overflow. The vectors are used as given: normalise them
first to measure directions only (DefSent+ measures its unit-norm entry embeddings).

Closed forms (tests/evaluation/test_partition_isotropy.py): the 2d vectors +-e_k of the cross-polytope
give I = 1; n copies of one vector w give Z(+-w/|w|) = n e^{+-|w|} and Z(c) = n orthogonally, so
I = e^{-2|w|}.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastkit.core.errors import DataError


def partition_isotropy(vectors: Any) -> float:
    """``min_c Z(c) / max_c Z(c)`` over the eigenvectors c of W^T W and their negatives (module docstring)."""
    w = np.asarray(vectors.detach().cpu() if hasattr(vectors, "detach") else vectors, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise DataError(f"partition_isotropy takes an (n, d) matrix of vectors, got shape {w.shape}.")
    if not np.all(np.isfinite(w)):
        raise DataError("partition_isotropy: the vectors hold NaN or infinite values.")
    _, directions = np.linalg.eigh(w.T @ w)  # columns: unit eigenvectors
    projections = w @ directions  # (n, d): c_k . w_i
    log_z = np.concatenate([_logsumexp(projections), _logsumexp(-projections)])
    return float(np.exp(log_z.min() - log_z.max()))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """log sum_i exp(x_ik) per column k."""
    top = x.max(axis=0)
    return top + np.log(np.exp(x - top).sum(axis=0))
