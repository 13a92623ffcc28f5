"""The pairs modality (two towers over paired data) and its methods, registered without importing them.

A pairs method is the two-tower model with one cross-modal objective; ``--method clip`` is what
``contrastkit pairs`` trains by default (its ``--objective`` is the same option)."""

from __future__ import annotations

from contrastkit.core.registry import METHODS
from contrastkit.modalities import Modality, register_modality, suffix_of

BUILTIN = ("code-docstring",)


def recognises(data: str) -> bool:
    return data in BUILTIN or suffix_of(data) in (".csv", ".tsv", ".jsonl", ".jsonl.gz")


register_modality(Modality(
    name="pairs", summary="paired data (code-docstring, JSONL/CSV/TSV of pairs)", cli="contrastkit.modalities.pairs.cli",
    recognises=recognises,
    not_applicable={"precision": "pairs runs train in float32",
                    "max-minutes": "a pairs run is bounded by --max-steps or --max-epochs"}))

for name, summary, excluded in (
    ("clip", "CLIP: symmetric InfoNCE across the towers, learned temperature (Radford et al. 2021)",
     ("concentration",)),
    ("siglip", "SigLIP: a pairwise sigmoid loss (Zhai et al. 2023)", ("concentration",)),
    ("hcl", "hard-negative weighted CLIP (Robinson et al. 2021)", ()),
):
    METHODS.add("pairs", name, "contrastkit.modalities.pairs.two_tower:build_two_tower", summary, excluded)
