"""The time-series modality and its method, registered without importing it."""

from __future__ import annotations

from contrastkit.core.registry import METHODS
from contrastkit.modalities import Modality, folder_holds, register_modality, suffix_of


def recognises(data: str) -> bool:
    if data.startswith("aeon:") or suffix_of(data) == ".ts" or folder_holds(data, ("_train.ts",), depth=1):
        return True
    return False


register_modality(Modality(
    name="timeseries", summary="time series: UCR/UEA (.ts, aeon's sets), .npy/.npz",
    cli="contrastkit.modalities.timeseries.cli", recognises=recognises,
    not_applicable={"precision": "TS2Vec trains in float32",
                    "max-epochs": "a TS2Vec run is bounded by --max-steps (default: the official rule)",
                    "max-minutes": "a TS2Vec run is bounded by --max-steps (default: the official rule)"}))

METHODS.add("timeseries", "ts2vec", "contrastkit.modalities.timeseries.ts2vec:TS2Vec",
            "TS2Vec: hierarchical contrast over time and instances (Yue et al. 2022)")
