"""HuBERT-style masked prediction of cluster targets on the raw waveform (Hsu, Bolte, Tsai, Lakhotia,
Salakhutdinov & Mohamed, "HuBERT: Self-Supervised Speech Representation Learning by Masked Prediction
of Hidden Units", IEEE/ACM TASLP 2021).

Before training, every frame of every clip gets a cluster id (:mod:`contrastkit.modalities.audio.
targets`, k-means fitted once on the training clips with scikit-learn, seeded by ``--seed``):

- iteration 1 (the default): k-means of 13 MFCCs per frame, ``--clusters`` centres (default 50;
  the paper: 100 for 960 h, FSDD has about 80 000 training frames);
- iteration 2: ``--targets-from RUN`` names a finished hubert (or wav2vec2) run; k-means of the
  frames of its Transformer block ``--target-layer`` (default: the middle one; the paper: the 6th
  of 12). The new run starts from fresh weights, as in the paper.

Training is the same in both: a crop starting on a frame (so its frames are the clip's frames and
carry their ids), the raw-waveform front end and a Transformer over its frames
(:class:`~contrastkit.modalities.audio.encoders.FrameTransformer`) with spans of frames replaced
by a mask embedding (``--mask-prob 0.13 --mask-length 5``: 52 % of a 0.4 s crop's 38 frames on
average; wav2vec2.py says why these values), a projection ``A`` of each output frame, and the
catalogue's ``hubert_masked_prediction``: cross-entropy of the cluster id from
``cos(A o_t, e_c) / 0.1`` at the masked frames (``--unmasked-weight w`` adds the unmasked frames'
term, ``(1 - w) L_m + w L_u``; the paper's best, and the default, is w = 0). The embedding is the
mean of the Transformer's outputs over the whole clip's frames, without masking.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.audio.encoders import FrameTransformer, masked_mean
from contrastkit.modalities.audio.masking import span_mask
from contrastkit.modalities.audio.methods.parts import StepDraws
from contrastkit.modalities.audio.sources import AudioClips
from contrastkit.modalities.audio.targets import (
    FrameTargets,
    fit_frame_targets,
    mfcc_frame_features,
    model_frame_features,
)
from contrastkit.modalities.audio.views import crop_at, crop_starts
from contrastkit.nn.distributed import GatheredObjective

LOGIT_TEMPERATURE = 0.1  # the paper's tau


class HuBERT(StepDraws, nn.Module):
    def __init__(self, backbone: FrameTransformer, final_dim: int, clusters: int, crop: int, mask_prob: float,
                 mask_length: int, unmasked_weight: float, targets_from: str | None, target_layer: int | None,
                 seed: int):
        super().__init__()
        self.backbone = backbone
        self.project = nn.Linear(backbone.output_dim, final_dim)  # A
        self.cluster_embeddings = nn.Parameter(torch.randn(clusters, final_dim))  # e_c
        self.sample_rate = backbone.sample_rate
        self.crop, self.mask_prob, self.mask_length = crop, mask_prob, mask_length
        self.clusters, self.targets_from, self.target_layer, self.seed = clusters, targets_from, target_layer, seed
        self.objective = GatheredObjective(objectives.get(
            "hubert_masked_prediction", temperature=LOGIT_TEMPERATURE, unmasked_weight=unmasked_weight))
        self.targets: FrameTargets | None = None

    def prepare_targets(self, clips: AudioClips, train_positions: np.ndarray) -> None:
        """Fit the k-means targets of every frame of ``clips`` on the clips at ``train_positions``."""
        if self.targets_from is None:
            features = mfcc_frame_features(clips, self.backbone.frontend)
        else:
            features = model_frame_features(self.targets_from, clips, self.target_layer)
        self.targets = fit_frame_targets(features, train_positions, self.clusters, self.seed)

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        if self.targets is None:
            raise ConfigError("HuBERT needs its frame targets before training: call method.prepare_targets(clips, "
                              "training positions) (contrastkit fit and train_audio do).")
        waves = batch["wave"]
        self.targets = self.targets.to(waves.device)
        draws = self.draws(len(waves), waves.device)
        hop = self.backbone.frontend.hop
        starts = crop_starts(batch["length"], self.crop, draws, step=hop)
        latents, valid = self.backbone.latents(*crop_at(waves, batch["length"], self.crop, starts))
        masked = span_mask(valid, latents.shape[1], self.mask_prob, self.mask_length, draws)
        targets = self.targets.of_crops(batch["index"], starts // hop, valid, latents.shape[1])
        predictions = self.project(self.backbone(latents, valid, masked))
        loss = self.objective(predictions, None, cluster_embeddings=self.cluster_embeddings, targets=targets,
                              masked=masked)
        return loss, {}

    def frame_features(self, waves: Tensor, lengths: Tensor, layer: int | None = None) -> tuple[Tensor, Tensor]:
        """The Transformer's frames (block ``layer``, or the output) of whole clips, and their valid counts."""
        latents, valid = self.backbone.latents(waves, lengths)
        return self.backbone(latents, valid, layer=layer), valid

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        return masked_mean(*self.frame_features(batch["wave"], batch["length"]))


def build(options: dict, sample_rate: int) -> HuBERT:
    return HuBERT(FrameTransformer(sample_rate, options["width"], options["depth"]), options["projection_dim"],
                  options["clusters"], round(options["crop_seconds"] * sample_rate), options["mask_prob"],
                  options["mask_length"], options["unmasked_weight"], options["targets_from"],
                  options["target_layer"], options["seed"])
