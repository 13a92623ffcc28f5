"""Random views of audio batches, on the training device, drawn for the global batch.

Each view is a function of a batch of waveforms ``(B, samples)`` with their valid ``lengths`` (or
of a spectrogram ``(B, bands, frames)``) and of :class:`RowDraws`, and says what it keeps:

- :func:`random_crop`: a window of exactly ``crop`` samples inside each clip's valid part (clips
  shorter than that are kept whole and zero-padded); the rate is unchanged.
- :func:`random_gain`: every clip times ``10^(g/20)``, ``g`` uniform in ``[low_db, high_db]``.
- :func:`add_noise`: white Gaussian noise scaled so that the clip's signal-to-noise ratio over its
  valid samples is exactly the drawn ``snr_db`` (``10 log10(P_signal / P_noise)``).
- :func:`time_shift`: a circular shift by up to ``max_shift`` samples within the valid part.
- :func:`mix`: ``(1 - w) x_i + w x_j`` with another clip ``j`` of the global batch, ``w`` uniform
  in ``[0, max_weight]``.
- :func:`spec_augment`: SpecAugment's masks (Park et al., Interspeech 2019): ``time_masks`` bands
  of up to ``time_width`` frames and ``freq_masks`` of up to ``freq_width`` bands set to the
  clip's mean.

None changes the number of samples, frames or bands, nor the rate
(tests/modalities/audio/test_views.py).

Draws for the global batch: every random number of a step is drawn for all ``global_rows`` rows
of the global batch from one generator seeded alike on every process, and this process keeps its
rows ``first_row ..``: a clip's view does not depend on how the global batch is split over
processes, so N processes of b clips train as one process of N x b clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.nn.distributed import gather_no_grad


@dataclass
class RowDraws:
    """Random numbers for the ``global_rows`` rows of a global batch, this process's ``rows``
    rows from ``first_row`` kept (module docstring)."""

    generator: torch.Generator
    rows: int
    global_rows: int | None = None
    first_row: int = 0

    def __post_init__(self) -> None:
        self.global_rows = self.rows if self.global_rows is None else self.global_rows

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def _mine(self, values: Tensor) -> Tensor:
        return values[self.first_row:self.first_row + self.rows]

    def uniform(self, *shape: int) -> Tensor:
        return self._mine(torch.rand(self.global_rows, *shape, generator=self.generator, device=self.device))

    def normal(self, *shape: int) -> Tensor:
        return self._mine(torch.randn(self.global_rows, *shape, generator=self.generator, device=self.device))

    def other_rows(self) -> Tensor:
        """For each row, the global index of another row (never itself), uniformly."""
        offsets = 1 + (self.uniform() * (self.global_rows - 1)).long()
        return (torch.arange(self.first_row, self.first_row + self.rows, device=self.device) + offsets) % self.global_rows


def valid_mask(lengths: Tensor, size: int) -> Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def random_crop(waves: Tensor, lengths: Tensor, crop: int, draws: RowDraws) -> tuple[Tensor, Tensor]:
    """``(B, crop)`` windows starting uniformly in ``[0, length - crop]``, and their lengths."""
    return crop_at(waves, lengths, crop, crop_starts(lengths, crop, draws))


def crop_starts(lengths: Tensor, crop: int, draws: RowDraws, step: int = 1) -> Tensor:
    """Starts drawn uniformly among the multiples of ``step`` in ``[0, length - crop]`` (0 for a
    clip shorter than ``crop``). ``step`` = a front end's hop keeps the crop's frames on the
    clip's frames (HuBERT's targets are those of the whole clip's frames)."""
    last = (lengths - crop).clamp_min(0) // step
    return (draws.uniform() * (last + 1)).long().clamp_max(last) * step


