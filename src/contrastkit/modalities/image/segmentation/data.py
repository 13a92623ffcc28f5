"""Image + mask pairs: folders paired by file name, resized once to a square side, in memory.

Layout: ``images/<stem>.<ext>`` and ``masks/<stem>.<ext>`` (any of PNG, JPEG, BMP, TIFF; the stems
pair them, the extensions may differ). A mask is read as one channel of class indices:

- a lossy mask (JPEG) is binary: gray value >= 128 is class 1 (foreground), the rest 0. JPEG smears a
  0/255 mask into 0..10 and 245..255 (Kvasir-SEG's PROVENANCE: never compare to 255 exactly); it is
  resized bilinearly as gray values and thresholded after, so the boundary follows the drawn one;
- a lossless mask (PNG, ...) holds class indices; one whose values are only 0 and 255 is binary
  (255 -> 1). It is resized with nearest neighbour, which never invents a class.

Images are converted to RGB and resized with PIL's bilinear filter (antialiased when shrinking), as the
image folders of :mod:`contrastkit.modalities.image.sources` are, so a pretraining run on the images
folder and this reader see the same pixels.

Kvasir-SEG (``$CONTRASTKIT_DATA/segmentation/kvasir-seg``): ``{train,val}/{images,masks}/<id>.jpg``,
380 train / 120 validation pairs in the order of ``train.txt`` / ``val.txt``. Choices are made on
:func:`development_carve`'s 60 images of train; the validation images are scored once, after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contrastkit.core.errors import DataError
from contrastkit.core.paths import data_root

MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
FOREGROUND_THRESHOLD = 128  # gray level from which a lossy binary mask is foreground
KVASIR = "segmentation/kvasir-seg"
KVASIR_SIZES = {"train": 380, "val": 120}
DEV_CARVE_SIZE = 60  # train images kept out of fine-tuning to make choices on
DEV_CARVE_SEED = 23  # fixed: the carve is the same for every run and seed


@dataclass(frozen=True)
class SegmentationSet:
    """``images`` uint8 (N, 3, S, S), ``masks`` uint8 (N, S, S) of class indices, the file stems
    ``names`` and ``num_classes`` (the largest index + 1, at least 2)."""

    images: torch.Tensor
    masks: torch.Tensor
    names: tuple[str, ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, rows) -> SegmentationSet:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return SegmentationSet(self.images[rows], self.masks[rows], tuple(self.names[int(r)] for r in rows),
                               self.num_classes)


def read_mask(path: Path, size: int) -> np.ndarray:
    """A mask file as (size, size) uint8 class indices (module docstring)."""
    with Image.open(path) as opened:
        if path.suffix.lower() in LOSSY_EXTENSIONS:
            gray = opened.convert("L").resize((size, size), Image.BILINEAR)
            return (np.asarray(gray) >= FOREGROUND_THRESHOLD).astype(np.uint8)
        if opened.mode not in ("L", "P", "1", "I", "I;16"):
            opened = opened.convert("L")
        values = np.asarray(opened.resize((size, size), Image.NEAREST))
    if set(np.unique(values).tolist()) <= {0, 255}:
        return (values == 255).astype(np.uint8)
    if values.max() > 255 or values.min() < 0:
        raise DataError(f"Mask '{path}' holds values from {values.min()} to {values.max()}; class indices must be "
                        f"0..255 (or a binary 0/255 mask).")
    return values.astype(np.uint8)


def read_image(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as opened:
        return np.asarray(opened.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"Folder '{folder}' does not exist; a segmentation set holds images/ and masks/ folders "
                        f"whose files are paired by name.")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in MASK_EXTENSIONS:
            continue
        if path.stem in files:
            raise DataError(f"Two files in '{folder}' share the name '{path.stem}' ({files[path.stem].name}, "
                            f"{path.name}); keep one, so that image and mask pair by name.")
        files[path.stem] = path
    return files


def read_segmentation_folder(images: str | Path, masks: str | Path, image_size: int,
                             names: list[str] | None = None) -> SegmentationSet:
    """Every image of the folder ``images`` with the mask of the same stem in ``masks``, resized to
    ``image_size`` (square). ``names``: the stems to read, in this order (default: all, sorted).
    An image without a mask, or a mask without an image, is a DataError naming it."""
    image_files, mask_files = _files_by_stem(Path(images)), _files_by_stem(Path(masks))
    if names is None:
        unpaired = sorted(set(image_files) ^ set(mask_files))
        if unpaired:
            where = "images" if unpaired[0] in image_files else "masks"
            raise DataError(f"'{unpaired[0]}' in {where} folder has no partner in the other folder "
                            f"({len(unpaired)} unpaired in all); every image needs a mask of the same name.")
        names = sorted(image_files)
    missing = [n for n in names if n not in image_files or n not in mask_files]
    if missing:
        raise DataError(f"No image and mask pair named '{missing[0]}' under '{images}' and '{masks}' "
                        f"({len(missing)} of {len(names)} names missing).")
    if not names:
        raise DataError(f"No images in '{images}'.")
    image_array = np.stack([read_image(image_files[n], image_size) for n in names])
    mask_array = np.stack([read_mask(mask_files[n], image_size) for n in names])
    return SegmentationSet(torch.from_numpy(image_array), torch.from_numpy(mask_array), tuple(names),
                           max(2, int(mask_array.max()) + 1))


def kvasir_root() -> Path:
    return data_root() / KVASIR


def read_kvasir(split: str, image_size: int = 128, root: str | Path | None = None) -> SegmentationSet:
    """Kvasir-SEG's ``train`` (380) or ``val`` (120) pairs, in the order of its id list."""
    if split not in KVASIR_SIZES:
        raise DataError(f"Kvasir-SEG has the splits {', '.join(KVASIR_SIZES)}, not '{split}'.")
    folder = Path(root) if root is not None else kvasir_root()
    ids = folder / f"{split}.txt"
    if not ids.is_file():
        raise DataError(f"'{ids}' does not exist: Kvasir-SEG is expected under $CONTRASTKIT_DATA/{KVASIR} "
                        f"(train.txt, val.txt, train/ and val/ with images/ and masks/).")
    names = [line.strip() for line in ids.read_text().splitlines() if line.strip()]
    return read_segmentation_folder(folder / split / "images", folder / split / "masks", image_size, names)


def development_carve(num_train: int, size: int = DEV_CARVE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(rows left for fine-tuning, the ``size`` development rows) of a training set of ``num_train``:
    a fixed draw (seed :data:`DEV_CARVE_SEED`), the same for every method and seed."""
    if not 0 < size < num_train:
        raise DataError(f"A development carve of {size} images needs more than {size} training images; "
                        f"there are {num_train}.")
    order = np.random.default_rng(DEV_CARVE_SEED).permutation(num_train)
    return np.sort(order[size:]), np.sort(order[:size])


def label_budget(available: np.ndarray, budget: int, seed: int, num_train: int) -> np.ndarray:
    """The ``budget`` rows (of ``available``, rows of a training set of ``num_train``) whose masks are
    used, fixed per ``seed``: the first available rows of a seeded permutation of all ``num_train``. Every
    method of a comparison gets the same rows for the same seed; a larger budget holds every row of a
    smaller one, and the development carve only removes its own rows from the order."""
    available = np.asarray(available)
    if budget < 1:
        raise DataError(f"--masks must be at least 1, got {budget}.")
    if budget > len(available):
        raise DataError(f"--masks {budget} is more than the {len(available)} training images that have masks "
                        f"here; give at most {len(available)}.")
    order = np.random.default_rng(seed).permutation(num_train)
    return order[np.isin(order, available)][:budget]
