"""The image modality and its methods, registered without importing them."""

from __future__ import annotations

import csv
from pathlib import Path

from contrastkit.core.registry import METHODS
from contrastkit.modalities import Modality, folder_holds, register_modality, suffix_of
from contrastkit.modalities.image.formats import (
    ARRAY_FILES,
    HF_DATASET_FILES,
    IMAGE_FILES,
    PATH_COLUMNS,
    TABLE_EXTENSIONS,
    TAR_SUFFIXES,
    TIFF_EXTENSIONS,
)

BUILTIN = ("digits", "mnist-test", "cifar10-test")  # contrastkit.modalities.image.sources.BUILTIN_SOURCES


def recognises(data: str) -> bool:
    if data in BUILTIN or data.startswith("shards:"):
        return True
    if suffix_of(data) in (*ARRAY_FILES, *IMAGE_FILES, *TIFF_EXTENSIONS) or "-ubyte" in Path(data).name:
        return True
    if data.lower().endswith(TAR_SUFFIXES):  # a shard, a glob or a brace list of shards
        return True
    if suffix_of(data) in TABLE_EXTENSIONS:
        return lists_image_paths(Path(data))
    folder = Path(data)
    if folder.is_dir() and any((folder / name).is_file() for name in HF_DATASET_FILES):
        return True
    return (folder_holds(data, (*IMAGE_FILES, *TIFF_EXTENSIONS, *TAR_SUFFIXES))
            or folder_holds(data, ("-ubyte", "-ubyte.gz"), depth=1))


def lists_image_paths(table: Path) -> bool:
    """Whether a CSV/TSV/Parquet file has a column of image paths (one of PATH_COLUMNS, any case)."""
    try:
        if table.suffix.lower() == ".parquet":
            import pyarrow.parquet

            columns = pyarrow.parquet.read_schema(table).names
        else:
            with open(table, newline="") as handle:
                columns = next(csv.reader(handle, delimiter="\t" if table.suffix.lower() == ".tsv" else ","), [])
    except (OSError, ValueError, StopIteration):
        return False
    return any(column.strip().lower() in PATH_COLUMNS for column in columns)


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
    ("swav", "SwAV: swapped prediction of equal-partition prototype codes, multi-crop (Caron et al. 2020)",
     ("objective",)),
    ("dino", "DINO: self-distillation from a centred, sharpened momentum teacher, multi-crop (Caron et al. 2021)",
     NO_NEGATIVES),
    ("obow", "OBoW: predict a momentum teacher's bag of visual words over an online vocabulary (Gidaris et al. 2021)",
     NO_NEGATIVES),
    ("msn", "MSN: masked anchor patches predict an EMA target's sharpened prototype assignment (Assran et al. 2022)",
     NO_NEGATIVES),
    ("mae", "MAE: a ViT on visible patches, a light decoder reconstructs the masked pixels (He et al. 2022)",
     NO_NEGATIVES),
    ("spark", "SparK: reconstruct masked patches from a sparse (masked) ResNet, hierarchical decoder (Tian et al. 2023)",
     NO_NEGATIVES),
):
    METHODS.add("image", name, f"contrastkit.modalities.image.methods.{name}:build", summary, excluded)

# Chaitanya et al. 2020's two stages (dense pretraining for segmentation; `contrastkit segment` fine-tunes).
for name, module, summary in (
    ("gcl-global", "gcl_global", "global stage of global+local contrast: NT-Xent of two views, random positives "
                                 "(Chaitanya et al. 2020)"),
    ("gcl-local", "gcl_local", "local stage: per-position contrast of two views' decoder maps, encoder frozen "
                               "(Chaitanya et al. 2020; --init the global run)"),
):
    METHODS.add("image", name, f"contrastkit.modalities.image.methods.{module}:build", summary, ("objective",))
