"""Front ends: the torch log-mel spectrogram against librosa's, the raw-waveform convolutions' frame
rate and reach."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.audio.frontends import (
    LogMelSpectrogram,
    WaveformFrontEnd,
    mel_filterbank,
    waveform_strides,
)
from contrastkit.modalities.audio.sources import open_audio_folder
from tests.conftest import data_path

librosa = pytest.importorskip("librosa", reason="the reference log-mel is librosa's")


@pytest.mark.parametrize("rate, n_fft, n_mels, fmin, fmax", [
    (8000, 256, 40, 0.0, None), (16000, 512, 64, 20.0, 7600.0), (22050, 1024, 128, 0.0, None)])
def test_mel_filterbank_equals_librosa(rate, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(rate, n_fft, n_mels, fmin, fmax)
    theirs = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("rate, n_mels", [(8000, 40), (16000, 64)])
def test_log_mel_of_fsdd_clips_equals_librosa(rate, n_mels):
    clips = open_audio_folder(data_path("fsdd"), sample_rate=rate)  # 16 kHz: resampled by the source
    rows = [0, 777, 2500]
    length = int(clips.lengths[rows].min())
    waves = np.stack([clips.clip(i)[:length] for i in rows])  # one length: no padding
    frontend = LogMelSpectrogram(rate, n_mels=n_mels)
    ours = frontend(torch.from_numpy(waves)).numpy()
    for row, wave in enumerate(waves):
        power = librosa.feature.melspectrogram(y=wave, sr=rate, n_fft=frontend.n_fft, hop_length=frontend.hop_length,
                                               win_length=frontend.win_length, n_mels=n_mels, power=2.0)
        theirs = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=80.0)
        assert ours[row].shape == theirs.shape == (n_mels, frontend.frames(length))
        np.testing.assert_allclose(ours[row], theirs, atol=2e-3)  # dB


def test_log_mel_floors_each_clip_at_its_own_peak_minus_top_db():
    loud, quiet = torch.randn(1, 4000), 1e-3 * torch.randn(1, 4000)
    frontend = LogMelSpectrogram(8000)
    together = frontend(torch.cat([loud, quiet]))
    torch.testing.assert_close(together[1], frontend(quiet)[0])
    assert together[1].max() - together[1].min() <= 80.0 + 1e-4


@pytest.mark.parametrize("rate, hop", [(8000, 80), (16000, 160)])
def test_the_waveform_front_end_gives_one_frame_per_10_ms(rate, hop):
    frontend = WaveformFrontEnd(rate, channels=8)
    assert int(np.prod(frontend.strides)) == hop
    for samples in (frontend.receptive_field, 4000, 4321):
        frames = frontend(torch.randn(2, samples)).shape[2]
        assert frames == frontend.frames(samples) == (samples - frontend.receptive_field) // hop + 1


def test_a_waveform_frame_sees_only_its_receptive_field():
    torch.manual_seed(0)
    frontend = WaveformFrontEnd(8000, channels=8, standardize_input=False).double()
    x = torch.randn(1, 2000, dtype=torch.float64, requires_grad=True)
    t = 7
    frontend(x)[0, :, t].sum().backward()
    reached = torch.flatten(torch.nonzero(x.grad[0]))
    assert reached.min() == t * frontend.hop and reached.max() == t * frontend.hop + frontend.receptive_field - 1


def test_a_rate_without_a_10_ms_stride_is_refused():
    with pytest.raises(ConfigError, match="5 x 2"):
        waveform_strides(11025)
