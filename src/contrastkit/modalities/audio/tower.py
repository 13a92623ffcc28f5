"""Audio as one side of a two-tower model (:mod:`contrastkit.modalities.pairs`).

:class:`ClipInput` is the tower input of clips: a list of mono waveforms (1-D arrays at one rate,
any lengths) collates to the audio methods' batch ``{"wave": (B, longest), "length": (B,)}``,
zero-padded at the end, which every audio method's ``embed`` takes. The pooling counts only a clip's
valid frames (from ``length``), but the convolutions next to its end see the padding, so a clip's
embedding in a padded batch differs slightly from its embedding alone: to embed clips for retrieval,
give ``encode_side`` ``batch_size=1`` (or batches of equal lengths). The tower's encoder is a trained
(or freshly built) audio method wrapped by :class:`~contrastkit.modalities.pairs.towers.EmbeddingTower`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.modalities.audio.sources import pad_clips


@dataclass
class ClipInput:
    """Waveforms -> ``{"wave", "length"}``; no augmentation (the batch itself is its own view)."""

    def collate(self, samples: Sequence[Any]) -> dict[str, Tensor]:
        clips = [np.asarray(s, dtype=np.float32) for s in samples]
        bad = next((i for i, c in enumerate(clips) if c.ndim != 1 or c.size == 0), None)
        if bad is not None:
            raise DataError(f"An audio tower takes mono waveforms (non-empty 1-D arrays); item {bad} of the batch has "
                            f"shape {clips[bad].shape}. Mix down to mono when reading (open_audio_folder does).")
        waves, lengths = pad_clips(clips)
        return {"wave": torch.from_numpy(waves), "length": torch.from_numpy(lengths)}

    def augment(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
        return batch
