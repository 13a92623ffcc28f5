"""HuBERT's frame targets: k-means cluster ids of every frame of every clip, fitted once before training.

Hsu et al., "HuBERT", 2021, Sec. II-B and IV-C: the first iteration clusters MFCC frames, the next
ones cluster the frames of a layer of the previous iteration's model; the cluster ids are computed
once, offline, for whole utterances, and training reads them for its crops.

- :func:`mfcc_frame_features`: 13 MFCCs of each frame of the raw-waveform front end (the window
  covers exactly that frame's samples, :meth:`~contrastkit.modalities.audio.frontends.MFCC.aligned_with`;
  no ``top_db`` floor and no deltas, so a frame's MFCCs depend on its own samples only and a crop's
  frames have the whole clip's targets). The paper adds deltas (39 numbers) at 16 kHz.
- :func:`model_frame_features`: the frames of block ``layer`` of a trained run's Transformer
  (``contrastkit fit --method hubert --targets-from RUN``).
- :func:`fit_frame_targets`: each feature standardised with the training frames' mean and standard
  deviation (MFCC's c0 alone would otherwise decide the clusters), then scikit-learn's ``KMeans``
  (k-means++, seeded) fitted on the training clips' frames; every clip's frames get the id of their
  nearest centre.
- :meth:`FrameTargets.of_crops`: the ids of the frames of a batch of crops that start on a frame
  (:func:`~contrastkit.modalities.audio.views.crop_starts` with ``step = hop``), -1 after a crop's
  valid frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.audio.frontends import MFCC, WaveformFrontEnd
from contrastkit.modalities.audio.sources import AudioClips

N_MFCC = 13


@dataclass
class FrameTargets:
    """``ids[offsets[i]:offsets[i + 1]]``: the cluster ids of clip ``i``'s frames."""

    ids: Tensor
    offsets: Tensor
    clusters: int

    def to(self, device: torch.device | str) -> FrameTargets:
        return FrameTargets(self.ids.to(device), self.offsets.to(device), self.clusters)

    def of_crops(self, clip_index: Tensor, start_frames: Tensor, valid_frames: Tensor, frames: int) -> Tensor:
        """``(B, frames)`` ids of frames ``start_frames + t`` of the clips ``clip_index``; -1 from a
        row's ``valid_frames`` on."""
        t = torch.arange(frames, device=clip_index.device)[None, :]
        inside = t < valid_frames[:, None]
        position = (self.offsets[clip_index] + start_frames)[:, None] + t
        return torch.where(inside, self.ids[position.clamp(0, len(self.ids) - 1)], -1)


def clip_frame_features(clips: AudioClips, features_of: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                        batch_size: int = 64) -> list[np.ndarray]:
    """``features_of(waves, lengths) -> (features (B, T, D), valid frames (B,))`` of every clip,
    whole, batched by length; one ``(frames_i, D)`` float32 array per clip, in clip order."""
    order = np.argsort(clips.lengths, kind="stable")
    out: list[np.ndarray] = [None] * len(clips)  # type: ignore[list-item]
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            waves, lengths = clips.batch(rows)
            features, valid = features_of(torch.from_numpy(waves), torch.from_numpy(lengths))
            for row, values, count in zip(rows, features.float().numpy(), valid.tolist(), strict=True):
                out[row] = values[:count]
    return out


def mfcc_frame_features(clips: AudioClips, frontend: WaveformFrontEnd) -> list[np.ndarray]:
    """13 MFCCs per front-end frame of every clip (module docstring)."""
    mfcc = MFCC.aligned_with(frontend, clips.sample_rate, N_MFCC)
    return clip_frame_features(clips, lambda waves, lengths: (mfcc(waves).transpose(1, 2), frontend.frames(lengths)))


def model_frame_features(run: str | os.PathLike, clips: AudioClips, layer: int | None) -> list[np.ndarray]:
    """The frames of Transformer block ``layer`` (None: the middle one) of the audio run ``run``."""
    from contrastkit.modalities.audio.training import load_audio_run

    method = load_audio_run(run)
    if not hasattr(method, "frame_features"):
        raise ConfigError(f"--targets-from '{run}' is not a hubert or wav2vec2 run (its method has no Transformer "
                          f"frames to cluster); train one first.")
    if method.sample_rate != clips.sample_rate:
        raise ConfigError(f"--targets-from '{run}' was trained at {method.sample_rate} Hz and these clips are at "
                          f"{clips.sample_rate} Hz; pass --sample-rate {method.sample_rate}.")
    layer = layer or max(1, method.backbone.depth // 2)
    if not 1 <= layer <= method.backbone.depth:
        raise ConfigError(f"--target-layer {layer}: the run's Transformer has blocks 1..{method.backbone.depth}.")
    return clip_frame_features(clips, lambda waves, lengths: method.frame_features(waves, lengths, layer))


def fit_frame_targets(features: list[np.ndarray], train_positions: np.ndarray, clusters: int,
                      seed: int) -> FrameTargets:
    """k-means of the standardised training frames; the nearest centre of every frame (module docstring)."""
    from sklearn.cluster import KMeans

    training = np.concatenate([features[i] for i in train_positions]).astype(np.float64)
    if len(training) < clusters:
        raise ConfigError(f"--clusters {clusters} is more than the {len(training)} training frames; lower it.")
    mean, std = training.mean(axis=0), training.std(axis=0) + 1e-8
    kmeans = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit((training - mean) / std)
    every = np.concatenate(features).astype(np.float64)
    ids = kmeans.predict((every - mean) / std)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in features])])
    return FrameTargets(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64)), clusters)
