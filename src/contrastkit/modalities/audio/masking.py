"""Masks of the masked-prediction methods, drawn on the device for the global batch (:class:`RowDraws`).

- :func:`span_mask`: wav2vec 2.0's and HuBERT's spans (Baevski et al. 2020, Sec. 3.1): a proportion
  ``p`` of the valid frames, ``s = round(p T)`` of them drawn without replacement among the starts
  whose span fits, become span starts, and each masks itself and the ``M - 1`` frames after it;
  spans may overlap. :func:`expected_masked_fraction` is the exact mean share of masked frames.
- :func:`sample_distractors`: for every masked frame, ``K`` other masked frames of the same
  utterance, uniformly with replacement (wav2vec 2.0's distractors).
- :func:`random_patch_mask`: MAE's random subset of patches kept visible (He et al. 2022, Sec. 3):
  the same number per row, the rest masked.
"""

from __future__ import annotations

from math import comb

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.audio.views import RowDraws


def span_starts(valid_frames: Tensor, frames: int, mask_prob: float, span: int) -> tuple[Tensor, Tensor]:
    """``(candidates (B,), starts (B,))``: the ``T - M + 1`` frames where a span fits inside each
    row's ``T`` valid frames, and the ``s = clamp(round(p T), 1, candidates)`` spans drawn (0 when
    no span fits)."""
    candidates = (valid_frames.clamp_max(frames) - span + 1).clamp_min(0)
    wanted = torch.floor(mask_prob * valid_frames.clamp_max(frames).double() + 0.5).long()
    return candidates, torch.minimum(wanted.clamp_min(1), candidates)


def span_mask(valid_frames: Tensor, frames: int, mask_prob: float, span: int, draws: RowDraws) -> Tensor:
    """``(B, frames)`` bool: the masked frames (module docstring); nothing at or after a row's
    ``valid_frames``."""
    if not 0 < mask_prob <= 1 or span < 1:
        raise ConfigError(f"Span masking needs 0 < --mask-prob <= 1 and --mask-length >= 1; got {mask_prob}, {span}.")
    candidates, count = span_starts(valid_frames, frames, mask_prob, span)
    position = torch.arange(frames, device=valid_frames.device)[None, :]
    keys = draws.uniform(frames).masked_fill(position >= candidates[:, None], 2.0)  # 2: never among the first
    rank = keys.argsort(dim=1).argsort(dim=1)
    starts = (rank < count[:, None]).float()
    return F.max_pool1d(F.pad(starts[:, None, :], (span - 1, 0)), span, stride=1)[:, 0] > 0


def expected_masked_fraction(frames: int, mask_prob: float, span: int) -> float:
    """The mean share of masked frames of a row of ``frames`` valid frames: frame t is masked
    unless none of the ``c_t`` starts that cover it is among the ``s`` drawn of ``N``, which has
    probability ``C(N - c_t, s) / C(N, s)``."""
    n = max(0, frames - span + 1)
    if n == 0:
        return 0.0
    s = min(max(int(mask_prob * frames + 0.5), 1), n)
    covered = [sum(1 for j in range(t - span + 1, t + 1) if 0 <= j < n) for t in range(frames)]
    return sum(1 - comb(n - c, s) / comb(n, s) for c in covered) / frames


def sample_distractors(masked: Tensor, count: int, draws: RowDraws) -> Tensor:
    """``(B, T, count)`` long: for each masked frame t of row i, ``count`` frames drawn uniformly
    with replacement among the row's other masked frames. Entries at unmasked frames, and in rows
    with fewer than two masked frames, are t itself (no distractor exists; the loss reads them not)."""
    batch, frames = masked.shape
    n = masked.sum(dim=1)
    masked_positions = (~masked).long().argsort(dim=1, stable=True)  # the masked frames first, in order
    rank = masked.long().cumsum(dim=1) - 1  # a masked frame's place among its row's masked frames
    drawn = (draws.uniform(frames, count) * (n - 1).clamp_min(1)[:, None, None]).long()
    drawn = torch.minimum(drawn, (n - 2).clamp_min(0)[:, None, None])
    drawn = drawn + (drawn >= rank[:, :, None]).long()  # skip the frame itself
    chosen = masked_positions.gather(1, drawn.clamp_max(frames - 1).flatten(1)).view(batch, frames, count)
    itself = torch.arange(frames, device=masked.device)[None, :, None].expand_as(chosen)
    usable = masked[:, :, None] & (n >= 2)[:, None, None]
    return torch.where(usable, chosen, itself)


def random_patch_mask(patches: int, mask_ratio: float, draws: RowDraws) -> tuple[Tensor, Tensor]:
    """``(visible (B, P - m), masked (B, m))`` patch indices, each row's in increasing order, with
    ``m = round(mask_ratio P)`` patches masked per row (MAE's per-sample random shuffle)."""
    masked_count = int(mask_ratio * patches + 0.5)
    if not 0 < masked_count < patches:
        raise ConfigError(f"--mask-ratio {mask_ratio} masks {masked_count} of {patches} patches; it must leave at "
                          f"least one patch masked and one visible.")
    order = draws.uniform(patches).argsort(dim=1)
    visible, masked = order[:, : patches - masked_count], order[:, patches - masked_count:]
    return visible.sort(dim=1).values, masked.sort(dim=1).values
