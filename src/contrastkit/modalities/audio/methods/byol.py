"""BYOL on spectrogram views (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020), as BYOL-A
applies it to audio (Niizumi et al., "BYOL for Audio", IJCNN 2021).

The online network (frame encoder, mean over valid frames, projector g, predictor q) predicts the
projection that the target network (an EMA copy of encoder and projector) gives of the other
view (:class:`~contrastkit.modalities.audio.views.SpectrogramViews`)::

    loss = normalized_mse(q(g(v)), g_t(v')) + normalized_mse(q(g(v')), g_t(v)),
    normalized_mse(p, z) = mean_i (2 - 2 cos(p_i, z_i))

After each optimiser step the target follows with ``m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2``
(``m_0 = momentum``, default 0.99 for runs of a few thousand steps, as the image BYOL here). The
loss is computed on the gathered global batch and the heads' BatchNorm is over it, so several
processes train as one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.modalities.audio.encoders import masked_mean
from contrastkit.modalities.audio.methods.parts import StepDraws, embed_spectrogram, spectrogram_parts
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.global_batchnorm import convert_to_global_batchnorm
from contrastkit.nn.heads import byol_prediction, byol_projection
from contrastkit.nn.momentum import check_momentum, momentum_copy, step_momentum_targets


class AudioBYOL(StepDraws, nn.Module):
    def __init__(self, frontend: nn.Module, views: nn.Module, encoder: nn.Module, projection: nn.Module,
                 predictor: nn.Module, base_momentum: float):
        super().__init__()
        self.frontend = frontend
        self.views = views
        self.encoder = encoder
        self.projection = projection
        self.predictor = predictor
        self.target_encoder = momentum_copy(encoder)
        self.target_projection = momentum_copy(projection)
        self.base_momentum = base_momentum
        self.objective = GatheredObjective(objectives.get("normalized_mse"))

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        waves, lengths = batch["wave"], batch["length"]
        draws = self.draws(len(waves), waves.device)
        spectrogram_a, frames_a = self.views(waves, lengths, draws)
        spectrogram_b, frames_b = self.views(waves, lengths, draws)
        both, frames = torch.cat([spectrogram_a, spectrogram_b]), torch.cat([frames_a, frames_b])
        p_a, p_b = self.predictor(self.projection(masked_mean(self.encoder(both, frames), frames))).chunk(2)
        with torch.no_grad():
            target = self.target_projection(masked_mean(self.target_encoder(both, frames), frames))
        target_a, target_b = target.chunk(2)
        return self.objective(p_a, target_b) + self.objective(p_b, target_a), {}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        step_momentum_targets([(self.target_encoder, self.encoder), (self.target_projection, self.projection)],
                              step, total_steps, self.base_momentum)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        return embed_spectrogram(self.frontend, self.encoder, batch)


def build(options: dict, sample_rate: int) -> AudioBYOL:
    frontend, views, encoder = spectrogram_parts(options, sample_rate)
    projection = byol_projection(encoder.output_dim, out_dim=options["projection_dim"])
    predictor = byol_prediction(encoder.output_dim, out_dim=options["projection_dim"])
    return AudioBYOL(frontend, views, encoder, convert_to_global_batchnorm(projection),
                     convert_to_global_batchnorm(predictor), check_momentum(options["momentum"], "--momentum"))
