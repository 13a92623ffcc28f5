"""A masked autoencoder on log-mel patches (He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders
Are Scalable Vision Learners", CVPR 2022; on spectrograms: Huang et al., "Masked Autoencoders that
Listen" (Audio-MAE), NeurIPS 2022).

A crop's log-mel spectrogram (standardised over the clip's valid frames) is cut into patches of
``patch_mels x patch_frames`` (default 8 x 4: 40 bands x 40 frames of a 0.4 s crop make a 5 x 10
grid; the crop's 41st frame is left out), linearly embedded with fixed 2-D sine-cosine positions.
``mask_ratio`` of the patches (0.8, Audio-MAE's) are masked at random per clip; the encoder (a
``depth``-block Transformer of ``width``) sees the visible ones only. A light decoder (2 blocks of
``width / 2``: MAE's decoder is also narrower and shallower than its encoder) gets the encoded
visible patches and one learned mask token per masked patch, each with its position, and predicts
the masked patches' values. The loss is the catalogue's ``masked_token_regression`` (the mean
squared error over every value) on the masked patches only, each target patch normalised by its
own mean and standard deviation (MAE's ``norm_pix_loss``: ``(x - mean) / sqrt(var + 1e-6)``). A
clip shorter than the crop is zero-padded before the spectrogram, and its padding patches are
reconstructed like any other (as Audio-MAE pads its 10 s inputs). The embedding is the mean of the
encoder's outputs over the patches of the whole clip (no mask; attention only among the clip's
own patches).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.audio.encoders import freeze_key_bias, standardize_spectrogram
from contrastkit.modalities.audio.frontends import LogMelSpectrogram
from contrastkit.modalities.audio.masking import random_patch_mask
from contrastkit.modalities.audio.methods.parts import StepDraws
from contrastkit.modalities.audio.views import random_crop
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.patch_transformer import gather_tokens, sincos_positions_2d, transformer_blocks
from contrastkit.objectives.masked_pixels import normalize_patches

HEADS, DECODER_DEPTH = 4, 2


def patchify(spectrogram: Tensor, patch_mels: int, patch_frames: int) -> Tensor:
    """``(B, bands, frames) -> (B, rows x columns, patch_mels x patch_frames)``, patches in raster
    order (band rows, then frame columns), each patch's values band by band."""
    batch, bands, frames = spectrogram.shape
    rows, columns = bands // patch_mels, frames // patch_frames
    grid = spectrogram.reshape(batch, rows, patch_mels, columns, patch_frames)
    return grid.permute(0, 1, 3, 2, 4).reshape(batch, rows * columns, patch_mels * patch_frames)


def unpatchify(patches: Tensor, rows: int, patch_mels: int, patch_frames: int) -> Tensor:
    """The inverse of :func:`patchify`."""
    batch, count, _ = patches.shape
    columns = count // rows
    grid = patches.reshape(batch, rows, columns, patch_mels, patch_frames)
    return grid.permute(0, 1, 3, 2, 4).reshape(batch, rows * patch_mels, columns * patch_frames)


