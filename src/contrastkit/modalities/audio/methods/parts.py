"""What the audio methods share: the step's random draws, the spectrogram encoder and its views."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.modalities.audio.encoders import SpectrogramEncoder, masked_mean
from contrastkit.modalities.audio.frontends import LogMelSpectrogram
from contrastkit.modalities.audio.views import RowDraws, SpectrogramViews, ViewSettings, WaveformViews


class StepDraws:
    """Where a method's random views come from in a step.

    The engine's :class:`~contrastkit.engine.processes.GlobalDrawsModule` calls
    :meth:`begin_step` with a seed that is the same on every process; :meth:`draws` then gives a
    generator seeded with it that draws for the global batch (``world_size`` x this process's
    rows) and keeps this process's rows. Called outside the engine (tests, a plain loop), the seed
    comes from torch's global generator."""

    step_seed: int | None = None
    rank: int = 0
    world_size: int = 1

    def begin_step(self, seed: int, rank: int, world_size: int) -> None:
        self.step_seed, self.rank, self.world_size = seed, rank, world_size

    def draws(self, rows: int, device: torch.device) -> RowDraws:
        seed = self.step_seed if self.step_seed is not None else int(torch.randint(2**62, ()))
        generator = torch.Generator(device).manual_seed(seed)
        return RowDraws(generator, rows, rows * self.world_size, rows * self.rank)


def view_settings(options: dict) -> ViewSettings:
    return ViewSettings(crop_seconds=options["crop_seconds"])


def spectrogram_parts(options: dict, sample_rate: int) -> tuple[LogMelSpectrogram, SpectrogramViews, SpectrogramEncoder]:
    """The log-mel front end, the training views around it and the frame encoder."""
    frontend = LogMelSpectrogram(sample_rate, n_mels=options["n_mels"])
    views = SpectrogramViews(WaveformViews(sample_rate, view_settings(options)), frontend)
    return frontend, views, SpectrogramEncoder(options["n_mels"], options["width"], options["depth"])


def embed_spectrogram(frontend: nn.Module, encoder: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The mean of the frame encodings of each whole clip (no view): the clip's embedding."""
    frame_lengths = frontend.frames(batch["length"])
    return masked_mean(encoder(frontend(batch["wave"]), frame_lengths), frame_lengths)
