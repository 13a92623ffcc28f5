"""``ImageSource``: a whole decoded image set held once in memory as one uint8 tensor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources.pixels import histogram_mean_std, pixel_histogram


class ImageSource(Dataset):
    """A decoded image set: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,) or None.

    ``source[i]`` is ``{"index": i, "image": images[i], "label": int}`` with label -1 when the
    set is unlabeled. The image is a view into ``images`` (no copy); views (augmentations) run
    later on whole batches on the training device, so nothing is transformed here.

    Args:
        images: uint8 tensor (N, C, H, W); stored contiguous.
        labels: integer class ids >= 0, shape (N,), or None for an unlabeled set.
        class_names: name of class k at position k, or None when the data does not say.
        name: what the set is called in logs and reports ("cifar10-test", a folder name).
        root: the file or folder it was read from, or None (built-in or in-memory data).
        source_indices: for a subset, the position of each image in the set it was taken
            from (see :meth:`subset`); ``arange(N)`` for a set read from disk.

    ``skipped`` lists the images a reader left out as unreadable ("name: reason"; only with
    ``skip_unreadable``), empty otherwise.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        name: str = "images",
        root: Path | None = None,
        source_indices: torch.Tensor | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(
                f"ImageSource '{name}' needs a uint8 tensor (N, C, H, W); got {images.dtype} "
                f"of shape {tuple(images.shape)}."
            )
        n = images.shape[0]
        if labels is not None:
            labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
            if labels.shape[0] != n:
                raise DataError(
                    f"ImageSource '{name}': {labels.shape[0]} labels for {n} images; "
                    f"every image needs exactly one label."
                )
            if n and int(labels.min()) < 0:
                raise DataError(
                    f"ImageSource '{name}': labels must be class ids >= 0, "
                    f"found {int(labels.min())}."
                )
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if labels is not None and n and int(labels.max()) >= len(class_names):
                raise DataError(
                    f"ImageSource '{name}': label {int(labels.max())} but only "
                    f"{len(class_names)} class names."
                )
        self.images = images.contiguous()
        self.labels = labels
        self.class_names: list[str] | None = class_names
        self.name = name
        self.root = Path(root) if root is not None else None
        self.source_indices = (
            torch.arange(n, dtype=torch.int64) if source_indices is None else source_indices
        )
        # Images left out as unreadable ('name: reason'; readers with skip_unreadable set it).
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict:
        label = int(self.labels[i]) if self.labels is not None else -1
        return {"index": i, "image": self.images[i], "label": label}

    def __repr__(self) -> str:
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        labelled = "labelled" if self.has_labels else "unlabeled"
        return (
            f"ImageSource('{self.name}', {len(self)} images, {self.channels}x"
            f"{self.image_size[0]}x{self.image_size[1]}, {labelled}{classes})"
        )

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return (self.images.shape[2], self.images.shape[3])

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def num_classes(self) -> int | None:
        """Number of classes: len(class_names) if known, else max label + 1; None if unlabeled."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is None:
            return None
        return int(self.labels.max()) + 1 if len(self) else 0

    def channel_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and (population) standard deviation of the pixels in [0, 1] units.

        Pixels are uint8, so the sums are taken exactly from the histogram of each channel
        (:func:`~contrastkit.modalities.image.sources.pixels.histogram_mean_std` gives the formula).
        """
        if len(self) == 0:
            raise DataError(f"ImageSource '{self.name}' is empty; it has no mean or std.")
        return histogram_mean_std(pixel_histogram(self.images), f"The images of '{self.name}'")

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageSource:
        """A new source holding copies of the images at ``indices`` (in that order).

        In the subset, ``index`` is the position *within the subset* (0..len-1), so memory
        banks and per-sample state sized to the subset work unchanged. The position of each
        image in the original set read from disk is kept in ``source_indices``
        (composed through nested subsets). ``class_names`` are kept whole, so label ids mean
        the same classes in every subset.
        """
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise DataError(
                f"subset of '{self.name}': indices span {int(idx.min())}..{int(idx.max())} "
                f"but the set has {n} images."
            )
        idx = idx % n if n else idx
        return ImageSource(
            self.images[idx],
            None if self.labels is None else self.labels[idx],
            self.class_names,
            self.name,
            self.root,
            self.source_indices[idx],
        )
