"""CLAN: contrastive learning with augmented *negatives*, for anomaly (intrusion) detection.

Wilkie, Hindy, Tachtatzis, Atkinson. "Contrastive Self-Supervised Network Intrusion Detection
using Augmented Negative Pairs". IEEE CSR 2025. https://arxiv.org/abs/2509.06550 (code:
github.com/jackwilkie/CLAN).

Training sees benign samples only. Unlike SimCLR, the other *benign* samples of the batch are the
positives of an anchor and the *augmented* copies -- stand-ins for malicious traffic -- are the
negatives, so that benign traffic forms one coherent cluster. With L2-normalised benign
embeddings ``b_i`` (B, d), augmented embeddings ``a_k`` (B, d) and ``s(x, y) = x . y``:

``form="likelihood"`` (default). The paper models ``P(benign | z)`` as a softmax over distances
to class centroids; replacing the centroids by the batch's samples gives, per anchor::

    P_i    = sum_{j != i} exp(s(b_i, b_j) / t)
    N_i    = sum_k exp(s(b_i, a_k) / t)
    loss_i = -log( P_i / (P_i + N_i) ),        loss = mean_i loss_i

``form="margin"`` (the authors' released code, ``clan``). With the cosine distance
``d(x, y) = (1 - s(x, y)) / 2`` in [0, 1], the mean distance between benign pairs and a hinge on
benign-augmented pairs, each averaged over the pairs that contribute (hinge > 0)::

    loss = alpha * mean_{i != j} d(b_i, b_j)
         + (1 - alpha) * sum_{i,k} max(0, m - d(b_i, a_k)) / #{(i, k): m - d(b_i, a_k) > 0}

At test time a sample is scored by its distance to the benign training embeddings
(:func:`benign_distance_score`, k nearest) or to their centroid (:func:`benign_centroid_score`,
the paper's O(1) scoring); larger means more anomalous.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    check_temperature,
    in_float32,
    normalize,
)

LossForm = Literal["likelihood", "margin"]


@in_float32
def augmented_negatives_loss_per_anchor(benign: Tensor, augmented: Tensor, temperature: float) -> Tensor:
    """``loss_i`` (B,) of the likelihood form (module docstring); inputs normalised here."""
    benign, augmented = normalize(benign), normalize(augmented)
    to_benign = benign @ benign.T / temperature
    self_pair = torch.eye(benign.shape[0], dtype=torch.bool, device=benign.device)
    to_benign = to_benign.masked_fill(self_pair, float("-inf"))
    to_augmented = benign @ augmented.T / temperature
    log_positive = torch.logsumexp(to_benign, dim=1)
    log_all = torch.logsumexp(torch.cat([to_benign, to_augmented], dim=1), dim=1)
    return log_all - log_positive


def cosine_distance_halved(x: Tensor, y: Tensor) -> Tensor:
    """``(1 - cos(x_i, y_j)) / 2`` for all pairs, in [0, 1] (the authors' ``cosdist``)."""
    return (1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T) / 2


@in_float32
def augmented_negatives_margin_terms(
    benign: Tensor, augmented: Tensor, margin: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-anchor pieces of the margin form: benign distance sums (B,), hinge sums (B,) and the
    number of active hinge pairs of the whole batch, so that ``loss = alpha * sum(first) / (B(B-1))
    + (1 - alpha) * sum(second) / count``."""
    off_diagonal = ~torch.eye(benign.shape[0], dtype=torch.bool, device=benign.device)
    benign_distance = cosine_distance_halved(benign, benign) * off_diagonal
    hinge = F.relu(margin - cosine_distance_halved(benign, augmented))
    return benign_distance.sum(1), hinge.sum(1), (hinge > 0).sum().clamp(min=1).detach()


@torch.no_grad()
def benign_distance_score(train_benign_emb: Tensor, test_emb: Tensor, k: int = 1, chunk_size: int = 4096) -> Tensor:
    """Anomaly score (M,): mean cosine distance ``1 - cos`` of each test embedding (M, d) to its
    ``k`` nearest benign training embeddings (N, d). Computed in chunks of test rows."""
    if train_benign_emb.ndim != 2 or test_emb.ndim != 2 or train_benign_emb.shape[1] != test_emb.shape[1]:
        raise DataError(
            f"benign_distance_score: expected train (N, d) and test (M, d) embeddings; got "
            f"{tuple(train_benign_emb.shape)} and {tuple(test_emb.shape)}."
        )
    if not 1 <= k <= train_benign_emb.shape[0]:
        raise ConfigError(
            f"benign_distance_score: k must be in [1, {train_benign_emb.shape[0]}] (the benign set size), got {k}."
        )
    train = F.normalize(train_benign_emb.float(), dim=-1)
    scores = []
    for start in range(0, test_emb.shape[0], chunk_size):
        test = F.normalize(test_emb[start : start + chunk_size].float(), dim=-1)
        nearest = (test @ train.T).topk(k, dim=1).values
        scores.append(1 - nearest.mean(1))
    return torch.cat(scores) if scores else test_emb.new_zeros(0)


@torch.no_grad()
def benign_centroid_score(train_benign_emb: Tensor, test_emb: Tensor) -> Tensor:
    """Anomaly score (M,): ``1 - cos(z, mu)`` with ``mu`` the mean normalised benign embedding."""
    centroid = F.normalize(train_benign_emb.float(), dim=-1).mean(0)
    return 1 - F.normalize(test_emb.float(), dim=-1) @ F.normalize(centroid, dim=0)


@OBJECTIVES.register("augmented_negatives")
class AugmentedNegatives(ContrastiveObjective):
    """CLAN loss (module docstring).

    Args:
        temperature: ``t`` of the likelihood form.
        form: ``"likelihood"`` or ``"margin"`` (the authors' released code).
        margin: ``m`` of the margin form (the authors' default 1.0: every pair contributes).
        alpha: weight of the benign-benign term in the margin form.

    Inputs:
        benign: (B, d) embeddings of benign samples (B >= 2).
        augmented: (K, d) embeddings of augmented copies (the negatives); under
            :class:`contrastkit.nn.distributed.GatheredObjective` one per benign sample (K = B).

    Example::

        objective = objectives.get("augmented_negatives", temperature=0.1)
        loss = objective(encoder(x), encoder(augment(x)))
        scores = benign_distance_score(encoder(x_train_benign), encoder(x_test))
    """

    not_for_view_pairs = "it treats its second input as negatives (CLAN); use contrastkit.modalities.tabular.estimators's CLAN"

    def __init__(
        self, temperature: float = 0.1, form: LossForm = "likelihood", margin: float = 1.0, alpha: float = 0.5
    ):
        super().__init__()
        if form not in ("likelihood", "margin"):
            raise ConfigError(f"Unknown augmented_negatives form '{form}'. Valid forms: likelihood, margin.")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"augmented_negatives: alpha must be in [0, 1], got {alpha}.")
        self.temperature = check_temperature(temperature)
        self.form = form
        self.margin = margin
        self.alpha = alpha

    def loss_terms(
        self, benign: Tensor, augmented: Tensor, *, anchor_rows: slice | None = None
    ) -> LossTerms:
        """Sum of the terms of the anchors ``anchor_rows`` and the normaliser of the full batch."""
        if augmented is None or benign.ndim != 2 or augmented.ndim != 2 or benign.shape[1] != augmented.shape[1] \
                or benign.shape[0] < 2:
            raise DataError(
                "augmented_negatives takes benign (B, d) with B >= 2 and augmented (K, d) embeddings; got "
                f"{tuple(benign.shape)} and {None if augmented is None else tuple(augmented.shape)}."
            )
        rows = slice(None) if anchor_rows is None else anchor_rows
        batch = benign.shape[0]
        if self.form == "likelihood":
            losses = augmented_negatives_loss_per_anchor(benign, augmented, self.temperature)
            return LossTerms(losses[rows].sum(), batch)
        distance_sums, hinge_sums, active = augmented_negatives_margin_terms(benign, augmented, self.margin)
        per_anchor = self.alpha * distance_sums / (batch * (batch - 1)) + (1 - self.alpha) * hinge_sums / active
        return LossTerms(per_anchor[rows].sum(), 1.0)

    def extra_repr(self) -> str:
        return f"form={self.form!r}, temperature={self.temperature}, margin={self.margin}, alpha={self.alpha}"
