"""Tabular views: SCARF random-feature corruption and correlated feature masking, batched in torch.

Both act on *features*, which by default are the columns of the encoded matrix ``x`` (B, D). With
``feature_groups`` (D,) -- e.g. :meth:`contrastkit.modalities.tabular.sources.TabularEncoder.feature_groups`
-- a feature is an input column, and all encoded columns of one input column (a one-hot block)
are corrupted or masked together, so a corrupted row is still a valid encoding.

SCARF (Bahri, Jiang, Tay, Metzler, "SCARF: Self-Supervised Contrastive Learning using Random
Feature Corruption", ICLR 2022, https://arxiv.org/abs/2106.15147): for each row, choose a subset
of exactly ``q = round(c * G)`` of its ``G`` features uniformly at random (``c`` = corruption
rate, the *share* of features corrupted) and replace feature ``g`` by the value of feature ``g``
in a uniformly random row of the training set, i.e. a draw from ``g``'s empirical marginal.

Correlated feature masking (Yao et al., "Self-supervised Learning for Large-scale Item
Recommendations", CIKM 2021, https://arxiv.org/abs/2007.12865, Section 3.2): features that carry
the same information must be masked together, or the encoder recovers a masked feature from its
correlated partner and learns a shortcut. With ``MI(f_i, f_j)`` the mutual information of two
(discretised) features on the training set, a view masks a random seed feature ``f_s`` and the
``n - 1`` features of highest ``MI(f_s, .)``; the paired view masks the complement.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import mutual_info_score
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------- helpers


def _check_groups(feature_groups: Tensor | np.ndarray | None, n_columns: int) -> Tensor:
    """(D,) int64 group of each encoded column, groups numbered 0..G-1 (identity when None)."""
    if feature_groups is None:
        return torch.arange(n_columns)
    groups = torch.as_tensor(np.asarray(feature_groups), dtype=torch.int64)
    if groups.ndim != 1 or groups.shape[0] != n_columns:
        raise DataError(
            f"feature_groups must have one entry per column of x ({n_columns}), got shape {tuple(groups.shape)}."
        )
    if groups.min() < 0 or not torch.equal(torch.unique(groups), torch.arange(int(groups.max()) + 1)):
        raise DataError("feature_groups must number the groups 0, 1, ..., G-1 with none skipped.")
    return groups


def corrupted_feature_count(rate: float, n_features: int) -> int:
    """``q = round(rate * n_features)``, the number of features SCARF corrupts in every row."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"SCARF corruption rate must be in [0, 1] (the share of features corrupted), got {rate}.")
    return round(rate * n_features)


