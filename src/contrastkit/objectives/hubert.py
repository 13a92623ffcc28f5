"""HuBERT's masked prediction of cluster targets: cross-entropy over codewords at masked frames.

Hsu, Bolte, Tsai, Lakhotia, Salakhutdinov & Mohamed, "HuBERT: Self-Supervised Speech Representation
Learning by Masked Prediction of Hidden Units", IEEE/ACM TASLP 2021 (https://arxiv.org/abs/2106.07447),
Sec. II-A and III-A. Each frame ``t`` of utterance ``i`` has a target cluster ``z_t`` (k-means of
MFCCs, later of the model's own features; :mod:`contrastkit.modalities.audio.targets`); the model's
output ``o_t`` at that frame is projected (``A o_t``, done by the method) and scored against one
embedding ``e_c`` per cluster::

    p(c | X~, t) = exp(cos(A o_t, e_c) / tau) / sum_c' exp(cos(A o_t, e_c') / tau)        tau = 0.1

    L_m = mean over masked frames t in M of  -log p(z_t | X~, t)
    L_u = mean over unmasked frames t not in M of  -log p(z_t | X~, t)
    L   = (1 - w) L_m + w L_u

The paper writes ``L = alpha L_m + (1 - alpha) L_u`` and finds ``alpha = 1`` (the masked term only)
best; here ``w = unmasked_weight = 1 - alpha``, 0 by default. Frames without a target (padding,
``targets < 0``) take part in neither mean.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import ContrastiveObjective, LossTerms, anchor_range, check_temperature, in_float32
from contrastkit.objectives.registry import OBJECTIVES


def cluster_logits(predictions: Tensor, cluster_embeddings: Tensor, temperature: float = 0.1) -> Tensor:
    """``cos(A o_t, e_c) / tau``: (B, T, D) predictions and (C, D) embeddings -> (B, T, C)."""
    cosine = F.normalize(predictions, dim=-1, eps=1e-8) @ F.normalize(cluster_embeddings, dim=-1, eps=1e-8).T
    return cosine / temperature


def _check(predictions: Tensor, cluster_embeddings: Tensor, targets: Tensor, masked: Tensor) -> None:
    if predictions.dim() != 3 or cluster_embeddings.dim() != 2 or cluster_embeddings.shape[1] != predictions.shape[2]:
        raise DataError(f"hubert_masked_prediction: predictions must be (B, T, D) and cluster_embeddings (C, D); "
                        f"got {tuple(predictions.shape)} and {tuple(cluster_embeddings.shape)}.")
    if targets.shape != predictions.shape[:2] or masked.shape != predictions.shape[:2]:
        raise DataError(f"hubert_masked_prediction: targets and masked must be (B, T) = "
                        f"{tuple(predictions.shape[:2])}; got {tuple(targets.shape)} and {tuple(masked.shape)}.")
    largest = int(targets.max()) if targets.numel() else -1
    if targets.dtype.is_floating_point or largest >= cluster_embeddings.shape[0]:
        raise DataError(f"hubert_masked_prediction: targets are cluster ids below C = {cluster_embeddings.shape[0]} "
                        f"(-1 for none); got dtype {targets.dtype}, largest {largest}.")


@in_float32
def hubert_terms(predictions: Tensor, cluster_embeddings: Tensor, targets: Tensor, masked: Tensor,
                 temperature: float = 0.1, unmasked_weight: float = 0.0,
                 anchor_rows: slice | None = None) -> LossTerms:
    """``L`` restricted to the utterances ``anchor_rows`` (all when None), each mean's divisor being
    the count of its frames in the whole batch, so the shares of a partition sum to ``L`` (count 1)."""
    _check(predictions, cluster_embeddings, targets, masked)
    rows = anchor_range(anchor_rows, predictions.shape[0], predictions.device)
    has_target = targets >= 0
    in_masked, in_unmasked = masked.bool() & has_target, ~masked.bool() & has_target
    logits = cluster_logits(predictions[rows], cluster_embeddings, temperature)
    cross_entropy = F.cross_entropy(logits.flatten(0, 1), targets[rows].clamp_min(0).flatten(),
                                    reduction="none").view(len(rows), -1)
    total = (1.0 - unmasked_weight) * (cross_entropy * in_masked[rows]).sum() / in_masked.sum().clamp_min(1)
    if unmasked_weight:
        total = total + unmasked_weight * (cross_entropy * in_unmasked[rows]).sum() / in_unmasked.sum().clamp_min(1)
    return LossTerms(total, 1.0)


@OBJECTIVES.register("hubert_masked_prediction")
class HubertMaskedPrediction(ContrastiveObjective):
    r"""HuBERT's cross-entropy over cluster ids at masked frames (formula in the module docstring).

    Called as ``objective(predictions, None, cluster_embeddings=E, targets=z, masked=M)``:
    ``predictions`` (B, T, D) the projected outputs ``A o_t``, ``E`` (C, D) one embedding per
    cluster (a parameter of the method, the same on every process), ``z`` (B, T) int cluster ids
    (-1: no target), ``M`` (B, T) bool the masked frames.

    Distributed: ``targets`` and ``masked`` are per-utterance inputs; each mean is divided by the
    global count of its frames, so the processes' shares sum to the one-process loss.

    Args:
        temperature: ``tau`` of the cosine logits (the paper: 0.1).
        unmasked_weight: ``w = 1 - alpha``, the weight of the unmasked frames' term (0: the
            paper's best setting, masked frames only).

    References:
        - Hsu et al., "HuBERT", IEEE/ACM TASLP 2021, Sec. II-A, III-A. https://arxiv.org/abs/2106.07447
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("targets", "masked")
    not_for_view_pairs: ClassVar[str] = "it scores per-frame predictions (B, T, D) against cluster ids, not two views"

    def __init__(self, temperature: float = 0.1, unmasked_weight: float = 0.0):
        super().__init__()
        if not 0.0 <= unmasked_weight <= 1.0:
            raise ConfigError(f"hubert_masked_prediction: unmasked_weight (1 - alpha) must be in [0, 1], "
                              f"got {unmasked_weight}.")
        self.temperature = check_temperature(temperature)
        self.unmasked_weight = float(unmasked_weight)

    def forward(self, predictions: Tensor, unused: None = None, **inputs: Tensor) -> Tensor:
        return self.loss_terms(predictions, unused, **inputs).mean()

    def loss_terms(self, predictions: Tensor, unused: None = None, *, cluster_embeddings: Tensor, targets: Tensor,
                   masked: Tensor, anchor_rows: slice | None = None) -> LossTerms:
        if unused is not None:
            raise DataError("hubert_masked_prediction takes the predictions alone; the second input must be None.")
        return hubert_terms(predictions, cluster_embeddings, targets, masked, self.temperature,
                            self.unmasked_weight, anchor_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, unmasked_weight={self.unmasked_weight}"
