"""Encoders of audio frames: 1-D convolutions over time, one vector per frame, pooled per clip.

- :class:`FrameEncoder`: ``(B, channels, frames) -> (B, frames, width)``, residual blocks
  ``Conv1d(kernel 5, dilation 1, 2, 4, ...) -> LayerNorm(width) -> GELU``. The norm is over the
  channels of each frame (no statistics across clips or frames), so a clip's frames do not depend
  on the other clips of the batch nor on the padding after it beyond the convolutions' reach, and
  several processes train exactly as one.
- :class:`SpectrogramEncoder`: a log-mel spectrogram, standardised per clip over its valid
  frames, into a :class:`FrameEncoder`.
- :class:`FrameTransformer`: the raw-waveform front end and a Transformer over its frames with a
  mask embedding (wav2vec 2.0, HuBERT).
- :func:`masked_mean`: the mean of each clip's valid frames: the clip's embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.modalities.audio.frontends import WaveformFrontEnd
from contrastkit.nn.patch_transformer import transformer_blocks


def frame_mask(frame_lengths: Tensor, frames: int) -> Tensor:
    return torch.arange(frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


def masked_mean(frames: Tensor, frame_lengths: Tensor) -> Tensor:
    """``(B, T, D) -> (B, D)``: the mean over each clip's first ``frame_lengths`` frames (at least one)."""
    mask = frame_mask(frame_lengths.clamp(1, frames.shape[1]), frames.shape[1]).to(frames.dtype)
    return (frames * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)


class FrameEncoder(nn.Module):
    """Residual dilated 1-D convolutions over frames (module docstring); ``output_dim = width``."""

    def __init__(self, in_channels: int, width: int = 128, depth: int = 4, kernel_size: int = 5):
        super().__init__()
        self.input = nn.Conv1d(in_channels, width, 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size, dilation=2**layer, padding=(kernel_size - 1) // 2 * 2**layer)
            for layer in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.output_dim = width

    def forward(self, x: Tensor) -> Tensor:
        h = self.input(x).transpose(1, 2)  # (B, T, width)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = h + F.gelu(norm(conv(h.transpose(1, 2)).transpose(1, 2)))
        return h


class SpectrogramEncoder(nn.Module):
    """``(B, n_mels, frames), frame_lengths -> (B, frames, width)``."""

    def __init__(self, n_mels: int, width: int = 128, depth: int = 4):
        super().__init__()
        self.frames = FrameEncoder(n_mels, width, depth)
        self.output_dim = width

    def forward(self, spectrogram: Tensor, frame_lengths: Tensor) -> Tensor:
        return self.frames(standardize_spectrogram(spectrogram, frame_lengths))


def standardize_spectrogram(spectrogram: Tensor, frame_lengths: Tensor) -> Tensor:
    """``(B, bands, frames)`` scaled to zero mean and unit variance over each clip's valid frames
    (all bands); the frames after them are set to 0."""
    mask = frame_mask(frame_lengths.clamp(1, spectrogram.shape[2]), spectrogram.shape[2])[:, None, :]
    count = mask.sum(dim=(1, 2), keepdim=True) * spectrogram.shape[1]
    mean = (spectrogram * mask).sum(dim=(1, 2), keepdim=True) / count
    std = torch.sqrt(((spectrogram - mean) ** 2 * mask).sum(dim=(1, 2), keepdim=True) / count + 1e-5)
    return (spectrogram - mean) / std * mask


def freeze_key_bias(blocks: nn.ModuleList) -> nn.ModuleList:
    """Zero the key bias of each block's attention and every gradient it gets.

    Why: a query's attention is a softmax over ``q . (k_j + b_k)``, and ``q . b_k`` is the same for
    every key j, so the key bias's exact gradient is 0. Computed, it is rounding noise (~1e-9), which
    AdamW divides by its own square root into steps of the full learning rate in random directions:
    the weights would then depend on how a batch is split over processes. Without the bias the
    blocks compute the same function, and the weights do not."""
    for block in blocks:
        bias = block.self_attn.in_proj_bias
        width = bias.shape[0] // 3
        keep = torch.ones_like(bias)
        keep[width:2 * width] = 0
        with torch.no_grad():
            bias.mul_(keep)
        bias.register_hook(lambda gradient, keep=keep: gradient * keep.to(gradient.device, gradient.dtype))
    return blocks


class FrameTransformer(nn.Module):
    """wav2vec 2.0's and HuBERT's model, scaled down: the raw-waveform front end, then a Transformer
    over its frames, some of them replaced by a learned mask embedding.

    :meth:`latents`: ``z`` (B, T, width), the front end's frames after a LayerNorm (wav2vec 2.0
    quantises these), and each clip's valid frame count. :meth:`forward`: ``z`` projected to ``dim``,
    the ``masked`` frames replaced by the mask embedding, plus a convolutional position embedding
    (``Conv1d`` over frames, kernel ``position_kernel``, 4 groups, GELU: the paper's relative
    position convolution, kernel 128 at 50 frames/s, scaled to 150 ms at 100 frames/s), then
    ``depth`` pre-norm Transformer blocks that attend to valid frames only, and a LayerNorm.
    ``layer`` (1..depth) returns the output of that block instead (HuBERT's features for the next
    iteration's clusters).
    """

    def __init__(self, sample_rate: int, width: int = 128, depth: int = 4, heads: int = 4, position_kernel: int = 15):
        super().__init__()
        self.sample_rate = sample_rate
        self.frontend = WaveformFrontEnd(sample_rate, channels=width)
        self.latent_norm = nn.LayerNorm(width)
        self.project = nn.Linear(width, width)
        self.mask_embedding = nn.Parameter(torch.empty(width).uniform_())
        self.positions = nn.Conv1d(width, width, position_kernel, padding=position_kernel // 2, groups=4)
        self.input_norm = nn.LayerNorm(width)
        self.blocks = freeze_key_bias(transformer_blocks(width, depth, heads).layers)
        self.output_norm = nn.LayerNorm(width)
        self.output_dim = self.width = width
        self.depth = depth

    def latents(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        frames = self.frontend(waves, lengths).transpose(1, 2)
        return self.latent_norm(frames), self.frontend.frames(lengths).clamp_min(1)

    def forward(self, latents: Tensor, valid_frames: Tensor, masked: Tensor | None = None,
                layer: int | None = None) -> Tensor:
        valid = frame_mask(valid_frames, latents.shape[1])
        x = self.project(latents)
        if masked is not None:
            x = torch.where(masked[:, :, None], self.mask_embedding.to(x.dtype), x)
        x = x * valid[:, :, None]
        x = self.input_norm(x + F.gelu(self.positions(x.transpose(1, 2))).transpose(1, 2))
        for number, block in enumerate(self.blocks, start=1):
            x = block(x, src_key_padding_mask=~valid)
            if number == layer:
                return x
        return self.output_norm(x)
