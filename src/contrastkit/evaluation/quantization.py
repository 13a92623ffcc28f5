"""Embeddings in fewer bytes: int8 (scalar, calibrated per dimension) and binary (sign bits).

**int8.** A calibration set fixes each dimension's range ``[low_j, high_j]`` (its minimum and
maximum there). A value is placed in one of 256 equal buckets of its dimension's range and stored as
the bucket's number (offset by -128 to fit a signed byte); it reads back as the bucket's middle::

    t_j    = clip((x_j - low_j) / (high_j - low_j), 0, 1)
    code_j = floor(255 * t_j) - 128                              (int8, in [-128, 127])
    x^_j   = low_j + (code_j + 128 + 0.5) / 255 * (high_j - low_j)

This is faiss's 8-bit scalar quantizer (``QT_8bit``, per-dimension ranges) with the ranges set
from :class:`Int8Calibration`, so faiss searches the codes: a query stays float32 and is scored
against the decoded rows, ``score(q, x) = q . x^`` (asymmetric distance: only the stored side is
quantized). One byte per dimension: 4x smaller than float32. Values outside the calibration range
are clipped to it, so calibrate on rows like those indexed (by default, the indexed rows themselves).

**binary.** One bit per dimension, ``b_j = [x_j > 0]``, packed eight to a byte (32x smaller than
float32), searched by Hamming distance ``h(a, b) = popcount(a XOR b)`` (faiss's ``IndexBinaryFlat``).
For L2-normalised rows the sign bits are a random-hyperplane-like hash of the direction, and
``1 - 2 h / d`` is the cosine of the two ±1 vectors, reported as the score.

**Rescoring.** A quantized search can fetch ``rescore_multiplier * k`` candidates and rank them
again with a finer representation of the same rows: ``"int8"`` (the float query against the int8
codes, kept beside the bits) or ``"float32"`` (the original rows, e.g. memory-mapped from disk).
(Shakir, Aarsen & Lee, "Binary and Scalar Embedding Quantization", 2024, describe the same recipe.)

:func:`index_bytes` gives what each form keeps in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.arrays import as_float32_matrix

PRECISIONS = ("float32", "int8", "binary")
RESCORING = ("int8", "float32")


@dataclass(frozen=True)
class Int8Calibration:
    """Each dimension's range ``[low_j, high_j]`` for int8 codes (see the module docstring)."""

    low: np.ndarray  # (d,) float32
    high: np.ndarray  # (d,) float32

    @classmethod
    def fit(cls, embeddings) -> Int8Calibration:
        """The per-dimension minimum and maximum of the calibration rows ``embeddings`` (n, d)."""
        x = as_float32_matrix(embeddings, "calibration embeddings")
        return cls(x.min(axis=0), x.max(axis=0))

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def width(self) -> np.ndarray:
        # A dimension constant over the calibration rows gets a unit width: all its values map to bucket 0.
        width = (self.high - self.low).astype(np.float32)
        return np.where(width > 0, width, np.float32(1.0)).astype(np.float32)

    def encode(self, embeddings) -> np.ndarray:
        """int8 codes (n, d) of ``embeddings``."""
        x = self._checked(embeddings)
        t = np.clip((x - self.low) / self.width(), np.float32(0.0), np.float32(1.0))
        return ((np.float32(255.0) * t).astype(np.int32) - 128).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32 rows (n, d): each code's bucket middle."""
        buckets = codes.astype(np.float32) + np.float32(128.5)
        return (self.low + buckets / np.float32(255.0) * self.width()).astype(np.float32)

    def to_json(self) -> dict:
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_json(cls, values: dict) -> Int8Calibration:
        return cls(np.asarray(values["low"], np.float32), np.asarray(values["high"], np.float32))

    def _checked(self, embeddings) -> np.ndarray:
        x = as_float32_matrix(embeddings, "embeddings")
        if x.shape[1] != self.dim:
            raise DataError(f"The embeddings have dimension {x.shape[1]}, the int8 calibration {self.dim}.")
        return x


