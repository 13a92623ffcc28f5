"""HuBERT's targets (modalities/audio/targets.py, frontends.MFCC): MFCCs against librosa's, frames
aligned with the waveform front end's, k-means ids deterministic for a seed, a crop's ids those of
the whole clip's frames."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile
import torch

from contrastkit.modalities.audio.frontends import MFCC, WaveformFrontEnd
from contrastkit.modalities.audio.sources import open_audio_folder
from contrastkit.modalities.audio.targets import fit_frame_targets, mfcc_frame_features
from tests.conftest import data_path

librosa = pytest.importorskip("librosa", reason="the reference MFCCs are librosa's")
CLIPS = ("0_jackson_10.wav", "3_nicolas_20.wav", "7_theo_5.wav", "9_yweweler_40.wav")


def fsdd_wave(name: str) -> np.ndarray:
    samples, rate = soundfile.read(data_path("fsdd") / "recordings" / name, dtype="float32")
    assert rate == 8000
    return samples


@pytest.mark.parametrize("name", CLIPS)
def test_mfcc_equals_librosa(name):
    wave = fsdd_wave(name)
    ours = MFCC(8000, n_mfcc=13, n_mels=40)(torch.from_numpy(wave)[None])[0].numpy()
    mfcc = MFCC(8000)
    theirs = librosa.feature.mfcc(y=wave, sr=8000, n_mfcc=13, n_fft=mfcc.log_mel.n_fft, n_mels=40,
                                  hop_length=mfcc.log_mel.hop_length, win_length=mfcc.log_mel.win_length)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)  # values up to ~300 (float32: 6e-5 apart)


@pytest.mark.parametrize("name", CLIPS[:2])
def test_the_aligned_mfcc_equals_librosa_on_the_front_ends_frames(name):
    """Window = the receptive field (235 samples) in a 256-point FFT, not centred, no top_db floor."""
    wave = fsdd_wave(name)
    frontend = WaveformFrontEnd(8000)
    ours = MFCC.aligned_with(frontend, 8000)(torch.from_numpy(wave)[None])[0].numpy()
    power = librosa.feature.melspectrogram(y=np.pad(wave, (10, 11)), sr=8000, n_fft=256, hop_length=80,
                                           win_length=235, center=False, n_mels=40)
    theirs = librosa.feature.mfcc(S=librosa.power_to_db(power, top_db=None), n_mfcc=13)
    assert ours.shape == theirs.shape == (13, frontend.frames(len(wave)))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)


def test_an_aligned_mfcc_frame_depends_on_its_front_end_frames_samples_only():
    frontend = WaveformFrontEnd(8000)
    mfcc = MFCC.aligned_with(frontend, 8000)
    for length in (1148, 3200, 3201, 3279, 5000):
        assert mfcc.frames(length) == frontend.frames(length)
    wave = torch.from_numpy(fsdd_wave(CLIPS[0]))[None]
    frame = 7
    changed = wave.clone()
    inside = slice(frame * 80, frame * 80 + frontend.receptive_field)
    changed[:, : inside.start] += torch.randn(inside.start)
    changed[:, inside.stop:] += torch.randn(wave.shape[1] - inside.stop)
    torch.testing.assert_close(mfcc(changed)[:, :, frame], mfcc(wave)[:, :, frame], rtol=1e-5, atol=1e-3)
    assert not torch.allclose(mfcc(changed)[:, :, frame + 1], mfcc(wave)[:, :, frame + 1], atol=1e-1)


@pytest.fixture(scope="module")
def few_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdd-few") / "recordings"
    folder.mkdir()
    for path in sorted((data_path("fsdd") / "recordings").glob("*_1[0-2].wav"))[::3]:
        shutil.copy(path, folder / path.name)
    return open_audio_folder(folder.parent)


def test_targets_are_deterministic_for_a_seed(few_clips):
    frontend = WaveformFrontEnd(8000)
    train = np.arange(0, len(few_clips), 2)
    first = fit_frame_targets(mfcc_frame_features(few_clips, frontend), train, clusters=8, seed=4)
    again = fit_frame_targets(mfcc_frame_features(few_clips, frontend), train, clusters=8, seed=4)
    assert torch.equal(first.ids, again.ids) and torch.equal(first.offsets, again.offsets)
    assert first.offsets[-1] == sum(frontend.frames(int(n)) for n in few_clips.lengths)
    assert set(first.ids.tolist()) == set(range(8))


def test_a_crop_starting_on_a_frame_has_the_whole_clips_frames_and_ids(few_clips):
    frontend = WaveformFrontEnd(8000)
    features = mfcc_frame_features(few_clips, frontend)
    targets = fit_frame_targets(features, np.arange(len(few_clips)), clusters=6, seed=0)
    mfcc = MFCC.aligned_with(frontend, 8000)
    clip, start_frame, crop = 3, 4, 3200
    wave = torch.from_numpy(few_clips.clip(clip))
    window = wave[start_frame * 80: start_frame * 80 + crop][None]
    valid = frontend.frames(window.shape[1])
    np.testing.assert_allclose(mfcc(window)[0].T.numpy()[:valid], features[clip][start_frame:start_frame + valid],
                               rtol=0, atol=1e-3)
    ids = targets.of_crops(torch.tensor([clip, 0]), torch.tensor([start_frame, 0]), torch.tensor([valid, 5]), 40)
    naive = [[int(targets.ids[targets.offsets[c] + s + t]) if t < v else -1 for t in range(40)]
             for c, s, v in ((clip, start_frame, valid), (0, 0, 5))]
    assert ids.tolist() == naive
