"""Audio views keep the length and rate they promise, add noise at the SNR asked, and draw for the
global batch (a share of a batch gets the views its rows get in the whole batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.modalities.audio.frontends import LogMelSpectrogram
from contrastkit.modalities.audio.views import (
    RowDraws,
    SpectrogramViews,
    ViewSettings,
    WaveformViews,
    add_noise,
    mix,
    random_crop,
    random_gain,
    spec_augment,
    time_shift,
)

RATE = 8000


def batch(lengths=(3000, 4500, 900, 6000)):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor(lengths)
    waves = torch.randn(len(lengths), int(lengths.max()), generator=generator)
    waves *= torch.arange(waves.shape[1])[None, :] < lengths[:, None]
    return waves.double(), lengths


def draws(rows: int, seed: int = 1, **kwargs) -> RowDraws:
    return RowDraws(torch.Generator().manual_seed(seed), rows, **kwargs)


def test_a_crop_is_a_window_of_the_clip_of_exactly_the_crop_length():
    waves, lengths = batch()
    crop = 2000
    out, new_lengths = random_crop(waves, lengths, crop, draws(4))
    assert out.shape == (4, crop) and new_lengths.tolist() == [2000, 2000, 900, 2000]
    for row in range(4):
        clip = waves[row, :lengths[row]].numpy()
        window = out[row, :new_lengths[row]].numpy()
        starts = [s for s in range(len(clip) - len(window) + 1) if np.array_equal(clip[s:s + len(window)], window)]
        assert starts, row  # a contiguous part of the clip's valid samples
        assert not out[row, new_lengths[row]:].any()


def test_gain_is_one_factor_per_clip_within_its_range():
    waves, _ = batch()
    out = random_gain(waves, draws(4), -6.0, 6.0)
    ratio = out / waves.where(waves != 0, torch.ones_like(waves))
    for row in range(4):
        factors = ratio[row][waves[row] != 0]
        torch.testing.assert_close(factors, factors[:1].expand_as(factors))
        assert 10 ** (-6 / 20) <= float(factors[0]) <= 10 ** (6 / 20)
    assert out.shape == waves.shape


@pytest.mark.parametrize("snr_db", [0.0, 7.5, 20.0])
def test_noise_is_added_at_exactly_the_snr_asked(snr_db):
    waves, lengths = batch()
    out = add_noise(waves, lengths, draws(4), snr_db, snr_db)
    assert out.shape == waves.shape
    for row in range(4):
        signal, noise = waves[row, :lengths[row]], (out - waves)[row, :lengths[row]]
        measured = 10 * torch.log10(signal.pow(2).mean() / noise.pow(2).mean())
        assert float(measured) == pytest.approx(snr_db, abs=1e-5)  # the noise is drawn in float32
        assert not out[row, lengths[row]:].any()  # the padding stays silent


def test_time_shift_rolls_each_clip_within_its_valid_part():
    waves, lengths = batch()
    out = time_shift(waves, lengths, draws(4), max_shift=400)
    assert out.shape == waves.shape
    for row in range(4):
        clip, shifted = waves[row, :lengths[row]].numpy(), out[row, :lengths[row]].numpy()
        matches = [s for s in range(-400, 401) if np.array_equal(np.roll(clip, s), shifted)]
        assert len(matches) == 1
        assert not out[row, lengths[row]:].any()


def test_mixing_adds_another_clip_of_the_batch_and_keeps_the_longer_length():
    waves, lengths = random_crop(*batch(), 2000, draws(4, seed=5))
    out, new_lengths = mix(waves, lengths, draws(4), max_weight=0.3)
    assert out.shape == waves.shape
    for row in range(4):
        found = False
        for other in range(4):
            if other == row:
                continue
            # out = (1 - w) x_row + w x_other: solve w by least squares and check the residual
            difference, direction = out[row] - waves[row], waves[other] - waves[row]
            weight = float(difference @ direction / (direction @ direction))
            if 0 <= weight <= 0.3 and torch.allclose(difference, weight * direction, atol=1e-6):
                found = True
                assert new_lengths[row] == max(lengths[row], lengths[other])
        assert found, row


def test_spec_augment_masks_bands_and_frames_with_the_clips_mean_and_keeps_the_shape():
    spectrogram = torch.randn(3, 40, 51, dtype=torch.float64)
    out = spec_augment(spectrogram, draws(3), time_masks=2, time_width=8, freq_masks=2, freq_width=6)
    assert out.shape == spectrogram.shape
    for row in range(3):
        changed = out[row] != spectrogram[row]
        torch.testing.assert_close(out[row][changed], spectrogram[row].mean().expand(int(changed.sum())))
        masked_bands = changed.all(dim=1).sum()
        masked_frames = changed.all(dim=0).sum()
        assert masked_bands <= 12 and masked_frames <= 16
        # every changed value lies in a fully masked band or frame
        assert (changed <= (changed.all(dim=1, keepdim=True) | changed.all(dim=0, keepdim=True))).all()


@pytest.mark.parametrize("crop_seconds", [0.25, 0.5])
def test_composed_views_keep_the_crop_length_the_rate_and_the_frames(crop_seconds):
    waves, lengths = batch()
    waveform_views = WaveformViews(RATE, ViewSettings(crop_seconds=crop_seconds))
    out, new_lengths = waveform_views(waves.float(), lengths, draws(4))
    samples = round(crop_seconds * RATE)
    assert out.shape == (4, samples) and waveform_views.sample_rate == RATE
    assert (new_lengths <= samples).all() and (new_lengths >= lengths.clamp_max(samples)).all()
    frontend = LogMelSpectrogram(RATE)
    spectrogram, frames = SpectrogramViews(waveform_views, frontend)(waves.float(), lengths, draws(4))
    assert spectrogram.shape == (4, 40, 1 + samples // frontend.hop_length)
    assert frames.tolist() == [1 + int(n) // frontend.hop_length for n in new_lengths]


def test_a_share_of_the_global_batch_gets_the_views_of_its_rows():
    waves, lengths = batch((3000, 4500, 900, 6000, 2500, 5100))
    settings = ViewSettings(crop_seconds=0.25, mix_weight=0.0)  # mixing needs the other processes' clips
    views = SpectrogramViews(WaveformViews(RATE, settings), LogMelSpectrogram(RATE))
    whole, whole_frames = views(waves.float(), lengths, draws(6, seed=9))
    for first, rows in ((0, 3), (3, 3), (2, 2)):
        part, part_frames = views(waves[first:first + rows].float(), lengths[first:first + rows],
                                  draws(rows, seed=9, global_rows=6, first_row=first))
        torch.testing.assert_close(part, whole[first:first + rows], rtol=0, atol=1e-4)
        assert torch.equal(part_frames, whole_frames[first:first + rows])
