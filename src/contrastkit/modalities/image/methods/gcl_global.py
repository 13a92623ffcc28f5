"""The global stage of Chaitanya, Erdil, Karani & Konukoglu, "Contrastive learning of global and local
features for medical image segmentation with limited annotations", NeurIPS 2020 (Sec. 2.1).

The encoder ``e`` and a projection head ``g_1`` are trained with an image-level contrastive loss: two
augmented views of an image are a positive pair, the other images' views of the batch are negatives
(NT-Xent with cosine similarity, temperature 0.1, the paper's value). The paper has three ways to pick
positives: G^R (random: only an image's own two views), and G^D / G^D- (partitions of a 3-D volume:
slices from corresponding partitions of different volumes are positives too). Those need volumes and
their slice positions; on 2-D images (Kvasir-SEG's colonoscopy frames) only the random strategy G^R
applies, and that is what this method is -- SimCLR's in-batch contrast of two views, with the paper's
temperature. Views: SimCLR's crops, flips, colour jitter and blur (the paper: crop, flip, rotation,
brightness/contrast; rotation is not built).

The encoder trained here is the start of the local stage (``gcl-local --init RUN``) and of
fine-tuning (``contrastkit segment --run RUN``). Options are SimCLR's.
"""

from __future__ import annotations

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.methods.simclr import SimCLR, simclr_model

PAPER_TEMPERATURE = 0.1  # Chaitanya et al. 2020, Sec. 3 (tau = 0.1 for the global and local losses)


def build(config, data: DataInfo) -> SimCLR:
    if config.objective not in (None, "infonce", "ntxent"):
        raise ConfigError(f"gcl-global is the paper's NT-Xent (G^R); --objective {config.objective} would make it "
                          f"another method: use --method simclr --objective {config.objective}.")
    return simclr_model(config, data, "infonce", PAPER_TEMPERATURE)