def random_subset_mask(
    batch: int, n_features: int, n_chosen: int, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """(batch, n_features) bool with exactly ``n_chosen`` True per row, each subset uniform.

    The ranks of i.i.d. uniform keys are a uniform random permutation, so the features holding
    the ``n_chosen`` smallest keys are a uniform ``n_chosen``-subset.
    """
    keys = torch.rand(batch, n_features, generator=generator, device=device)
    chosen = keys.argsort(dim=1)[:, :n_chosen]
    mask = torch.zeros(batch, n_features, dtype=torch.bool, device=device)
    return mask.scatter_(1, chosen, True)


# ---------------------------------------------------------------------------------- SCARF


def scarf_corrupt(
    x: Tensor,
    reference: Tensor,
    rate: float,
    feature_groups: Tensor | np.ndarray | None = None,
    generator: torch.Generator | None = None,
    *,
    batch_rows: int | None = None,
    first_row: int = 0,
) -> tuple[Tensor, Tensor]:
    """SCARF corruption of a batch ``x`` (B, D) from the training rows ``reference`` (N, D).

    Returns ``(x_tilde, mask)`` with ``mask`` (B, G) True on the corrupted features::

        q            = round(rate * G)                          (exactly q per row)
        donor[b, g] ~ Uniform{0, ..., N - 1}                    (independent per row and feature)
        x_tilde[b, j] = reference[donor[b, group(j)], j]  if mask[b, group(j)]  else  x[b, j]

    A donor value can equal the original one, so ``mask`` -- not ``x_tilde != x`` -- says which
    features were corrupted.

    ``batch_rows`` and ``first_row``: ``x`` is rows ``first_row .. first_row + B - 1`` of a batch
    of ``batch_rows`` rows (one process's share of a global batch). The random draws are made
    for the whole batch, in the same order, and this share's rows are kept, so a row is
    corrupted as it would be if one process held the whole batch, however the batch is split
    (default: ``x`` is the whole batch).
    """
    if x.ndim != 2 or reference.ndim != 2 or x.shape[1] != reference.shape[1]:
        raise DataError(
            f"scarf_corrupt: x (B, D) and reference (N, D) must share D; got {tuple(x.shape)} and "
            f"{tuple(reference.shape)}."
        )
    if reference.shape[0] == 0:
        raise DataError("scarf_corrupt: the reference (training) rows are empty.")
    total = x.shape[0] if batch_rows is None else batch_rows
    if first_row < 0 or first_row + x.shape[0] > total:
        raise DataError(f"scarf_corrupt: rows {first_row}..{first_row + x.shape[0] - 1} are not rows of a batch "
                        f"of {total}.")
    mine = slice(first_row, first_row + x.shape[0])
    groups = _check_groups(feature_groups, x.shape[1]).to(x.device)
    n_groups = int(groups.max()) + 1
    mask = random_subset_mask(total, n_groups, corrupted_feature_count(rate, n_groups), generator, x.device)[mine]
    donors = torch.randint(reference.shape[0], (total, n_groups), generator=generator, device=x.device)[mine]
    donor_values = reference.to(x.device, x.dtype)[donors[:, groups], torch.arange(x.shape[1], device=x.device)]
    return torch.where(mask[:, groups], donor_values, x), mask


class SCARFCorruption(nn.Module):
    """:func:`scarf_corrupt` with the training rows held as a buffer (moved with the module, not
    saved in its ``state_dict``: they are data, not learned state, and a checkpoint of a model
    trained on a large table should not carry the table).

    Args:
        reference: (N, D) training rows whose columns are the empirical marginals.
        rate: corruption rate ``c`` in [0, 1], the share of features replaced (paper default 0.6).
        feature_groups: optional (D,) input column of each encoded column.
    """

    def __init__(self, reference: Tensor, rate: float = 0.6, feature_groups: Tensor | np.ndarray | None = None):
        super().__init__()
        reference = torch.as_tensor(reference, dtype=torch.float32)
        self.register_buffer("reference", reference, persistent=False)
        self.register_buffer("feature_groups", _check_groups(feature_groups, reference.shape[1]), persistent=False)
        corrupted_feature_count(rate, 1)  # validates the rate
        self.rate = rate

    def forward(self, x: Tensor, generator: torch.Generator | None = None, *, batch_rows: int | None = None,
                first_row: int = 0) -> Tensor:
        """``x`` corrupted; ``batch_rows``, ``first_row``: ``x`` is a share of a larger batch
        (:func:`scarf_corrupt`)."""
        return scarf_corrupt(x, self.reference, self.rate, self.feature_groups, generator,
                             batch_rows=batch_rows, first_row=first_row)[0]

    def extra_repr(self) -> str:
        return f"rate={self.rate}, reference_rows={self.reference.shape[0]}"


# ---------------------------------------------------------------------------------- correlated masking


def discretize_columns(x: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Integer codes (N, D): a column with at most ``n_bins`` distinct values keeps them as codes;
    otherwise it is cut at its empirical quantiles into at most ``n_bins`` bins."""
    x = np.asarray(x, dtype=np.float64)
    codes = np.empty(x.shape, dtype=np.int64)
    for j in range(x.shape[1]):
        values = np.unique(x[:, j])
        if len(values) <= n_bins:
            codes[:, j] = np.searchsorted(values, x[:, j])
        else:
            edges = np.unique(np.quantile(x[:, j], np.linspace(0, 1, n_bins + 1)[1:-1]))
            codes[:, j] = np.searchsorted(edges, x[:, j], side="right")
    return codes


def mutual_information_matrix(
    x: np.ndarray, feature_groups: np.ndarray | None = None, n_bins: int = 10
) -> np.ndarray:
    """(G, G) pairwise mutual information (nats) of the features of training rows ``x`` (N, D).

    Columns are discretised by :func:`discretize_columns`; with ``feature_groups`` a group's
    columns are combined into one categorical code (a one-hot block becomes its category). The
    diagonal holds each feature's entropy ``MI(f, f) = H(f)``.
    """
    codes = discretize_columns(x, n_bins)
    if feature_groups is not None:
        groups = _check_groups(feature_groups, codes.shape[1]).numpy()
        merged = []
        for g in range(groups.max() + 1):
            block = codes[:, groups == g]
            merged.append(np.unique(block, axis=0, return_inverse=True)[1].reshape(-1))
        codes = np.stack(merged, axis=1)
    n_features = codes.shape[1]
    mi = np.zeros((n_features, n_features))
    for i in range(n_features):
        for j in range(i, n_features):
            mi[i, j] = mi[j, i] = mutual_info_score(codes[:, i], codes[:, j])
    return mi


def correlated_feature_groups(mi: np.ndarray, group_size: int) -> np.ndarray:
    """(G, group_size) int64: row ``s`` is seed feature ``s`` then the ``group_size - 1`` other
    features of highest ``MI(s, .)`` (ties broken by the lower index)."""
    mi = np.asarray(mi, dtype=np.float64)
    if mi.ndim != 2 or mi.shape[0] != mi.shape[1]:
        raise DataError(f"mutual information matrix must be square, got shape {mi.shape}.")
    if not 1 <= group_size <= mi.shape[0]:
        raise ConfigError(f"group_size must be in [1, {mi.shape[0]}] (the number of features), got {group_size}.")
    others = mi.copy()
    np.fill_diagonal(others, -np.inf)  # the seed is placed first explicitly
    order = np.argsort(-others, axis=1, kind="stable")[:, : group_size - 1]
    return np.concatenate([np.arange(mi.shape[0])[:, None], order], axis=1)


def correlated_feature_mask(
    groups: Tensor, batch: int, generator: torch.Generator | None = None
) -> Tensor:
    """(batch, G) bool: each row masks the group (a row of ``groups`` (G, n)) of a uniformly random seed."""
    groups = torch.as_tensor(groups, dtype=torch.int64)
    seeds = torch.randint(groups.shape[0], (batch,), generator=generator, device=groups.device)
    mask = torch.zeros(batch, groups.shape[0], dtype=torch.bool, device=groups.device)
    return mask.scatter_(1, groups[seeds], True)


class CorrelatedFeatureMasking(nn.Module):
    """Two complementary views: the first masks a correlated group, the second everything else.

    Masked features are replaced by ``fill_value`` (0: the mean of a robust-scaled numeric and
    "no category" of a one-hot block). Yao et al. mask half of the features per view, hence
    ``mask_fraction=0.5``.

    Args:
        mi: (G, G) mutual information of the features (:func:`mutual_information_matrix`).
        mask_fraction: share of the G features masked in the first view.
        feature_groups: optional (D,) input column of each encoded column.
        complementary: the second view masks the complement (Yao et al.); else an independent draw.
    """

    def __init__(
        self,
        mi: np.ndarray,
        mask_fraction: float = 0.5,
        feature_groups: Tensor | np.ndarray | None = None,
        complementary: bool = True,
        fill_value: float = 0.0,
    ):
        super().__init__()
        n_features = np.asarray(mi).shape[0]
        group_size = max(1, round(mask_fraction * n_features))
        self.register_buffer("groups", torch.from_numpy(correlated_feature_groups(mi, group_size)))
        column_groups = torch.arange(n_features) if feature_groups is None else _check_groups(
            feature_groups, len(feature_groups))
        if int(column_groups.max()) + 1 != n_features:
            raise DataError(f"feature_groups define {int(column_groups.max()) + 1} features but mi is {n_features}x{n_features}.")
        self.register_buffer("column_groups", column_groups)
        self.complementary = complementary
        self.fill_value = fill_value

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if x.ndim != 2 or x.shape[1] != self.column_groups.shape[0]:
            raise DataError(f"CorrelatedFeatureMasking expects (B, {self.column_groups.shape[0]}), got {tuple(x.shape)}.")
        first = correlated_feature_mask(self.groups, x.shape[0], generator)
        second = ~first if self.complementary else correlated_feature_mask(self.groups, x.shape[0], generator)
        fill = torch.full_like(x, self.fill_value)
        return (torch.where(first[:, self.column_groups], fill, x),
                torch.where(second[:, self.column_groups], fill, x))


__all__ = [
    "CorrelatedFeatureMasking",
    "SCARFCorruption",
    "correlated_feature_groups",
    "correlated_feature_mask",
    "corrupted_feature_count",
    "discretize_columns",
    "mutual_information_matrix",
    "random_subset_mask",
    "scarf_corrupt",
]
