"""Audio sources: FSDD decoded as the files say, soundfile and scipy agree, mono mix-down, resampling,
labels from folders or a pattern, and the splits (the speaker split shares no speaker)."""

from __future__ import annotations

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.audio.sources import (
    _read_wav_with_scipy,
    fsdd_split,
    open_audio_folder,
    read_audio,
    resample,
)
from tests.conftest import data_path

sf = pytest.importorskip("soundfile", reason="writing test WAVs needs soundfile")


@pytest.fixture(scope="module")
def fsdd():
    return open_audio_folder(data_path("fsdd"))


def test_fsdd_is_decoded_once_with_its_names_labels(fsdd):
    import wave

    root = data_path("fsdd")
    assert len(fsdd) == 3000 and fsdd.sample_rate == 8000 and fsdd.name == "fsdd"
    assert sorted(set(fsdd.speakers)) == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert np.bincount(fsdd.labels).tolist() == [300] * 10
    # Second reading: the stdlib's wave module, frame counts and 16-bit samples.
    for i in (0, 1234, 2999):
        with wave.open(str(root / fsdd.paths[i])) as handle:
            frames = handle.readframes(handle.getnframes())
        expected = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
        np.testing.assert_array_equal(fsdd.clip(i), expected)
        digit, speaker, repetition = fsdd.paths[i].split("/")[-1][:-4].split("_")
        assert (fsdd.labels[i], fsdd.speakers[i], fsdd.repetitions[i]) == (int(digit), speaker, int(repetition))


def test_scipy_reads_what_soundfile_reads(tmp_path):
    rng = np.random.default_rng(0)
    for subtype, dtype in (("PCM_16", "int16"), ("PCM_32", "int32"), ("PCM_U8", "uint8"), ("FLOAT", "float32")):
        path = tmp_path / f"{subtype}.wav"
        sf.write(path, rng.uniform(-0.9, 0.9, (400, 2)), 8000, subtype=subtype)
        ours, rate = _read_wav_with_scipy(path)
        theirs, their_rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == their_rate == 8000 and ours.shape == theirs.shape == (400, 2)
        np.testing.assert_allclose(ours, theirs, atol=1e-7, err_msg=subtype)


def test_resampling_a_tone_gives_the_tone_at_the_new_rate():
    seconds, frequency = 0.5, 440.0
    tone = np.sin(2 * np.pi * frequency * np.arange(int(8000 * seconds)) / 8000).astype(np.float32)
    up = resample(tone, 8000, 16000)
    expected = np.sin(2 * np.pi * frequency * np.arange(int(16000 * seconds)) / 16000)
    assert len(up) == len(expected)
    inner = slice(200, -200)  # the filter's edges see the zeros beyond the clip
    np.testing.assert_allclose(up[inner], expected[inner], atol=2e-3)
    down = resample(up, 16000, 11025)  # a ratio of 441/640
    assert len(down) == int(np.ceil(len(up) * 441 / 640))


def test_a_folder_of_stereo_files_in_subfolders(tmp_path):
    rng = np.random.default_rng(1)
    for label, rate in (("cat", 16000), ("dog", 8000)):
        (tmp_path / label).mkdir()
        for i in range(2):
            left, right = rng.uniform(-0.5, 0.5, (2, 800))
            sf.write(tmp_path / label / f"{i}.flac", np.stack([left, right], axis=1), rate)
    clips = open_audio_folder(tmp_path, sample_rate=8000)
    assert clips.class_names == ["cat", "dog"] and clips.labels.tolist() == [0, 0, 1, 1]
    assert clips.lengths.tolist() == [400, 400, 800, 800]  # 16 kHz halved
    stereo, _ = read_audio(tmp_path / "dog" / "1.flac")
    np.testing.assert_allclose(clips.clip(3), stereo.mean(axis=1), atol=1e-7)
    waves, lengths = clips.batch([0, 3])
    assert waves.shape == (2, 800) and lengths.tolist() == [400, 800] and not waves[0, 400:].any()


def test_labels_from_a_pattern_and_its_errors(tmp_path):
    for name in ("yes_01.wav", "no_02.wav", "yes_03.wav"):
        sf.write(tmp_path / name, np.zeros(100), 8000)
    clips = open_audio_folder(tmp_path, label_pattern=r"^(?P<label>[a-z]+)_")
    assert [clips.class_names[i] for i in clips.labels] == ["no", "yes", "yes"]  # files sorted by name
    with pytest.raises(ConfigError, match="named group 'label'"):
        open_audio_folder(tmp_path, label_pattern=r"^([a-z]+)_")
    with pytest.raises(DataError, match="does not match the file name 'no_02.wav'"):
        open_audio_folder(tmp_path, label_pattern=r"^(?P<label>yes)_")
    with pytest.raises(DataError, match="not a folder"):
        open_audio_folder(tmp_path / "absent")


def test_the_official_split_is_by_repetition(fsdd):
    train, test = fsdd_split(fsdd, "repetition", "test")
    assert len(test) == 300 and set(fsdd.repetitions[test]) == set(range(5))
    assert np.bincount(fsdd.labels[test]).tolist() == [30] * 10
    assert set(fsdd.speakers[test]) == set(fsdd.speakers[train])  # every speaker in both
    assert len(train) == 2700 and not set(fsdd.repetitions[train]) & set(range(5))


@pytest.mark.parametrize("part", ["dev", "test"])
def test_the_speaker_split_shares_no_speaker(fsdd, part):
    train, scored = fsdd_split(fsdd, "speaker", part)
    assert not set(fsdd.speakers[train]) & set(fsdd.speakers[scored])
    assert len(scored) == 500 and len(set(fsdd.speakers[scored])) == 1
    # the development part never sees the test speaker, the test part trains on all the others
    _, test = fsdd_split(fsdd, "speaker", "test")
    _, dev = fsdd_split(fsdd, "speaker", "dev")
    assert not np.intersect1d(train, test).size
    assert len(train) == (2000 if part == "dev" else 2500)
    assert not np.intersect1d(dev, test).size
