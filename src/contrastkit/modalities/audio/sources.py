"""Audio sources: folders of recordings decoded once into one array, with labels and splits.

    clips = open_audio_folder("fsdd")                        # $CONTRASTKIT_DATA/fsdd, recognised by its names
    clips = open_audio_folder("my_clips/", sample_rate=16000)  # labels from subfolders
    clips = open_audio_folder("calls/", label_pattern=r"^(?P<label>[a-z]+)_")
    train, test = fsdd_split(clips, "speaker")               # a speaker-held-out split

Every file is read once (soundfile; WAV also through scipy.io.wavfile when soundfile is absent),
mixed down to mono (the mean of its channels), resampled to one rate (polyphase filtering,
:func:`scipy.signal.resample_poly`) and stored in one float32 array: the clips one after the other,
with their start offsets. Lengths vary; batches are padded to their longest clip
(:meth:`AudioClips.batch`) and the views crop or pad them to one length on the device.

Labels come from the subfolder a file sits in (``folder/<label>/x.wav``), or from
``label_pattern``, a regular expression with a named group ``label`` searched in the file name.
The Free Spoken Digit Dataset is recognised by its file names, ``{digit}_{speaker}_{index}.wav``:
its digit is the label, its speaker and repetition index are kept, and it has two splits
(:func:`fsdd_split`): the official one by repetition (index 0-4 test, 5-49 train; every speaker
in both) and one that holds speakers out (no speaker in both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np

from contrastkit.core.errors import ConfigError, DataError

# Formats soundfile (libsndfile) reads; scipy reads WAV only.
AUDIO_FILES = (".wav", ".flac", ".ogg")
FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)\.wav$")
FSDD_TEST_REPETITIONS = range(0, 5)  # the upstream README's split: index 0-4 test, 5-49 train
FSDD_DEV_REPETITIONS = range(5, 10)  # carved from the official training part to choose settings
FSDD_TEST_SPEAKER = "theo"  # the speaker-held-out split: one speaker scored, one for development
FSDD_DEV_SPEAKER = "nicolas"
SPLITS = ("repetition", "speaker")


@dataclass
class AudioClips:
    """Decoded clips: ``samples[offsets[i]:offsets[i + 1]]`` is clip ``i`` (mono float32 at
    ``sample_rate``); ``labels`` index ``class_names`` (-1 when a clip has none, None when no clip
    has one). ``speakers``/``repetitions`` are FSDD's (None elsewhere)."""

    samples: np.ndarray
    offsets: np.ndarray
    sample_rate: int
    paths: list[str]
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    speakers: np.ndarray | None = None
    repetitions: np.ndarray | None = None
    name: str = "audio"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def clip(self, i: int) -> np.ndarray:
        return self.samples[self.offsets[i]:self.offsets[i + 1]]

    def batch(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """``(waves (B, longest), lengths (B,))``: the clips at ``positions``, zero-padded at the end."""
        return pad_clips([self.clip(int(i)) for i in np.asarray(positions, dtype=np.int64)])


def pad_clips(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(waves (B, longest) float32, lengths (B,) int64)``: mono clips zero-padded at the end."""
    lengths = np.array([len(clip) for clip in clips], dtype=np.int64)
    waves = np.zeros((len(clips), int(lengths.max()) if len(clips) else 0), dtype=np.float32)
    for row, clip in enumerate(clips):
        waves[row, :len(clip)] = clip
    return waves, lengths


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """``(samples (frames, channels) float32 in [-1, 1], rate)`` of one file."""
    path = Path(path)
    try:
        import soundfile
    except ImportError:
        return _read_wav_with_scipy(path)
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile's errors name no file
        raise DataError(f"Cannot read the audio file '{path}' ({exc}); convert it to WAV or FLAC, or remove it.") from None
    return samples, int(rate)


def _read_wav_with_scipy(path: Path) -> tuple[np.ndarray, int]:
    """A WAV file through scipy: integer PCM scaled to [-1, 1) as libsndfile scales it."""
    from scipy.io import wavfile

    if path.suffix.lower() != ".wav":
        raise DataError(f"'{path}': without the soundfile package only WAV files can be read; "
                        f"pip install soundfile, or convert the file to WAV.")
    try:
        rate, samples = wavfile.read(path)
    except ValueError as exc:
        raise DataError(f"Cannot read the WAV file '{path}' ({exc}).") from None
    if samples.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        scaled = (samples.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(samples.dtype, np.integer):
        scaled = samples.astype(np.float32) / float(-np.iinfo(samples.dtype).min)
    else:
        scaled = samples.astype(np.float32)
    return scaled.reshape(len(scaled), -1), int(rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """The mean of the channels of ``(frames, channels)``."""
    return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """``samples`` at ``target_rate``: polyphase resampling by the reduced ratio
    ``target/rate`` (scipy's Kaiser-windowed low-pass; nothing above the lower Nyquist rate
    survives)."""
    if rate == target_rate:
        return samples
    from scipy.signal import resample_poly

    common = gcd(int(rate), int(target_rate))
    return resample_poly(samples, target_rate // common, rate // common).astype(np.float32)


def audio_files(folder: Path) -> list[Path]:
    """The audio files under ``folder`` (any depth), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_FILES)


def resolve_audio_folder(data: str | Path) -> Path:
    """``data`` as a folder: a path, or a name under the data root (``fsdd``)."""
    from contrastkit.core.paths import data_root

    path = Path(data).expanduser()
    if not path.exists() and not path.is_absolute() and (data_root() / path).exists():
        path = data_root() / path
    if not path.is_dir():
        raise DataError(f"--data '{data}' is not a folder of audio files (WAV, FLAC, OGG); pass a folder, or "
                        f"'fsdd' for the Free Spoken Digit Dataset under the data root.")
    return path


def is_fsdd(files: list[Path]) -> bool:
    """Whether every file is named ``{digit}_{speaker}_{index}.wav`` (the Free Spoken Digit Dataset)."""
    return bool(files) and all(FSDD_NAME.match(f.name) for f in files)


def open_audio_folder(data: str | Path, sample_rate: int | None = None, label_pattern: str | None = None) -> AudioClips:
    """Decode every audio file under ``data`` once (module docstring).

    Args:
        data: a folder, or a name under the data root.
        sample_rate: the rate every clip is resampled to; None keeps the rate of the first file
            (and every other file is resampled to it).
        label_pattern: a regular expression with a named group ``label``, searched in each file
            name; None takes labels from subfolders (or FSDD's digits, or no labels).
    """
    folder = resolve_audio_folder(data)
    files = audio_files(folder)
    if not files:
        raise DataError(f"No audio files ({', '.join(AUDIO_FILES)}) under '{folder}'.")
    fsdd = is_fsdd(files) and label_pattern is None
    pattern = _label_regex(label_pattern)
    chunks, offsets, rate = [], [0], sample_rate
    for path in files:
        samples, file_rate = read_audio(path)
        if samples.shape[0] == 0:
            raise DataError(f"The audio file '{path}' holds no samples; remove it.")
        rate = rate or file_rate
        chunks.append(resample(to_mono(samples), file_rate, rate))
        offsets.append(offsets[-1] + len(chunks[-1]))
    clips = AudioClips(np.concatenate(chunks), np.asarray(offsets, dtype=np.int64), int(rate),
                       [str(p.relative_to(folder)) for p in files], name=folder.name)
    if fsdd:
        parts = [FSDD_NAME.match(p.name) for p in files]
        clips.class_names = [str(d) for d in range(10)]
        clips.labels = np.array([int(m["digit"]) for m in parts], dtype=np.int64)
        clips.speakers = np.array([m["speaker"] for m in parts])
        clips.repetitions = np.array([int(m["index"]) for m in parts], dtype=np.int64)
        clips.name = "fsdd"
    else:
        names = _labels_of(files, folder, pattern)
        if names is not None:
            clips.class_names = sorted({n for n in names if n is not None})
            index = {n: i for i, n in enumerate(clips.class_names)}
            clips.labels = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    return clips


def _label_regex(label_pattern: str | None) -> re.Pattern | None:
    if label_pattern is None:
        return None
    try:
        pattern = re.compile(label_pattern)
    except re.error as exc:
        raise ConfigError(f"--label-pattern '{label_pattern}' is not a regular expression ({exc}).") from None
    if "label" not in pattern.groupindex:
        raise ConfigError(f"--label-pattern '{label_pattern}' needs a named group 'label', e.g. "
                          r"'^(?P<label>\d)_' for files named 7_jackson_32.wav.")
    return pattern


def _labels_of(files: list[Path], folder: Path, pattern: re.Pattern | None) -> list[str | None] | None:
    """Each file's label name: from ``pattern`` (a file it does not match: an error), else its
    subfolder (files directly in ``folder`` have none); None when no file has a label."""
    if pattern is not None:
        names = []
        for path in files:
            match = pattern.search(path.name)
            if match is None or match["label"] is None:
                raise DataError(f"--label-pattern '{pattern.pattern}' does not match the file name '{path.name}' "
                                f"({path}); fix the pattern or move the file out of the folder.")
            names.append(match["label"])
        return names
    names = [path.relative_to(folder).parts[0] if len(path.relative_to(folder).parts) > 1 else None
             for path in files]
    return names if any(n is not None for n in names) else None


def fsdd_split(clips: AudioClips, split: str = "repetition", part: str = "dev") -> tuple[np.ndarray, np.ndarray]:
    """``(training positions, scored positions)`` of FSDD, sorted.

    ``split``: ``repetition`` (the official split: repetitions 0-4 are the test part) or
    ``speaker`` (speaker ``theo`` is the test part; no speaker is in two parts). ``part``: ``dev``
    scores a development part carved from the training side (repetitions 5-9, or speaker
    ``nicolas``), which then trains on the rest; ``test`` scores the test part and trains on
    everything else.
    """
    if clips.speakers is None or clips.repetitions is None:
        raise ConfigError(f"The splits by repetition and by speaker are FSDD's; '{clips.name}' is not FSDD "
                          f"(files named {{digit}}_{{speaker}}_{{index}}.wav).")
    if split not in SPLITS or part not in ("dev", "test"):
        raise ConfigError(f"An FSDD split is one of {', '.join(SPLITS)} scored on dev or test, got {split!r}/{part!r}.")
    if split == "repetition":
        test = np.isin(clips.repetitions, FSDD_TEST_REPETITIONS)
        dev = np.isin(clips.repetitions, FSDD_DEV_REPETITIONS)
    else:
        test = clips.speakers == FSDD_TEST_SPEAKER
        dev = clips.speakers == FSDD_DEV_SPEAKER
    scored = test if part == "test" else dev
    training = ~test & ~dev if part == "dev" else ~test
    return np.flatnonzero(training), np.flatnonzero(scored)
