"""The image modality and its methods, registered without importing them."""

from __future__ import annotations

from pathlib import Path

from contrastkit.core.registry import METHODS
from contrastkit.modalities import Modality, folder_holds, register_modality, suffix_of

IMAGE_FILES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
BUILTIN = ("digits", "mnist-test", "cifar10-test")  # contrastkit.modalities.image.sources.BUILTIN_SOURCES


def recognises(data: str) -> bool:
    if data in BUILTIN or data.startswith("shards:"):
        return True
    if suffix_of(data) in (".npz", *IMAGE_FILES) or "-ubyte" in Path(data).name:
        return True
    return folder_holds(data, IMAGE_FILES) or folder_holds(data, ("-ubyte", "-ubyte.gz"), depth=1)


register_modality(Modality(
    name="image", summary="images: folders, IDX, .npz, shards", cli="contrastkit.modalities.image.cli",
    recognises=recognises))

# Non-contrastive methods have no negatives: no temperature, no objective of the catalogue.
NO_NEGATIVES = ("objective", "temperature")
for name, summary, excluded in (
    ("simclr", "SimCLR: in-batch contrast of two views (Chen et al. 2020)", ()),
    ("moco", "MoCo v2: a queue of momentum keys (He et al. 2020; Chen et al. 2020)", ()),
    ("byol", "BYOL: predict a momentum target (Grill et al. 2020)", NO_NEGATIVES),
    ("simsiam", "SimSiam: stop-gradient siamese prediction (Chen & He 2021)", NO_NEGATIVES),
    ("directpred", "DirectPred: a predictor set from the correlation's eigenbasis (Tian et al. 2021)", NO_NEGATIVES),
    ("jepa", "I-JEPA: predict masked patch embeddings (Assran et al. 2023)", NO_NEGATIVES),
    ("barlowtwins", "Barlow Twins: two views' cross-correlation -> identity (Zbontar et al. 2021)", NO_NEGATIVES),
    ("vicreg", "VICReg: variance-invariance-covariance regularisation (Bardes et al. 2022)", NO_NEGATIVES),
    ("vicregl", "VICRegL: VICReg on global embeddings and matched local features (Bardes et al. 2022)",
     NO_NEGATIVES),
    ("tico", "TiCo: invariance and contrast with a running covariance (Zhu et al. 2022)", NO_NEGATIVES),
    ("mmcr", "MMCR: maximise the nuclear norm of k-view centroids (Yerxa et al. 2023)", NO_NEGATIVES),
    ("nnclr", "NNCLR: nearest neighbours from a support set as positives (Dwibedi et al. 2021)", ()),
):
    METHODS.add("image", name, f"contrastkit.modalities.image.methods.{name}:build", summary, excluded)
