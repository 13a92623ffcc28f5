"""Conversion at the boundary: every evaluation function accepts numpy arrays or torch tensors
(on any device) and works on float32 numpy matrices and int64 label vectors inside.

Shape and dtype mistakes are reported here, once, as :class:`~contrastkit.core.errors.DataError`
naming the argument, so the functions behind this boundary can assume clean input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastkit.core.errors import DataError


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def as_float32_matrix(x: Any, name: str, min_rows: int = 1) -> np.ndarray:
    """``x`` as a C-contiguous float32 matrix (n, d); a DataError names ``name`` otherwise."""
    array = to_numpy(x)
    if array.ndim != 2:
        raise DataError(
            f"{name} must be a 2-D array of shape (n_samples, dim), but it has shape "
            f"{tuple(array.shape)}. Flatten or stack the embeddings into one matrix first."
        )
    if array.shape[0] < min_rows or array.shape[1] < 1:
        raise DataError(
            f"{name} has shape {tuple(array.shape)}; it needs at least {min_rows} row(s) and one "
            f"column. Check that the data set is not empty."
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise DataError(
            f"{name} contains NaN or infinite values (shape {tuple(array.shape)}). The encoder "
            f"that produced them has probably diverged; evaluate an earlier checkpoint."
        )
    return array


UNLABELLED = -1  # the label of a row whose class is unknown, where a function accepts such rows


def as_label_vector(y: Any, name: str, length: int | None = None, allow_unlabelled: bool = False) -> np.ndarray:
    """``y`` as an int64 vector of non-negative class indices, of ``length`` when given; with
    ``allow_unlabelled`` it may also hold :data:`UNLABELLED` (-1) for rows without a label."""
    array = to_numpy(y)
    if array.ndim != 1:
        raise DataError(
            f"{name} must be a 1-D vector of class indices, but it has shape {tuple(array.shape)}."
        )
    if length is not None and array.shape[0] != length:
        raise DataError(
            f"{name} has {array.shape[0]} entries but the embeddings have {length} rows; "
            f"give one label per embedding row."
        )
    if array.dtype.kind == "O":  # e.g. a list mixing ints and numpy ints: numbers if they all are
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if array.dtype.kind not in "biuf":  # strings or objects: class names, not indices
        raise DataError(
            f"{name} must hold integer class indices, but it has dtype {array.dtype} (class names?). "
            f"Encode the classes as 0..C-1 first, e.g. np.unique(labels, return_inverse=True)[1]."
        )
    is_integer = np.issubdtype(array.dtype, np.integer)
    if array.size and not is_integer and not np.all(np.mod(array, 1) == 0):
        raise DataError(
            f"{name} must hold integer class indices, but it has dtype {array.dtype} with "
            f"non-integer values. Encode the classes as 0..C-1 first."
        )
    array = array.astype(np.int64)
    if allow_unlabelled and array.size and array.min() < UNLABELLED:
        raise DataError(f"{name} contains the label {array.min()}; give classes as 0..C-1 and -1 for a row "
                        f"without a label.")
    if not allow_unlabelled and array.size and array.min() < 0:
        raise DataError(
            f"{name} contains negative labels (min {array.min()}); -1 usually marks an unlabeled "
            f"sample. Evaluate only the labeled rows, with labels 0..C-1."
        )
    return array


def l2_normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """x_i / max(||x_i||_2, eps); an all-zero row stays zero (as torch.nn.functional.normalize)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)