def int8_index(calibration: Int8Calibration) -> faiss.IndexScalarQuantizer:
    """An empty faiss 8-bit scalar-quantizer index (inner product) whose ranges are ``calibration``'s:
    it stores :meth:`Int8Calibration.encode`'s codes (+128) and scores ``q . decode(code)``."""
    index = faiss.IndexScalarQuantizer(calibration.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    # QT_8bit's trained parameters are [low_0 .. low_d-1, width_0 .. width_d-1].
    faiss.copy_array_to_vector(np.concatenate([calibration.low, calibration.width()]).astype(np.float32),
                               index.sq.trained)
    index.is_trained = True
    return index


def int8_calibration_of(index: faiss.IndexScalarQuantizer) -> Int8Calibration:
    """The ranges a faiss 8-bit index (:func:`int8_index`) holds."""
    trained = faiss.vector_to_array(index.sq.trained).astype(np.float32)
    low, width = trained[:index.d], trained[index.d:]
    return Int8Calibration(low, low + width)


def sign_bits(embeddings) -> np.ndarray:
    """Packed sign bits (n, ceil(d / 8)) uint8: bit j of a row is ``x_j > 0`` (first dimension in
    the highest bit of the first byte)."""
    return np.packbits(as_float32_matrix(embeddings, "embeddings") > 0, axis=1)


def binary_index(dim: int) -> faiss.IndexBinaryFlat:
    """An empty exact Hamming index over sign bits of ``dim`` dimensions (a multiple of 8)."""
    if dim % 8:
        raise ConfigError(f"Binary quantization packs 8 dimensions per byte; dimension {dim} is not a multiple of 8.")
    return faiss.IndexBinaryFlat(dim)


def hamming_to_cosine(distances: np.ndarray, dim: int) -> np.ndarray:
    """The cosine of two ±1 vectors whose sign bits differ in ``distances`` places: 1 - 2 h / d."""
    return (1.0 - 2.0 * distances.astype(np.float32) / dim).astype(np.float32)


def index_bytes(count: int, dim: int, precision: str, rescore: str | None = None) -> int:
    """Bytes a search over ``count`` rows keeps: the codes (and int8 ranges), plus the rescoring rows."""
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}.")
    stored = {"float32": 4 * count * dim, "int8": count * dim + 2 * 4 * dim, "binary": count * dim // 8}[precision]
    if rescore is not None:
        stored += index_bytes(count, dim, "int8" if rescore == "int8" else "float32")
    return stored


class QuantizedSearch:
    """Top-k inner-product search over ``corpus`` kept at ``precision``, optionally rescoring
    ``rescore_multiplier * k`` candidates with ``rescore`` (see the module docstring).

    ``calibration`` sets the int8 ranges (default: fitted on ``corpus``). Rows are searched as
    given: normalise them first for cosine."""

    def __init__(self, corpus, precision: str = "int8", *, rescore: str | None = None,
                 rescore_multiplier: int = 4, calibration: Int8Calibration | None = None):
        if precision not in PRECISIONS:
            raise ConfigError(f"Unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}.")
        if rescore is not None and (rescore not in RESCORING or precision == "float32"
                                    or (precision == "int8" and rescore == "int8")):
            raise ConfigError(f"Rescoring a {precision} search takes one of: "
                              f"{', '.join(r for r in RESCORING if r != precision) if precision != 'float32' else 'none'}; "
                              f"got {rescore!r}.")
        if rescore_multiplier < 1:
            raise ConfigError(f"rescore_multiplier must be a positive integer, got {rescore_multiplier}.")
        x = as_float32_matrix(corpus, "corpus")
        self.precision, self.rescore, self.rescore_multiplier = precision, rescore, rescore_multiplier
        self.count, self.dim = x.shape
        self.calibration = None
        if precision == "float32":
            self.index = faiss.IndexFlatIP(self.dim)
            self.index.add(x)
        elif precision == "int8":
            self.calibration = calibration or Int8Calibration.fit(x)
            self.index = int8_index(self.calibration)
            self.index.add(x)
        else:
            self.index = binary_index(self.dim)
            self.index.add(sign_bits(x))
        self.rescoring_rows = None
        if rescore == "float32":
            self.rescoring_rows = x
        elif rescore == "int8":
            self.calibration = calibration or Int8Calibration.fit(x)
            self.rescoring_rows = self.calibration.encode(x)

    def memory_bytes(self) -> int:
        return index_bytes(self.count, self.dim, self.precision, self.rescore)

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k) decreasing, row numbers (Q, k)); binary scores are 1 - 2 h / d."""
        q = as_float32_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise DataError(f"The queries have dimension {q.shape[1]}, the corpus {self.dim}.")
        k = min(int(k), self.count)
        depth = min(self.count, k * self.rescore_multiplier) if self.rescore else k
        if self.precision == "binary":
            distances, rows = self.index.search(sign_bits(q), depth)
            scores = hamming_to_cosine(distances, self.dim)
        else:
            scores, rows = self.index.search(q, depth)
        if self.rescore is None:
            return scores, rows
        return self._rescored(q, rows, k)

    def _rescored(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rescoring_rows[candidates]  # (Q, depth, d)
        if self.rescore == "int8":
            rows = self.calibration.decode(rows.reshape(-1, self.dim)).reshape(*candidates.shape, self.dim)
        scores = np.einsum("qd,qcd->qc", q, rows.astype(np.float32))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(candidates, order, axis=1)


__all__ = ["Int8Calibration", "PRECISIONS", "QuantizedSearch", "RESCORING", "binary_index", "hamming_to_cosine",
           "index_bytes", "int8_calibration_of", "int8_index", "sign_bits"]
