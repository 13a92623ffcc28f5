"""The audio modality and its methods, registered without importing them."""

from __future__ import annotations

from pathlib import Path

from contrastkit.core.registry import METHODS
from contrastkit.modalities import Modality, folder_holds, register_modality

AUDIO_FILES = (".wav", ".flac", ".ogg")  # contrastkit.modalities.audio.sources.AUDIO_FILES
BUILTIN = ("fsdd",)


def recognises(data: str) -> bool:
    return data in BUILTIN or Path(data).name == "fsdd" or folder_holds(data, AUDIO_FILES)


register_modality(Modality(
    name="audio", summary="audio: folders of WAV/FLAC/OGG, the Free Spoken Digit Dataset",
    cli="contrastkit.modalities.audio.cli", recognises=recognises))

# The options of the audio command line that only some methods use; giving one to another method is an error.
OWN_OPTIONS = {
    "simclr": ("n-mels", "depth", "projection-dim", "temperature"),
    "byol": ("n-mels", "depth", "projection-dim", "momentum"),
    "cpc": ("context-dim", "prediction-steps"),
    "wav2vec2": ("depth", "projection-dim", "mask-prob", "mask-length", "num-distractors", "codebook-groups",
                 "codebook-entries", "diversity-weight"),
    "hubert": ("depth", "projection-dim", "mask-prob", "mask-length", "clusters", "targets-from", "target-layer",
               "unmasked-weight"),
    "mae": ("n-mels", "depth", "mask-ratio", "patch-mels", "patch-frames"),
}
METHOD_SPECIFIC = sorted({option for own in OWN_OPTIONS.values() for option in own})
for name, summary in (
    ("simclr", "SimCLR on log-mel views (Chen et al. 2020; Saeed et al. 2021)"),
    ("byol", "BYOL on log-mel views (Grill et al. 2020; Niizumi et al. 2021)"),
    ("cpc", "CPC: InfoNCE over future waveform latents (van den Oord et al. 2018)"),
    ("wav2vec2", "wav2vec 2.0: masked spans contrasted with quantised latents (Baevski et al. 2020)"),
    ("hubert", "HuBERT: masked prediction of k-means frame targets (Hsu et al. 2021)"),
    ("mae", "MAE on log-mel patches (He et al. 2022; Huang et al. 2022, Audio-MAE)"),
):
    METHODS.add("audio", name, f"contrastkit.modalities.audio.methods.{name}:build", summary,
                [option for option in METHOD_SPECIFIC if option not in OWN_OPTIONS[name]])
