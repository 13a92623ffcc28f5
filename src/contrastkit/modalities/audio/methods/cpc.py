"""CPC on the raw waveform (van den Oord, Li & Vinyals, "Representation Learning with
Contrastive Predictive Coding", 2018, Sec. 3.1).

The strided convolutions of :class:`~contrastkit.modalities.audio.frontends.WaveformFrontEnd`
give one latent ``z_t`` per 10 ms (the paper: 160 samples at 16 kHz; here 80 at 8 kHz); a GRU
summarises ``z_{<=t}`` into the context ``c_t``; a linear map predicts ``W_k c_t`` for the
``prediction_steps`` next steps, scored by the catalogue's ``cpc`` InfoNCE (negatives: the other
clips at the same step and the same clip at other steps, gathered from every process). The only
view is a random crop (``crop_seconds``; the paper trains on 20 480-sample windows, 1.28 s; FSDD's
clips last 0.44 s on average, so the default crop is 0.4 s, 40 frames, and the default number of
steps 8 instead of 12). A clip shorter than the crop is zero-padded, and its padding frames take
part in the loss like any other. The embedding is the mean context over the whole clip's frames.
"""

from __future__ import annotations

from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.modalities.audio.encoders import masked_mean
from contrastkit.modalities.audio.frontends import WaveformFrontEnd
from contrastkit.modalities.audio.methods.parts import StepDraws, view_settings
from contrastkit.modalities.audio.views import WaveformViews
from contrastkit.nn.distributed import GatheredObjective


class CPC(StepDraws, nn.Module):
    def __init__(self, frontend: WaveformFrontEnd, views: nn.Module, context_dim: int, prediction_steps: int):
        super().__init__()
        self.frontend = frontend
        self.views = views
        self.context = nn.GRU(frontend.channels, context_dim, batch_first=True)
        self.predictor = nn.Linear(context_dim, prediction_steps * frontend.channels)  # W_1 .. W_K
        self.prediction_steps = prediction_steps
        self.objective = GatheredObjective(objectives.get("cpc"))

    def encode(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Latents ``z`` (B, T, D) and contexts ``c`` (B, T, C)."""
        latents = self.frontend(waves, lengths).transpose(1, 2)
        contexts, _ = self.context(latents)
        return latents, contexts

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        waves, lengths = self.views(batch["wave"], batch["length"], self.draws(len(batch["wave"]), batch["wave"].device))
        latents, contexts = self.encode(waves, lengths)
        batch_size, steps, dim = latents.shape
        predictions = self.predictor(contexts).view(batch_size, steps, self.prediction_steps, dim)
        return self.objective(predictions, latents), {}

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        _, contexts = self.encode(batch["wave"], batch["length"])
        return masked_mean(contexts, self.frontend.frames(batch["length"]))


def build(options: dict, sample_rate: int) -> CPC:
    frontend = WaveformFrontEnd(sample_rate, channels=options["width"])
    views = WaveformViews(sample_rate, view_settings(options), crop_only=True)
    return CPC(frontend, views, context_dim=options["context_dim"], prediction_steps=options["prediction_steps"])
