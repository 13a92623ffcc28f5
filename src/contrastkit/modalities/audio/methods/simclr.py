"""SimCLR on spectrogram views (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for
Contrastive Learning of Visual Representations", ICML 2020), as in COLA / the audio SimCLR
studies (Saeed, Grangier & Zeghidour, "Contrastive learning of general-purpose audio
representations", ICASSP 2021).

Two views of each clip (crop, gain, shift, mixing, noise, log-mel, SpecAugment:
:class:`~contrastkit.modalities.audio.views.SpectrogramViews`) go through the frame encoder, the
mean over valid frames and a projection MLP; NT-Xent (the catalogue's ``infonce``) at
``temperature`` makes the two views of a clip positives and the other 2N - 2 views negatives,
gathered from every process. The projection's BatchNorm is over the global batch. The embedding
is the encoder's mean frame of the whole clip, before the projection.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.modalities.audio.encoders import masked_mean
from contrastkit.modalities.audio.methods.parts import StepDraws, embed_spectrogram, spectrogram_parts
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.global_batchnorm import convert_to_global_batchnorm
from contrastkit.nn.heads import simclr_projection


class AudioSimCLR(StepDraws, nn.Module):
    def __init__(self, frontend: nn.Module, views: nn.Module, encoder: nn.Module, projection: nn.Module,
                 objective: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.views = views
        self.encoder = encoder
        self.projection = projection
        self.objective = GatheredObjective(objective)

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        waves, lengths = batch["wave"], batch["length"]
        draws = self.draws(len(waves), waves.device)
        spectrogram_a, frames_a = self.views(waves, lengths, draws)
        spectrogram_b, frames_b = self.views(waves, lengths, draws)
        frames = torch.cat([frames_a, frames_b])
        # One pass over both views: the projection's BatchNorm sees the whole 2N batch.
        h = masked_mean(self.encoder(torch.cat([spectrogram_a, spectrogram_b]), frames), frames)
        z_a, z_b = self.projection(h).chunk(2)
        return self.objective(z_a, z_b), {}

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        return embed_spectrogram(self.frontend, self.encoder, batch)


def build(options: dict, sample_rate: int) -> AudioSimCLR:
    frontend, views, encoder = spectrogram_parts(options, sample_rate)
    projection = convert_to_global_batchnorm(simclr_projection(encoder.output_dim, out_dim=options["projection_dim"]))
    return AudioSimCLR(frontend, views, encoder, projection,
                       objectives.get("infonce", temperature=options["temperature"]))
