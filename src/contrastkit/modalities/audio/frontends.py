"""Front ends: from a batch of waveforms on the device to frames, 100 per second by default.

- :class:`LogMelSpectrogram`: ``10 log10(max(M |STFT(x)|^2, amin))`` with a mel filterbank ``M``,
  computed in torch on the training device, equal to ``librosa.power_to_db(librosa.feature.
  melspectrogram(...))`` (tests/modalities/audio/test_frontends.py). The filterbank is Slaney's
  (librosa's default, ``htk=False, norm="slaney"``): triangles on the mel scale that is linear
  below 1 kHz (``m = 3 f / 200``) and logarithmic above (``m = 15 + 27 ln(f / 1000) / ln 6.4``),
  each scaled by ``2 / (f_{i+2} - f_i)`` so that every triangle has the same area.
- :class:`WaveformFrontEnd`: strided 1-D convolutions on the raw waveform whose strides multiply
  to one frame per ``hop_ms`` (wav2vec's feature encoder, scaled: strides 5, 2, 2, ... so that at
  8 kHz five layers give 80 samples = 10 ms), each followed by a layer norm over channels and GELU.
- :class:`MFCC`: the orthonormal DCT-II of the log-mel spectrogram (``librosa.feature.mfcc``),
  optionally with its frames on the waveform front end's frames (HuBERT's first targets).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError


def hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: ``3 f / 200`` below 1 kHz, ``15 + 27 ln(f / 1000) / ln 6.4`` above."""
    f = np.asarray(frequencies, dtype=np.float64)
    linear = 3.0 * f / 200.0
    logarithmic = 15.0 + 27.0 * np.log(np.maximum(f, 1e-10) / 1000.0) / np.log(6.4)
    return np.where(f >= 1000.0, logarithmic, linear)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`."""
    m = np.asarray(mels, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0), 200.0 * m / 3.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` Slaney-normalised triangular filters (module docstring).

    Filter ``i`` rises from edge ``f_i`` to ``f_{i+1}`` and falls to ``f_{i+2}``, the ``n_mels + 2``
    edges equally spaced in mel between ``fmin`` and ``fmax``, evaluated at the FFT bin
    frequencies ``k * sample_rate / n_fft``."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2.0:
        raise ConfigError(f"The mel filterbank needs 0 <= fmin < fmax <= sample_rate / 2 ({sample_rate / 2}); "
                          f"got fmin={fmin}, fmax={fmax}.")
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    rising = (bins[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def power_to_db(power: Tensor, amin: float = 1e-10, top_db: float | None = 80.0) -> Tensor:
    """``10 log10(max(power, amin))`` per clip (dimension 0), floored at the clip's maximum minus
    ``top_db`` (librosa's ``power_to_db`` with ``ref=1.0``, applied to each clip on its own)."""
    db = 10.0 * torch.log10(power.clamp_min(amin))
    if top_db is not None:
        peak = db.flatten(1).amax(dim=1).view(-1, *([1] * (db.dim() - 1)))
        db = torch.maximum(db, peak - top_db)
    return db


class LogMelSpectrogram(nn.Module):
    """``(B, samples) -> (B, n_mels, frames)`` log-mel power spectrogram (module docstring).

    Frames are centred (the waveform is zero-padded by ``n_fft // 2`` on each side), so a clip
    of L samples has ``1 + L // hop_length`` frames. Defaults suit speech at 8 kHz: a 25 ms Hann
    window in a 32 ms FFT, a 10 ms hop, 40 mel bands.
    """

    def __init__(self, sample_rate: int, n_fft: int | None = None, hop_length: int | None = None,
                 win_length: int | None = None, n_mels: int = 40, fmin: float = 0.0, fmax: float | None = None,
                 top_db: float | None = 80.0, center: bool = True):
        super().__init__()
        self.center = center
        self.sample_rate = int(sample_rate)
        self.win_length = win_length or round(0.025 * sample_rate)
        self.n_fft = n_fft or 2 ** math.ceil(math.log2(self.win_length))
        self.hop_length = hop_length or round(0.010 * sample_rate)
        self.n_mels = n_mels
        self.top_db = top_db
        if self.win_length > self.n_fft:
            raise ConfigError(f"The window ({self.win_length} samples) must fit in the FFT ({self.n_fft}).")
        filters = mel_filterbank(sample_rate, self.n_fft, n_mels, fmin, fmax)
        self.register_buffer("filters", torch.from_numpy(filters).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)

    def frames(self, samples: Tensor | int) -> Tensor | int:
        """The number of frames of clips of ``samples`` samples (``center=False``: only the frames
        whose ``n_fft`` samples all lie in the clip)."""
        if not self.center:
            return (samples - self.n_fft) // self.hop_length + 1
        return 1 + samples // self.hop_length

    def power(self, waves: Tensor) -> Tensor:
        """The mel power spectrogram ``M |STFT|^2`` (B, n_mels, frames), before the logarithm."""
        spectrum = torch.stft(waves.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                              center=self.center, pad_mode="constant", return_complex=True)
        return self.filters @ spectrum.abs().pow(2)

    def forward(self, waves: Tensor) -> Tensor:
        return power_to_db(self.power(waves), top_db=self.top_db)


def dct_matrix(n_inputs: int, n_outputs: int) -> Tensor:
    """``(n_outputs, n_inputs)``: the orthonormal DCT-II, ``C[k, n] = s_k cos(pi k (2n + 1) / (2N))``
    with ``s_0 = sqrt(1 / N)`` and ``s_k = sqrt(2 / N)`` (scipy's ``dct(type=2, norm="ortho")``)."""
    n, k = np.arange(n_inputs)[None, :], np.arange(n_outputs)[:, None]
    scale = np.where(k == 0, np.sqrt(1.0 / n_inputs), np.sqrt(2.0 / n_inputs))
    return torch.from_numpy(scale * np.cos(np.pi * k * (2 * n + 1) / (2 * n_inputs))).float()


class MFCC(nn.Module):
    """``(B, samples) -> (B, n_mfcc, frames)``: the first ``n_mfcc`` coefficients of the orthonormal
    DCT-II of the log-mel spectrogram over the bands (``librosa.feature.mfcc`` with its defaults:
    ``dct_type=2, norm="ortho", lifter=0``; tests/modalities/audio/test_targets.py).

    :meth:`aligned_with` gives the MFCCs whose frame t covers exactly the samples of a
    :class:`WaveformFrontEnd`'s frame t (``[t hop, t hop + receptive_field)``): a window of the
    receptive field's length in an FFT of the next power of two, not centred, the clip padded by
    the FFT's extra samples so that the window sits on those samples; the frame counts are equal.
    """

    def __init__(self, sample_rate: int, n_mfcc: int = 13, n_mels: int = 40, n_fft: int | None = None,
                 hop_length: int | None = None, win_length: int | None = None, center: bool = True,
                 top_db: float | None = 80.0, padding: tuple[int, int] = (0, 0)):
        super().__init__()
        self.log_mel = LogMelSpectrogram(sample_rate, n_fft, hop_length, win_length, n_mels, top_db=top_db,
                                         center=center)
        self.padding = padding
        self.register_buffer("dct", dct_matrix(n_mels, n_mfcc), persistent=False)

    @classmethod
    def aligned_with(cls, frontend: WaveformFrontEnd, sample_rate: int, n_mfcc: int = 13, n_mels: int = 40,
                     top_db: float | None = None) -> MFCC:
        n_fft = 2 ** math.ceil(math.log2(frontend.receptive_field))
        extra = n_fft - frontend.receptive_field
        return cls(sample_rate, n_mfcc, n_mels, n_fft=n_fft, hop_length=frontend.hop,
                   win_length=frontend.receptive_field, center=False, top_db=top_db,
                   padding=(extra // 2, extra - extra // 2))  # torch.stft centres the window in the FFT

    def frames(self, samples: Tensor | int) -> Tensor | int:
        return self.log_mel.frames(samples + sum(self.padding))

    def forward(self, waves: Tensor) -> Tensor:
        return self.dct @ self.log_mel(F.pad(waves, self.padding))


def waveform_strides(sample_rate: int, hop_ms: float = 10.0) -> list[int]:
    """Strides ``[5, 2, 2, ...]`` whose product is one frame per ``hop_ms`` at ``sample_rate``."""
    hop = sample_rate * hop_ms / 1000.0
    twos = math.log2(hop / 5) if hop >= 5 else -1
    if hop != int(hop) or twos != int(twos) or twos < 0:
        raise ConfigError(f"The waveform front end's hop of {hop_ms} ms is {hop} samples at {sample_rate} Hz; it "
                          f"needs 5 x 2^n samples (8 kHz: 80, 16 kHz: 160). Resample with --sample-rate 8000 or 16000.")
    return [5] + [2] * int(twos)


class WaveformFrontEnd(nn.Module):
    """``(B, samples) -> (B, channels, frames)``: strided convolutions, one frame per ``hop_ms``.

    Layer ``l`` is ``Conv1d(kernel 2 s_l, stride s_l, no bias) -> LayerNorm(channels) -> GELU``
    with strides from :func:`waveform_strides`; each clip is first scaled to zero mean and unit
    variance over its valid samples (wav2vec 2.0's input normalisation; ``standardize_input``). A clip of L samples gives
    ``(L - receptive_field) // hop + 1`` frames; frame t starts at sample ``t * hop``.
    """

    def __init__(self, sample_rate: int, channels: int = 128, hop_ms: float = 10.0, standardize_input: bool = True):
        super().__init__()
        self.standardize_input = standardize_input
        self.strides = waveform_strides(sample_rate, hop_ms)
        self.hop = int(np.prod(self.strides))
        self.channels = channels
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for layer, stride in enumerate(self.strides):
            self.convs.append(nn.Conv1d(1 if layer == 0 else channels, channels, 2 * stride, stride, bias=False))
            self.norms.append(nn.LayerNorm(channels))
        # Receptive field: k_0 + sum_l (k_l - 1) * (product of the strides before l).
        field, jump = 0, 1
        for stride in self.strides:
            field += (2 * stride - 1) * jump
            jump *= stride
        self.receptive_field = field + 1

    def frames(self, samples: Tensor | int) -> Tensor | int:
        if isinstance(samples, Tensor):
            return ((samples - self.receptive_field).div(self.hop, rounding_mode="floor") + 1).clamp_min(0)
        return max(0, (samples - self.receptive_field) // self.hop + 1)

    def forward(self, waves: Tensor, lengths: Tensor | None = None) -> Tensor:
        x = (standardize(waves, lengths) if self.standardize_input else waves).unsqueeze(1)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.gelu(norm(conv(x).transpose(1, 2)).transpose(1, 2))
        return x


def standardize(waves: Tensor, lengths: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Each clip scaled to zero mean and unit variance over its first ``lengths`` samples; the
    padding after them stays 0."""
    if lengths is None:
        lengths = torch.full((waves.shape[0],), waves.shape[1], device=waves.device)
    valid = torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths[:, None]
    count = valid.sum(dim=1, keepdim=True).clamp_min(1)
    mean = (waves * valid).sum(dim=1, keepdim=True) / count
    variance = ((waves - mean) ** 2 * valid).sum(dim=1, keepdim=True) / count
    return (waves - mean) / torch.sqrt(variance + eps) * valid
