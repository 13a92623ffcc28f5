"""DebCSE: contrastive sentence embeddings with inverse-propensity-weighted positives and negatives.

Miao, Du & Zhang, "DebCSE: Rethinking Unsupervised Contrastive Sentence Embedding Learning in the
Debiasing Perspective", CIKM 2023 (https://arxiv.org/abs/2309.07396). The paper's thesis: the
simple rules that build unsupervised training pairs (SimCSE: a sentence and itself are positive,
everything else negative) introduce biases -- *length bias* (positives always look alike on the
surface) and *false-negative bias* (some in-batch "negatives" mean the same thing) -- and the fix
is to select positive and negative pairs by inverse-propensity-weighted sampling on the pairs'
surface and semantic similarity, so that the training pairs resemble a supervised set's. The
authors did not publish code; this file is our implementation of that recipe, and the choices
below marked (ours) are not taken from the paper.

One training step, for anchors ``x_1 .. x_B``:

1. Positive candidates (ours: the edits): ``x_i0 = x_i`` (the SimCSE positive, two dropout
   masks), and ``num_candidates`` edits of ``x_i`` that change its length -- word deletion and
   ESimCSE's word repetition, alternating (:mod:`._surface`).
2. Semantic similarity ``sem = cos(t(a), t(b))`` from a frozen copy ``t`` of the initial encoder
   in eval mode (``semantic_model: frozen``, default), or from the current encoder without
   gradient (``online``). Surface similarity ``surf``: word-length ratio and word overlap
   (:mod:`._surface`).
3. Positive selection: candidate ``c`` is drawn as ``x_i``'s positive ``y_i`` with probability
   ``p_ic ∝ sem_ic / propensity(surf_ic)`` (:mod:`._propensity`): positives are meaning-preserving
   and, over the batch, spread over surface similarities instead of piling up at 1.
4. Negative weighting: the other anchors' positives ``y_j`` are ``x_i``'s negatives, weighted by
   ``w_ij ∝ (1 - sem_ij) / propensity(surf_ij)`` with mean 1 per row (0 above
   ``false_negative_threshold``). The paper *samples* negatives; counting negative j ``w_ij``
   times in the denominator is the expectation of sampling negatives with probabilities
   ``w_ij / (B - 1)`` (ours: lower variance, deterministic).
5. Loss: SimCSE's InfoNCE with weighted negatives (:mod:`contrastkit.objectives.query_key`), ``z_i = f(x_i)``,
   ``h_j = f(y_j)`` (both with dropout and gradient), ``s_ij = cos(z_i, h_j) / temperature``::

       loss = mean_i [ -s_ii + log( exp(s_ii) + sum_{j != i} w_ij exp(s_ij) ) ]

With ``num_candidates = 0`` every positive is the sentence itself, and when moreover all weights
are 1 (``sem`` and ``surf`` constant over the batch) the loss is exactly SimCSE's. Defaults: temperature 0.05 (SimCSE's, on which DebCSE builds); 10 propensity bins clipped
at 0.05 (ours). The sentence embedding used downstream is the encoder's output; nothing here is
needed at inference. Under several processes each process weighs and contrasts its own batch (the
weights are per pair of the local batch): the negatives are not gathered.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.base import check_temperature
from contrastkit.modalities.text.encoders import TextEncoder
from contrastkit.modalities.text.methods import check_options
from contrastkit.objectives.query_key import query_key_infonce
from contrastkit.modalities.text.methods._propensity import (
    negative_weights,
    positive_selection_probabilities,
)
from contrastkit.modalities.text.methods._surface import (
    SURFACE_MEASURES,
    delete_words,
    repeat_words,
    surface_similarity,
    surface_similarity_matrix,
)

SEMANTIC_MODELS = ("frozen", "online")
DEFAULTS = {
    "temperature": 0.05,
    "num_candidates": 2,
    "deletion_rate": 0.2,
    "repetition_rate": 0.32,
    "surface_measure": "mixed",
    "semantic_model": "frozen",
    "propensity_bins": 10,
    "propensity_power": 1.0,
    "propensity_clip": 0.05,
    "false_negative_threshold": None,
}


def positive_candidates(text: str, count: int, deletion_rate: float, repetition_rate: float) -> list[str]:
    """``[text, edit_1, ..., edit_count]``: odd edits delete words, even edits repeat words."""
    edits = [
        delete_words(text, deletion_rate) if c % 2 == 1 else repeat_words(text, repetition_rate)
        for c in range(1, count + 1)
    ]
    return [text, *edits]


class DebCSE(nn.Module):
    """SimCSE with positives drawn and negatives weighted by inverse propensity (see module doc)."""

    def __init__(self, encoder: TextEncoder, *, temperature: float = 0.05, num_candidates: int = 2,
                 deletion_rate: float = 0.2, repetition_rate: float = 0.32, surface_measure: str = "mixed",
                 semantic_model: str = "frozen", propensity_bins: int = 10, propensity_power: float = 1.0,
                 propensity_clip: float = 0.05, false_negative_threshold: float | None = None):
        super().__init__()
        _check_choice("surface_measure", surface_measure, SURFACE_MEASURES)
        _check_choice("semantic_model", semantic_model, SEMANTIC_MODELS)
        if not isinstance(num_candidates, int) or num_candidates < 0:
            raise ConfigError(f"Option debcse.num_candidates must be an integer >= 0, got {num_candidates!r}.")
        for name, value in (("deletion_rate", deletion_rate), ("repetition_rate", repetition_rate),
                            ("propensity_clip", propensity_clip)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"Option debcse.{name} must be in [0, 1), got {value!r}.")
        if not isinstance(propensity_bins, int) or propensity_bins < 1:
            raise ConfigError(f"Option debcse.propensity_bins must be a positive integer, got {propensity_bins!r}.")
        if propensity_power < 0:
            raise ConfigError(f"Option debcse.propensity_power must be >= 0 (0: no propensity), "
                              f"got {propensity_power!r}.")
        self.encoder = encoder
        # The frozen semantic scorer: a copy of the encoder as it was before training.
        self.semantic_encoder = frozen_copy(encoder) if semantic_model == "frozen" else None
        self.temperature = check_temperature(temperature)
        self.num_candidates = num_candidates
        self.deletion_rate = float(deletion_rate)
        self.repetition_rate = float(repetition_rate)
        self.surface_measure = surface_measure
        self.propensity_bins = propensity_bins
        self.propensity_power = float(propensity_power)
        self.propensity_clip = float(propensity_clip)
        self.false_negative_threshold = false_negative_threshold

    def train(self, mode: bool = True) -> DebCSE:
        super().train(mode)
        if self.semantic_encoder is not None:
            self.semantic_encoder.eval()  # a fixed scorer: never dropout
        return self

    @torch.no_grad()
    def semantic_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings (N, D) of ``texts`` by the semantic scorer, eval mode, no gradient."""
        scorer = self.semantic_encoder if self.semantic_encoder is not None else self.encoder
        embeddings = scorer.encode(texts, batch_size=max(1, len(texts)))
        return F.normalize(embeddings.float(), dim=-1)

    def select_pairs(self, texts: list[str]) -> tuple[list[str], torch.Tensor, dict[str, float]]:
        """Draw each anchor's positive and weight the negatives: ``(positives, weights (B, B), logs)``."""
        batch = len(texts)
        candidates = [positive_candidates(t, self.num_candidates, self.deletion_rate, self.repetition_rate)
                      for t in texts]
        per_anchor = self.num_candidates + 1
        flat = [c for group in candidates for c in group]
        embedded = self.semantic_embeddings(flat).view(batch, per_anchor, -1)  # candidate 0 is the anchor
        anchors = embedded[:, 0]
        semantic = torch.einsum("bd,bcd->bc", anchors, embedded)
        surface = torch.tensor([[surface_similarity(t, c, self.surface_measure) for c in group]
                                for t, group in zip(texts, candidates, strict=True)])
        probabilities = positive_selection_probabilities(
            semantic, surface, self.propensity_bins, self.propensity_power, self.propensity_clip)
        choice = torch.multinomial(probabilities, 1).squeeze(1)
        positives = [group[c] for group, c in zip(candidates, choice.tolist(), strict=True)]
        chosen = embedded[torch.arange(batch), choice]  # (B, D) scorer embeddings of the positives
        weights = negative_weights(
            anchors @ chosen.T, surface_similarity_matrix(texts, positives, self.surface_measure),
            self.propensity_bins, self.propensity_power, self.propensity_clip, self.false_negative_threshold)
        off_diagonal = ~torch.eye(batch, dtype=torch.bool)
        logs = {
            "positive_surface_similarity": float(surface[torch.arange(batch), choice].mean()),
            "identical_positive_share": float((choice == 0).float().mean()),
            "removed_negative_share": float((weights[off_diagonal] == 0).float().mean()) if batch > 1 else 0.0,
        }
        return positives, weights, logs

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        texts = list(batch["texts"])
        if len(texts) < 2:
            raise DataError(f"debcse needs a batch of at least 2 texts to have negatives, got {len(texts)}.")
        positives, weights, logs = self.select_pairs(texts)
        embeddings = self.encoder(self.encoder.tokenize(texts + positives))
        anchors, positive_embeddings = embeddings.split(len(texts))
        loss = query_key_infonce(anchors, positive_embeddings, self.temperature,
                                 negative_weights=weights.to(embeddings.device))
        return loss, logs


def frozen_copy(encoder: nn.Module) -> nn.Module:
    """A deep copy of ``encoder`` that the optimiser never updates (``requires_grad=False``)."""
    scorer = copy.deepcopy(encoder)
    for parameter in scorer.parameters():
        parameter.requires_grad_(False)
    return scorer.eval()


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"Option debcse.{option} must be one of {', '.join(choices)}, got {value!r}.")


def build(encoder: TextEncoder, **options) -> DebCSE:
    """DebCSE on ``encoder``; options (defaults in ``DEFAULTS``) as in :class:`DebCSE`."""
    return DebCSE(encoder, **check_options("debcse", options, DEFAULTS))
