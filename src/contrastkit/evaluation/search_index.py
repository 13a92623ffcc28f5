"""A persistent search index over a collection's embeddings: faiss, sample ids and the run that
embedded them, in one folder.

Search is by cosine similarity: every row is L2-normalised before it is added or searched, and
the index ranks by inner product, ``score(q, x) = q . x / (||q|| ||x||)``. The default index is
exact (``faiss.IndexFlatIP``, brute force); ``kind="hnsw"`` is faiss's HNSW graph (approximate,
``M = 32``, ``efSearch = 128``) for large collections. Both take new rows without retraining, so a
collection that grows is indexed by adding only its new samples (:func:`index_collection` with
``update=True``): the index then holds the same (id, embedding) pairs as one built from scratch.

The folder::

    index.faiss   the faiss index (row r is the sample ids[r])
    ids.json      the sample ids, in index order
    index.json    format, kind, dim, count, the run (its resolved path, or a model name such as
                  minilm; null for embeddings added directly), its modality, and the data indexed

Ids must be unique: a row whose id is already indexed is refused by :meth:`SearchIndex.add`, and
skipped (not embedded again) by :func:`index_collection`.

``quantize="int8"`` or ``"binary"`` (exact search only) keeps the normalised rows in fewer bytes
(:mod:`contrastkit.evaluation.quantization`): int8 codes whose per-dimension ranges are calibrated on
the rows of the first build (later additions are clipped to them), scored against the float query;
or sign bits searched by Hamming distance, with ``1 - 2 h / d`` as the score. ``index.json`` then
says ``quantize`` (and format_version 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import as_float32_matrix, l2_normalize_rows
from contrastkit.evaluation.large_scale import IndexOptions, empty_index
from contrastkit.evaluation.quantization import (
    Int8Calibration,
    binary_index,
    hamming_to_cosine,
    int8_index,
    sign_bits,
)

FORMAT = "contrastkit-search-index"
FORMAT_VERSION = 1
QUANTIZED_FORMAT_VERSION = 2  # an index.json with `quantize`: older readers must not open it as float32
INDEX_KINDS = ("flat", "hnsw")
QUANTIZATIONS = ("int8", "binary")
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 128
HNSW_EF_CONSTRUCTION = 40  # faiss's default, which this index was built with
FILES = ("index.faiss", "ids.json", "index.json")


class SearchIndex:
    """Normalised embeddings in a faiss inner-product index, with their ids and a description
    (``metadata``: the run, its modality, the data indexed)."""

    def __init__(self, dim: int, kind: str = "flat", metadata: dict | None = None, quantize: str | None = None):
        if kind not in INDEX_KINDS:
            raise ConfigError(f"Unknown index kind '{kind}'; choose one of {', '.join(INDEX_KINDS)}.")
        if quantize is not None and (quantize not in QUANTIZATIONS or kind != "flat"):
            raise ConfigError(f"quantize must be one of {', '.join(QUANTIZATIONS)} with the exact (flat) index, "
                              f"got quantize={quantize!r} with kind={kind!r}.")
        self.dim, self.kind, self.quantize = int(dim), kind, quantize
        # an int8 index is made at the first add, whose rows calibrate its ranges
        self.index = None if quantize == "int8" else binary_index(self.dim) if quantize == "binary" \
            else _new_faiss_index(self.dim, kind)
        self.ids: list[str] = []
        self._positions: dict[str, int] = {}
        self.metadata = {"run": None, "modality": None, "data": [], **(metadata or {})}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._positions

    def add(self, embeddings: Any, ids: list[str]) -> None:
        """Add rows (N, dim) with their N new, distinct ids."""
        x = as_float32_matrix(embeddings, "embeddings")
        ids = [str(i) for i in ids]
        if x.shape[1] != self.dim:
            raise DataError(f"The embeddings have dimension {x.shape[1]} but the index holds dimension {self.dim}: "
                            f"embed with the run that built the index.")
        if len(ids) != x.shape[0]:
            raise DataError(f"{x.shape[0]} embeddings but {len(ids)} ids; give one id per row.")
        repeated = [i for i in ids if i in self._positions]
        if repeated or len(set(ids)) != len(ids):
            shown = repeated[:3] or [i for i in ids if ids.count(i) > 1][:3]
            raise DataError(f"Sample ids must be unique in an index; already there or repeated: {shown}.")
        rows = l2_normalize_rows(x)
        if self.quantize == "int8" and self.index is None:
            self.index = int8_index(Int8Calibration.fit(rows))
        self.index.add(sign_bits(rows) if self.quantize == "binary" else rows)
        for sample_id in ids:
            self._positions[sample_id] = len(self.ids)
            self.ids.append(sample_id)

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
        """The ``k`` nearest samples of each query row: cosine scores (Q, k') decreasing and their ids,
        with k' = min(k, len(self))."""
        q = as_float32_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise DataError(f"The queries have dimension {q.shape[1]} but the index holds dimension {self.dim}.")
        if k < 1:
            raise ConfigError(f"k must be a positive integer, got {k}.")
        if not self.ids:
            raise DataError("The index is empty.")
        q = l2_normalize_rows(q)
        if self.quantize == "binary":
            distances, rows = self.index.search(sign_bits(q), min(k, len(self)))
            scores = hamming_to_cosine(distances, self.dim)
        else:
            scores, rows = self.index.search(q, min(k, len(self)))
        return scores, [[self.ids[r] for r in row if r >= 0] for row in rows]

    def embeddings(self) -> np.ndarray:
        """The stored (normalised) rows, in index order: as decoded from int8 codes, or the unit
        vectors of ±1 signs for a binary index."""
        if not len(self):
            return np.empty((0, self.dim), np.float32)
        stored = self.index.reconstruct_n(0, len(self))
        if self.quantize == "binary":
            signs = np.unpackbits(stored, axis=1)[:, :self.dim].astype(np.float32) * 2 - 1
            return signs / np.float32(np.sqrt(self.dim))
        return stored

    def save(self, folder: str | Path) -> Path:
        """Write the three files of the module docstring (each to a temporary name, then renamed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        description = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
                       "count": len(self), "metric": "cosine (inner product of L2-normalised rows)",
                       **self.metadata}
        if self.quantize is not None:
            description.update(format_version=QUANTIZED_FORMAT_VERSION, quantize=self.quantize)
        if self.quantize == "binary":
            faiss.write_index_binary(self.index, str(folder / "index.faiss.tmp"))
        else:
            faiss.write_index(self.index, str(folder / "index.faiss.tmp"))
        (folder / "ids.json.tmp").write_text(json.dumps(self.ids))
        (folder / "index.json.tmp").write_text(json.dumps(description, indent=2))
        for name in FILES:  # index.json last: a folder whose index.json is written is complete
            os.replace(folder / f"{name}.tmp", folder / name)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SearchIndex:
        folder = Path(folder)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise DataError(f"'{folder}' is not a search index (missing {', '.join(missing)}); "
                            f"build one with 'contrastkit index'.")
        description = json.loads((folder / "index.json").read_text())
        if description.get("format") != FORMAT or int(description.get("format_version", 0)) > QUANTIZED_FORMAT_VERSION:
            raise DataError(f"'{folder / 'index.json'}' is not a search index this contrastkit reads "
                            f"(format {description.get('format')!r}, version {description.get('format_version')}).")
        index = cls(description["dim"], description["kind"],
                    {key: description[key] for key in ("run", "modality", "data") if key in description},
                    quantize=description.get("quantize"))
        read = faiss.read_index_binary if index.quantize == "binary" else faiss.read_index
        index.index = read(str(folder / "index.faiss"))
        if description["kind"] == "hnsw":
            index.index.hnsw.efSearch = HNSW_EF_SEARCH
        ids = json.loads((folder / "ids.json").read_text())
        if len(ids) != index.index.ntotal:
            raise DataError(f"'{folder}' is inconsistent: {len(ids)} ids for {index.index.ntotal} rows; "
                            f"build the index again.")
        index.ids, index._positions = list(ids), {sample_id: row for row, sample_id in enumerate(ids)}
        return index


def _new_faiss_index(dim: int, kind: str) -> faiss.Index:
    if kind == "flat":
        return empty_index(dim, IndexOptions(kind="exact"))
    return empty_index(dim, IndexOptions(kind="hnsw", hnsw_m=HNSW_NEIGHBOURS, ef_construction=HNSW_EF_CONSTRUCTION,
                                         ef_search=HNSW_EF_SEARCH))


def index_collection(encoder: Any, data: str, folder: str | Path, *, run: str | None, update: bool = False,
                     kind: str = "flat", quantize: str | None = None) -> tuple[SearchIndex, int]:
    """Embed the samples of ``data`` with ``encoder`` (a :mod:`~contrastkit.evaluation.run_encoders`
    encoder of the run ``run``) into the index in ``folder``; returns (index, samples embedded).

    A new index refuses a folder that already holds one. ``update=True`` opens the index in
    ``folder`` (built with the same run) and embeds only the samples whose ids it does not hold:
    with an image folder the new files, with row-numbered data (lines, IDX) the rows past those
    indexed. ``quantize`` (a new index only; an update keeps the index's own) stores int8 codes or
    sign bits (module docstring)."""
    folder = Path(folder)
    if update:
        index = SearchIndex.load(folder)
        if quantize is not None and quantize != index.quantize:
            raise ConfigError(f"The index in '{folder}' is stored as {index.quantize or 'float32'}; an update keeps "
                              f"that (leave out --quantize), or build a new index with --quantize {quantize}.")
        if index.metadata.get("run") != run:
            raise ConfigError(f"The index in '{folder}' was built with the run '{index.metadata.get('run')}', not "
                              f"'{run}': an update must embed with the same encoder (or build a new index).")
    elif (folder / "index.json").exists():
        raise ConfigError(f"'{folder}' already holds a search index; nothing is overwritten. Add samples to it "
                          f"with --update, or choose another folder.")
    collection = encoder.read_collection(data)
    new_rows = [row for row, sample_id in enumerate(collection.ids) if not (update and sample_id in index)]
    if new_rows:
        embeddings = encoder.embed(collection, new_rows)
        if not update:
            index = SearchIndex(embeddings.shape[1], kind, {"run": run, "modality": encoder.modality}, quantize)
        index.add(embeddings, [collection.ids[row] for row in new_rows])
    elif not update:
        raise DataError(f"'{data}' holds no samples to index.")
    if new_rows or not update:
        index.metadata["data"] = [*index.metadata.get("data", []), str(data)]
        index.save(folder)
    return index, len(new_rows)


def run_reference(run: str | Path) -> str:
    """How an index names its run: a model name as given (``minilm``), otherwise the resolved path."""
    return str(run) if str(run) == "minilm" else str(Path(run).resolve())


__all__ = ["INDEX_KINDS", "QUANTIZATIONS", "SearchIndex", "index_collection", "run_reference"]
