"""The graph modality and its methods, registered without importing them (torch-geometric is
imported only when a method is built)."""

from __future__ import annotations

from contrastkit.core.registry import METHODS
from contrastkit.modalities import Modality, folder_holds, register_modality

BUILTIN = ("cora", "citeseer")  # contrastkit.modalities.graph.sources.PLANETOID_NAMES


def recognises(data: str) -> bool:
    return data.lower() in BUILTIN or folder_holds(data, ("edges.csv",), depth=1)


register_modality(Modality(
    name="graph", summary="graphs: Planetoid (cora, citeseer), edge list + features", cli="contrastkit.modalities.graph.cli",
    recognises=recognises,
    not_applicable={"precision": "graph methods train in float32",
                    "max-minutes": "a graph run is bounded by --max-epochs or --max-steps"}))

# Options of one method only; the others' are errors for it.
GRAPHMAE = ("mask-rate", "replace-rate", "alpha", "gat-init")
SCGC = ("order", "no-influence", "clusters", "embedding-dim", "warmup-epochs", "pretrain-epochs",
        "reconstruction-weight")
GRAPHCL = ("objective",)
GRAPHCLIP = ("text-embeddings",)
ALL = (*GRAPHMAE, *SCGC, *GRAPHCL, *GRAPHCLIP, "temperature", "encoder", "hidden")
for name, summary, own in (
    ("graphmae", "GraphMAE: masked feature reconstruction (Hou et al. 2022)", (*GRAPHMAE, "encoder", "hidden")),
    ("scgc", "SCGC: neighbour contrast + clustering (Kulatilleke et al.)", (*SCGC, "temperature", "hidden")),
    ("graphcl", "GraphCL / GRACE: contrast of two augmented graphs (You et al. 2020)",
     (*GRAPHCL, "temperature", "encoder", "hidden")),
    ("graphclip", "GraphCLIP: nodes aligned with their texts' embeddings",
     (*GRAPHCLIP, "encoder")),
):
    METHODS.add("graph", name, f"contrastkit.modalities.graph.methods:build_{name}", summary,
                [option for option in ALL if option not in own])
