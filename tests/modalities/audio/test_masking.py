"""Masks of the masked-prediction methods (modalities/audio/masking.py): span masks with the promised
expected masked fraction and spans of length M, distractors from the other masked steps of the same
utterance, MAE's patch subsets."""

from __future__ import annotations

import itertools

import pytest
import torch

from contrastkit.modalities.audio.masking import (
    expected_masked_fraction,
    random_patch_mask,
    sample_distractors,
    span_mask,
)
from contrastkit.modalities.audio.views import RowDraws


def draws(rows: int, seed: int = 0) -> RowDraws:
    return RowDraws(torch.Generator().manual_seed(seed), rows)


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True."""
    lengths, current = [], 0
    for value in row.tolist() + [False]:
        if value:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def test_the_closed_form_expected_fraction_equals_enumerating_every_draw():
    frames, span = 9, 3
    for mask_prob in (0.1, 0.3, 0.5):
        starts = max(1, int(mask_prob * frames + 0.5))
        choices = list(itertools.combinations(range(frames - span + 1), starts))
        masked = sum(len({t for s in chosen for t in range(s, s + span)}) for chosen in choices)
        assert expected_masked_fraction(frames, mask_prob, span) == pytest.approx(masked / (len(choices) * frames))


@pytest.mark.parametrize("frames, mask_prob, span", [(38, 0.13, 5), (20, 0.2, 3), (12, 0.13, 5)])
def test_span_masks_have_the_promised_expected_fraction_over_many_draws(frames, mask_prob, span):
    rows = 4000
    masked = span_mask(torch.full((rows,), frames), frames, mask_prob, span, draws(rows))
    measured = masked.float().mean().item()
    # The share of one row is in [0, 1]: its standard deviation is at most 0.5, so 4000 rows give
    # a standard error under 0.008; 0.025 is three of them.
    assert measured == pytest.approx(expected_masked_fraction(frames, mask_prob, span), abs=0.025)


def test_the_defaults_mask_about_half_of_a_crop():
    assert 0.45 < expected_masked_fraction(38, 0.13, 5) < 0.55  # the 0.4 s crop's 38 frames


def test_spans_have_length_m_and_stay_inside_the_valid_frames():
    valid = torch.tensor([38, 38, 20, 12, 5, 3])
    masked = span_mask(valid, 38, 0.13, 5, draws(6, seed=1))
    for row, count in zip(masked, valid.tolist(), strict=True):
        assert not row[count:].any()
        if count >= 5:
            assert row.any() and all(length >= 5 for length in runs(row))  # overlapping spans merge
        else:
            assert not row.any()  # no span of 5 fits in fewer frames
    one_span = span_mask(torch.full((200,), 38), 38, 0.01, 5, draws(200, seed=2))  # round(0.38) -> 1 start
    assert all(runs(row) == [5] for row in one_span)
    starts = [int(torch.nonzero(row)[0]) for row in one_span]
    assert min(starts) == 0 and max(starts) == 33  # every start where a span fits is drawn


def test_distractors_are_other_masked_steps_of_the_same_utterance():
    masked = span_mask(torch.tensor([38, 38, 12]), 38, 0.13, 5, draws(3, seed=3))
    distractors = sample_distractors(masked, 7, draws(3, seed=4))
    assert distractors.shape == (3, 38, 7)
    for i in range(3):
        for t in range(38):
            if masked[i, t]:
                assert masked[i, distractors[i, t]].all() and (distractors[i, t] != t).all()
            else:
                assert (distractors[i, t] == t).all()


def test_distractors_are_uniform_over_the_other_masked_steps():
    masked = torch.zeros(1, 10, dtype=torch.bool)
    masked[0, [1, 4, 5, 8]] = True
    distractors = sample_distractors(masked, 6000, draws(1, seed=5))[0, 4]
    counts = torch.bincount(distractors, minlength=10)
    assert counts[[0, 2, 3, 4, 6, 7, 9]].sum() == 0
    assert ((counts[[1, 5, 8]].float() / 6000 - 1 / 3).abs() < 0.03).all()


def test_random_patch_masks_split_the_patches():
    visible, masked = random_patch_mask(50, 0.8, draws(5, seed=6))
    assert visible.shape == (5, 10) and masked.shape == (5, 40)
    for v, m in zip(visible, masked, strict=True):
        assert sorted(v.tolist() + m.tolist()) == list(range(50))