def crop_at(waves: Tensor, lengths: Tensor, crop: int, start: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(B, crop)`` windows from ``start`` (zero-padded after a clip's end), and their lengths."""
    index = start[:, None] + torch.arange(crop, device=waves.device)[None, :]
    new_lengths = lengths.clamp_max(crop)
    inside = valid_mask(new_lengths, crop)
    padded = nn.functional.pad(waves, (0, max(0, crop - waves.shape[1])))
    return padded.gather(1, index.clamp_max(padded.shape[1] - 1)) * inside, new_lengths


def random_gain(waves: Tensor, draws: RowDraws, low_db: float = -6.0, high_db: float = 6.0) -> Tensor:
    gain_db = low_db + (high_db - low_db) * draws.uniform()
    return waves * torch.pow(10.0, gain_db / 20.0)[:, None]


def add_noise(waves: Tensor, lengths: Tensor, draws: RowDraws, low_snr_db: float = 5.0,
              high_snr_db: float = 30.0) -> Tensor:
    """White noise at an SNR uniform in ``[low_snr_db, high_snr_db]`` per clip (exact over the
    valid samples; the padding stays 0). A silent clip gets no noise."""
    inside = valid_mask(lengths, waves.shape[1])
    snr_db = low_snr_db + (high_snr_db - low_snr_db) * draws.uniform()
    noise = draws.normal(waves.shape[1]) * inside
    count = inside.sum(dim=1).clamp_min(1)
    signal_power = (waves * inside).pow(2).sum(dim=1) / count
    noise_power = noise.pow(2).sum(dim=1) / count
    scale = torch.sqrt(signal_power / (noise_power.clamp_min(1e-20) * torch.pow(10.0, snr_db / 10.0)))
    return waves + noise * scale[:, None]


def time_shift(waves: Tensor, lengths: Tensor, draws: RowDraws, max_shift: int) -> Tensor:
    """``out[i, t] = x[i, (t - s_i) mod length_i]`` for valid ``t``, ``s_i`` uniform in
    ``[-max_shift, max_shift]``."""
    shift = (draws.uniform() * (2 * max_shift + 1)).long() - max_shift
    t = torch.arange(waves.shape[1], device=waves.device)[None, :]
    source = torch.remainder(t - shift[:, None], lengths.clamp_min(1)[:, None])
    return waves.gather(1, source) * valid_mask(lengths, waves.shape[1])


def mix(waves: Tensor, lengths: Tensor, draws: RowDraws, max_weight: float = 0.3) -> tuple[Tensor, Tensor]:
    """Each clip mixed with another clip of the global batch; the length is the longer of the two."""
    partners = draws.other_rows()
    weight = max_weight * draws.uniform()
    every_wave, every_length = gather_no_grad(waves), gather_no_grad(lengths)
    mixed = (1 - weight)[:, None] * waves + weight[:, None] * every_wave[partners]
    return mixed, torch.maximum(lengths, every_length[partners])


def spec_augment(spectrogram: Tensor, draws: RowDraws, time_masks: int = 2, time_width: int = 8,
                 freq_masks: int = 2, freq_width: int = 6) -> Tensor:
    """``(B, bands, frames)`` with masked bands and frame ranges (widths uniform in ``[0, width]``)
    set to each clip's mean value."""
    batch, bands, frames = spectrogram.shape
    mean = spectrogram.mean(dim=(1, 2), keepdim=True)
    masked = torch.zeros_like(spectrogram, dtype=torch.bool)
    for count, width, size, axis in ((freq_masks, freq_width, bands, 1), (time_masks, time_width, frames, 2)):
        for _ in range(count):
            widths = (draws.uniform() * (min(width, size) + 1)).long()
            starts = (draws.uniform() * (size - widths + 1)).long()
            position = torch.arange(size, device=spectrogram.device)[None, :]
            band = (position >= starts[:, None]) & (position < (starts + widths)[:, None])
            masked |= band[:, :, None] if axis == 1 else band[:, None, :]
    return torch.where(masked, mean, spectrogram)


@dataclass(frozen=True)
class ViewSettings:
    """Which views, and how strong. ``crop_seconds`` sets the training window; the rest are
    the views' own parameters (0 or None turns a view off)."""

    crop_seconds: float = 0.5
    gain_db: float = 6.0
    snr_db: tuple[float, float] | None = (5.0, 30.0)
    shift_seconds: float = 0.1
    mix_weight: float = 0.3
    time_masks: int = 2
    time_width: int = 8
    freq_masks: int = 2
    freq_width: int = 6

    def __post_init__(self) -> None:
        if not self.crop_seconds > 0:
            raise ConfigError(f"--crop-seconds must be positive, got {self.crop_seconds}.")
        if not 0 <= self.mix_weight < 1:
            raise ConfigError(f"The mixing weight must be in [0, 1), got {self.mix_weight}.")


class WaveformViews(nn.Module):
    """Crop, gain, circular shift, mixing and noise, in that order, on ``(B, samples)`` waveforms.
    With ``crop_only`` only the crop (CPC's input)."""

    def __init__(self, sample_rate: int, settings: ViewSettings = ViewSettings(), crop_only: bool = False):
        super().__init__()
        self.sample_rate = sample_rate
        self.settings = settings
        self.crop = round(settings.crop_seconds * sample_rate)
        self.crop_only = crop_only

    def forward(self, waves: Tensor, lengths: Tensor, draws: RowDraws) -> tuple[Tensor, Tensor]:
        s = self.settings
        waves, lengths = random_crop(waves, lengths, self.crop, draws)
        if self.crop_only:
            return waves, lengths
        if s.gain_db:
            waves = random_gain(waves, draws, -s.gain_db, s.gain_db)
        if s.shift_seconds:
            waves = time_shift(waves, lengths, draws, round(s.shift_seconds * self.sample_rate))
        if s.mix_weight:
            waves, lengths = mix(waves, lengths, draws, s.mix_weight)
        if s.snr_db is not None:
            waves = add_noise(waves, lengths, draws, *s.snr_db)
        return waves, lengths


class SpectrogramViews(nn.Module):
    """Waveform views, then the log-mel front end, then SpecAugment: ``(B, n_mels, frames)`` and
    the frames' valid counts."""

    def __init__(self, waveform_views: WaveformViews, frontend: nn.Module):
        super().__init__()
        self.waveform_views = waveform_views
        self.frontend = frontend

    def forward(self, waves: Tensor, lengths: Tensor, draws: RowDraws) -> tuple[Tensor, Tensor]:
        s = self.waveform_views.settings
        waves, lengths = self.waveform_views(waves, lengths, draws)
        spectrogram = self.frontend(waves)
        if s.time_masks or s.freq_masks:
            spectrogram = spec_augment(spectrogram, draws, s.time_masks, s.time_width, s.freq_masks, s.freq_width)
        return spectrogram, self.frontend.frames(lengths)
