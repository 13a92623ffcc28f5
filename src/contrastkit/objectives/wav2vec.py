"""wav2vec 2.0's two losses: contrast of masked steps against distractors of the same utterance,
and the diversity of a Gumbel-softmax product-quantisation codebook.

Baevski, Zhou, Mohamed & Auli, "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations", NeurIPS 2020 (https://arxiv.org/abs/2006.11477), Sec. 3.2 and 3.3. The method
(:mod:`contrastkit.modalities.audio.methods.wav2vec2`) computes the context outputs ``c_t``, the
quantised latents ``q_t``, the masked steps, the distractor indices and the codebook logits; these
losses only score them, so each is checkable against a loop.

Contrastive loss (Eq. 3), for utterance ``i`` and every masked step ``t``, ``Q_t`` being ``q_t`` and
the ``K`` distractors ``q_{d_1} .. q_{d_K}`` (steps ``d_k = distractors[i, t, k]``, other masked
steps of the same utterance)::

    L_m(i, t) = -log  exp(sim(c_t, q_t) / kappa) / sum_{q~ in Q_t} exp(sim(c_t, q~) / kappa),
    sim(a, b) = a . b / (||a|| ||b||),    loss = mean over every masked (i, t) of L_m(i, t)

A distractor whose quantised vector equals the target's exactly (the same codewords) is left out
of the sum, as the paper's code does: it is the positive, not a negative. ``kappa = 0.1``.

Diversity loss (Eq. 4), over ``G`` codebooks of ``V`` entries each, ``p_bar_{g,v}`` being the
softmax over ``v`` of the codebook logits (no Gumbel noise) averaged over every frame of the
batch that is taken into account (``frames``)::

    L_d = (G V - sum_g exp(-sum_v p_bar_{g,v} log p_bar_{g,v})) / (G V)

``exp`` of the entropy of group ``g`` is its perplexity, between 1 (every frame picks one entry)
and V (uniform use); so L_d is 0 for uniform use of every entry and ``(G V - G) / (G V)`` when each
group uses one entry. The paper writes ``1/(GV) sum_g -H(p_bar_g) = 1/(GV) sum_g sum_v p log p``;
the reference code minimises ``(GV - perplexity) / GV``, which is written here (the same minimiser,
and the value reads as the share of unused codewords).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    anchor_range,
    check_temperature,
    in_float32,
    mask_value,
)
from contrastkit.objectives.registry import OBJECTIVES


def _check_contrastive(contexts: Tensor, quantized: Tensor, masked: Tensor, distractors: Tensor) -> None:
    if contexts.dim() != 3 or contexts.shape != quantized.shape:
        raise DataError(f"wav2vec_contrastive: contexts and quantized must both be (B, T, D); got "
                        f"{tuple(contexts.shape)} and {tuple(quantized.shape)}.")
    if masked.shape != contexts.shape[:2] or distractors.dim() != 3 or distractors.shape[:2] != contexts.shape[:2]:
        raise DataError(f"wav2vec_contrastive: masked must be (B, T) and distractors (B, T, K) for contexts "
                        f"{tuple(contexts.shape)}; got {tuple(masked.shape)} and {tuple(distractors.shape)}.")


@in_float32
def wav2vec_contrastive_terms(contexts: Tensor, quantized: Tensor, masked: Tensor, distractors: Tensor,
                              temperature: float = 0.1, anchor_rows: slice | None = None) -> LossTerms:
    """The summed ``L_m(i, t)`` of the masked steps of utterances ``anchor_rows`` (all when None)
    and the number of masked steps of the whole batch (module docstring)."""
    _check_contrastive(contexts, quantized, masked, distractors)
    rows = anchor_range(anchor_rows, contexts.shape[0], contexts.device)
    c, q, mask, index = contexts[rows], quantized[rows], masked[rows].bool(), distractors[rows].long()
    candidates_index = torch.cat([torch.arange(c.shape[1], device=c.device).view(1, -1, 1).expand(len(rows), -1, 1),
                                  index], dim=2)  # (R, T, 1 + K): the target step, then the distractors
    candidates = q.gather(1, candidates_index.flatten(1)[:, :, None].expand(-1, -1, q.shape[2]))
    candidates = candidates.view(*candidates_index.shape, q.shape[2])  # (R, T, 1 + K, D)
    logits = F.cosine_similarity(c[:, :, None, :], candidates, dim=-1, eps=1e-8) / temperature
    same_as_target = (candidates[:, :, 1:] == q[:, :, None, :]).all(dim=-1)
    logits = torch.cat([logits[:, :, :1], logits[:, :, 1:].masked_fill(same_as_target, mask_value(logits.dtype))], 2)
    per_step = torch.logsumexp(logits, dim=2) - logits[:, :, 0]
    return LossTerms((per_step * mask).sum(), masked.bool().sum().clamp_min(1))


def codebook_usage(code_logits: Tensor, frames: Tensor | None = None) -> Tensor:
    """``p_bar`` (G, V): the softmax of ``code_logits`` (B, T, G, V) over the entries, averaged
    over the frames where ``frames`` (B, T) is true (every frame when None)."""
    probabilities = code_logits.softmax(dim=-1)
    if frames is None:
        return probabilities.flatten(0, 1).mean(dim=0)
    weights = frames.to(probabilities.dtype)[:, :, None, None]
    return (probabilities * weights).sum(dim=(0, 1)) / weights.sum().clamp_min(1)


def codebook_diversity(usage: Tensor) -> Tensor:
    """``L_d = (G V - sum_g exp(H(p_bar_g))) / (G V)`` of the usage ``p_bar`` (G, V)."""
    groups, entries = usage.shape
    entropy = -(usage * usage.clamp_min(1e-12).log()).sum(dim=1)
    return (groups * entries - entropy.exp().sum()) / (groups * entries)


def _check_diversity(code_logits: Tensor, frames: Tensor | None) -> None:
    if code_logits.dim() != 4 or (frames is not None and frames.shape != code_logits.shape[:2]):
        raise DataError(f"codebook_diversity: code_logits must be (B, T, G, V) and frames (B, T); got "
                        f"{tuple(code_logits.shape)} and {None if frames is None else tuple(frames.shape)}.")


@in_float32
def codebook_diversity_terms(code_logits: Tensor, frames: Tensor | None = None,
                             anchor_rows: slice | None = None) -> LossTerms:
    """A statistic of the whole batch: utterance ``i``'s share is ``L_d / B``, so the shares of
    ``anchor_rows`` sum to ``|anchor_rows| L_d`` over the count B."""
    _check_diversity(code_logits, frames)
    rows = anchor_range(anchor_rows, code_logits.shape[0], code_logits.device)
    return LossTerms(rows.numel() * codebook_diversity(codebook_usage(code_logits, frames)), code_logits.shape[0])


@OBJECTIVES.register("wav2vec_contrastive")
class Wav2vecContrastive(ContrastiveObjective):
    r"""wav2vec 2.0's contrastive loss at masked steps against distractors of the same utterance.

    Called as ``objective(contexts, quantized, masked=..., distractors=...)``: ``contexts`` (B, T, D)
    the context network's outputs (projected), ``quantized`` (B, T, D) the quantised latents,
    ``masked`` (B, T) bool the masked steps (the loss is a mean over them), ``distractors``
    (B, T, K) the steps of the same utterance whose ``q`` are the distractors of step t (read at
    masked steps only). Formula in the module docstring.

    Distributed: ``masked`` and ``distractors`` are per-utterance inputs and the distractors are
    within the utterance, so the terms of each process's utterances, over the global count of
    masked steps, give the one-process loss.

    Args:
        temperature: ``kappa`` (the paper: 0.1).

    References:
        - Baevski et al., "wav2vec 2.0", NeurIPS 2020, Eq. 3. https://arxiv.org/abs/2006.11477
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("masked", "distractors")
    not_for_view_pairs: ClassVar[str] = (
        "it scores context outputs (B, T, D) at masked steps against quantised latents of the same utterance")

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def loss_terms(self, contexts: Tensor, quantized: Tensor, *, masked: Tensor, distractors: Tensor,
                   anchor_rows: slice | None = None) -> LossTerms:
        return wav2vec_contrastive_terms(contexts, quantized, masked, distractors, self.temperature, anchor_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


@OBJECTIVES.register("codebook_diversity")
class CodebookDiversity(ContrastiveObjective):
    r"""wav2vec 2.0's codebook diversity loss ``L_d`` (module docstring), from the codebook logits.

    Called as ``objective(code_logits, None, frames=...)`` (or ``objective(code_logits)``):
    ``code_logits`` (B, T, G, V) before Gumbel noise, ``frames`` (B, T) bool the frames averaged
    (the valid ones; all when omitted). 0 when every codeword is used equally, ``(GV - G) / (GV)``
    when each group uses one codeword.

    Distributed: ``p_bar`` is an average over the whole gathered batch (the logits are gathered
    with their gradient), and each utterance's share is ``L_d / B``, so the processes' shares sum
    to the one-process loss.

    References:
        - Baevski et al., "wav2vec 2.0", NeurIPS 2020, Eq. 4. https://arxiv.org/abs/2006.11477
    """

    per_sample_inputs: ClassVar[tuple[str, ...]] = ("frames",)
    not_for_view_pairs: ClassVar[str] = "it is a statistic of one tensor of codebook logits (B, T, G, V), not two views"

    def forward(self, code_logits: Tensor, unused: None = None, *, frames: Tensor | None = None) -> Tensor:
        return self.loss_terms(code_logits, unused, frames=frames).mean()

    def loss_terms(self, code_logits: Tensor, unused: None = None, *, frames: Tensor | None = None,
                   anchor_rows: slice | None = None) -> LossTerms:
        if unused is not None:
            raise DataError("codebook_diversity takes one tensor (code logits, B x T x G x V); the second is None.")
        return codebook_diversity_terms(code_logits, frames, anchor_rows)
