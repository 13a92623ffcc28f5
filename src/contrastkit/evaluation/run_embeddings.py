"""A run folder's embeddings as the evaluations after training read them.

``contrastkit fit`` writes ``embeddings.npy`` (every embedded sample, the training part first),
``labels.npy`` (where the data has labels), ``split.json`` (image, audio and tabular runs: which rows
of ``embeddings.npy`` are the training part and which are held out;
:func:`contrastkit.engine.run_folder.write_split`) and, for image runs, ``rows.npy`` (the sample of
``--data`` each row embeds). :func:`read_run_embeddings` reads them once, with errors that name the file
missing, for ``contrastkit select``, ``contrastkit evaluate --task semi-supervised --run`` and the
benchmarks built on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrastkit.core.errors import DataError
from contrastkit.engine.run_folder import read_split


@dataclass
class RunEmbeddings:
    embeddings: np.ndarray  # (N, d)
    labels: np.ndarray | None  # (N,), where the run's data has labels
    train: np.ndarray | None  # rows of the training part; None where the run has no split.json
    holdout: np.ndarray | None  # rows of the held-out part
    data_rows: np.ndarray | None  # (N,): the sample of --data each row embeds (image runs)


def read_array(file: Path, option: str, hint: str = "contrastkit fit writes it in the run folder.") -> np.ndarray:
    """The array in .npy ``file``, given as ``option``; a DataError naming both otherwise (``hint``:
    where such a file comes from)."""
    if not file.is_file():
        raise DataError(f"{option}: '{file}' does not exist. {hint}")
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{option}: '{file}' is not a readable .npy array ({exc}).") from None


def read_run_embeddings(folder: str | Path, *, labels: bool = False, split: bool = False,
                        option: str = "--run") -> RunEmbeddings:
    """The embeddings of run ``folder``; ``labels=True`` / ``split=True``: a DataError naming the
    file unless the run has labels / a held-out split."""
    folder = Path(folder)
    embeddings = read_array(folder / "embeddings.npy", option)
    label_file, rows_file = folder / "labels.npy", folder / "rows.npy"
    if labels and not label_file.is_file():
        raise DataError(f"{option}: '{folder}' has no labels.npy (its data had no labels); pass the embeddings "
                        f"and a labels .npy of your own instead.")
    parts = read_split(folder, rows=len(embeddings))
    if split and parts is None:
        raise DataError(f"{option}: '{folder}' has no split.json naming its held-out part; pass its .npy files "
                        f"instead, for a stratified split of them.")
    train, holdout = parts or (None, None)
    return RunEmbeddings(embeddings=embeddings,
                         labels=read_array(label_file, option) if label_file.is_file() else None,
                         train=train, holdout=holdout,
                         data_rows=read_array(rows_file, option) if rows_file.is_file() else None)
