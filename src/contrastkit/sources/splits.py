"""Label-aware index splits for evaluating runs: a stratified train/test split and a subset
of k labelled samples per class (the "k labels per class" linear probe).

Both are deterministic given ``seed`` (NumPy's PCG64 via ``default_rng``), return sorted int64
position arrays, and treat classes in increasing label order.
"""

from __future__ import annotations

import numpy as np

from contrastkit.errors import ConfigError, DataError


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..N-1`` into (train_idx, test_idx) keeping class proportions.

    Class c with n_c samples sends ``t_c = round(n_c * test_fraction)`` of them, chosen at
    random, to the test part, with t_c clipped to [1, n_c - 1] whenever n_c >= 2, so every class
    with at least two samples appears in both parts; a class with one sample goes to train.
    Hence the test size is sum_c t_c, which may differ from round(N * test_fraction) by at most
    about one per class.
    """
    labels = _check_labels(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction}.")
    rng = np.random.default_rng(seed)
    test_parts = []
    for members in _members_by_class(labels):
        n = len(members)
        take = min(max(round(n * test_fraction), 1), n - 1) if n >= 2 else 0
        test_parts.append(rng.permutation(members)[:take])
    is_test = np.zeros(len(labels), dtype=bool)
    if test_parts:
        is_test[np.concatenate(test_parts)] = True
    return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)


def per_class_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Positions of ``per_class`` samples of every class, drawn without replacement.

    Raises ConfigError if a class has fewer than ``per_class`` samples, rather than silently
    giving that class fewer labels than asked for.
    """
    labels = _check_labels(labels)
    if per_class < 1:
        raise ConfigError(f"per_class must be at least 1; got {per_class}.")
    rng = np.random.default_rng(seed)
    chosen = []
    for members in _members_by_class(labels):
        if len(members) < per_class:
            raise ConfigError(
                f"{per_class} samples per class were asked for, but class "
                f"{int(labels[members[0]])} has only {len(members)}. Ask for at most "
                f"{min(len(m) for m in _members_by_class(labels))} per class."
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D integer array; got dtype {labels.dtype} "
            f"and shape {labels.shape}."
        )
    if labels.size and labels.min() < 0:
        raise DataError(
            "labels contain negative values (-1 marks an unlabeled sample); splits by class "
            "need a labelled set."
        )
    return labels


def _members_by_class(labels: np.ndarray) -> list[np.ndarray]:
    """Positions of each present class, classes in increasing order, positions ascending."""
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    return np.split(order, starts[1:]) if len(classes) else []
