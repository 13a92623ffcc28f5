"""The tabular modality and its methods, registered without importing them."""

from __future__ import annotations

from contrastkit.core.registry import METHODS
from contrastkit.modalities import Modality, register_modality, suffix_of

BUILTIN = ("nsl-kdd",)


def recognises(data: str) -> bool:
    return data in BUILTIN or suffix_of(data) in (".csv", ".parquet", ".arff")


register_modality(Modality(
    name="tabular", summary="tables: CSV, parquet, NSL-KDD", cli="contrastkit.modalities.tabular.cli",
    recognises=recognises,
    not_applicable={"precision": "tabular estimators train in float32",
                    "max-minutes": "a tabular run is bounded by --max-epochs or --max-steps"}))

for name, summary, excluded in (
    ("scarf", "SCARF: contrast of randomly corrupted rows (Bahri et al. 2022)", ("benign-label",)),
    ("clan", "CLAN: benign rows as positives, corrupted ones as negatives (Wilkie et al.)",
     ("output-dims",)),
):
    METHODS.add("tabular", name, f"contrastkit.modalities.tabular.estimators:{name.upper()}", summary, excluded)