class SpectrogramMAE(StepDraws, nn.Module):
    def __init__(self, frontend: LogMelSpectrogram, crop: int, width: int, depth: int, patch_mels: int,
                 patch_frames: int, mask_ratio: float):
        super().__init__()
        if frontend.n_mels % patch_mels or width % 8:
            raise ConfigError(f"--patch-mels {patch_mels} must divide --n-mels {frontend.n_mels}, and --width "
                              f"{width} be a multiple of 8 (sine-cosine positions of the encoder and its half-width "
                              f"decoder).")
        self.frontend, self.crop = frontend, crop
        self.patch_mels, self.patch_frames, self.mask_ratio = patch_mels, patch_frames, mask_ratio
        self.rows = frontend.n_mels // patch_mels
        if frontend.frames(crop) < patch_frames:
            raise ConfigError(f"A {crop}-sample crop has fewer than --patch-frames {patch_frames} frames; crop longer.")
        self.embed_patch = nn.Linear(patch_mels * patch_frames, width)
        self.encoder = transformer_blocks(width, depth, HEADS)
        freeze_key_bias(self.encoder.layers)  # encoders.freeze_key_bias says why
        self.encoder_norm = nn.LayerNorm(width)
        decoder_width = width // 2
        self.decoder_input = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = transformer_blocks(decoder_width, DECODER_DEPTH, HEADS)
        freeze_key_bias(self.decoder.layers)
        self.decoder_norm = nn.LayerNorm(decoder_width)
        self.decoder_output = nn.Linear(decoder_width, patch_mels * patch_frames)
        self.output_dim = width
        self.objective = GatheredObjective(objectives.get("masked_token_regression"))

    def positions(self, columns: int, dim: int, device: torch.device) -> Tensor:
        return sincos_positions_2d(self.rows, dim, columns)[None].to(device)

    def patches(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The standardised log-mel patches of ``waves`` and the number of columns holding each clip's frames."""
        frames = self.frontend.frames(lengths)
        spectrogram = standardize_spectrogram(self.frontend(waves), frames)
        columns = spectrogram.shape[2] // self.patch_frames
        if columns < 1:
            spectrogram = nn.functional.pad(spectrogram, (0, self.patch_frames - spectrogram.shape[2]))
            columns = 1
        patches = patchify(spectrogram[:, :, : columns * self.patch_frames], self.patch_mels, self.patch_frames)
        return patches, (frames // self.patch_frames).clamp(1, columns)

    def reconstruct(self, patches: Tensor, visible: Tensor, masked: Tensor) -> Tensor:
        """The decoder's predictions (B, masked, patch values) of the ``masked`` patches from the ``visible``."""
        columns = patches.shape[1] // self.rows
        tokens = gather_tokens(self.embed_patch(patches) + self.positions(columns, self.output_dim, patches.device),
                               visible)
        encoded = self.decoder_input(self.encoder_norm(self.encoder(tokens)))
        positions = self.positions(columns, encoded.shape[2], patches.device).expand(len(patches), -1, -1)
        queries = self.mask_token + gather_tokens(positions, masked)
        decoded = self.decoder(torch.cat([encoded + gather_tokens(positions, visible), queries], dim=1))
        return self.decoder_output(self.decoder_norm(decoded[:, visible.shape[1]:]))

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        draws = self.draws(len(batch["wave"]), batch["wave"].device)
        patches, _ = self.patches(*random_crop(batch["wave"], batch["length"], self.crop, draws))
        visible, masked = random_patch_mask(patches.shape[1], self.mask_ratio, draws)
        predictions = self.reconstruct(patches, visible, masked)
        return self.objective(predictions, normalize_patches(gather_tokens(patches, masked))), {}

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        patches, columns = self.patches(batch["wave"], batch["length"])
        valid = (torch.arange(patches.shape[1] // self.rows, device=patches.device)[None, :] < columns[:, None])
        valid = valid.repeat(1, self.rows)  # raster order: row r's columns are patches r C .. r C + C - 1
        tokens = self.embed_patch(patches) + self.positions(patches.shape[1] // self.rows, self.output_dim,
                                                            patches.device)
        encoded = self.encoder_norm(self.encoder(tokens, src_key_padding_mask=~valid))
        weights = valid.to(encoded.dtype)[:, :, None]
        return (encoded * weights).sum(dim=1) / weights.sum(dim=1)


def build(options: dict, sample_rate: int) -> SpectrogramMAE:
    return SpectrogramMAE(LogMelSpectrogram(sample_rate, n_mels=options["n_mels"]),
                          round(options["crop_seconds"] * sample_rate), options["width"], options["depth"],
                          options["patch_mels"], options["patch_frames"], options["mask_ratio"])
