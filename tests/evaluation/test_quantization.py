"""int8 and binary embedding quantization against naive loops, faiss's own encoder and closed forms;
the search index and `contrastkit index --quantize` built on them (issue 27)."""

from __future__ import annotations

import json
import math

import faiss
import numpy as np
import pytest

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.evaluation.quantization import (
    Int8Calibration,
    QuantizedSearch,
    index_bytes,
    int8_calibration_of,
    int8_index,
    sign_bits,
)
from contrastkit.evaluation.search_index import SearchIndex


def unit_rows(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_int8(x, low, high):
    """Element by element, in float32 as the module docstring writes it."""
    codes = np.empty(x.shape, np.int8)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            width = np.float32(high[j] - low[j]) if high[j] > low[j] else np.float32(1)
            t = min(max((x[i, j] - low[j]) / width, np.float32(0)), np.float32(1))
            codes[i, j] = int(np.float32(255) * np.float32(t)) - 128
    return codes


def naive_popcount_distance(a_bits, b_bits):
    return sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(a_bits, b_bits))


def test_int8_codes_equal_a_naive_loop_and_faiss_own_8bit_encoder():
    x = unit_rows(60, 24, 0)
    calibration = Int8Calibration.fit(x[:40])  # rows 40.. fall partly outside: clipped
    codes = calibration.encode(x)
    np.testing.assert_array_equal(codes, naive_int8(x, x[:40].min(0), x[:40].max(0)))
    faiss_codes = int8_index(calibration).sa_encode(x)  # faiss's SQ8 with the same ranges
    np.testing.assert_array_equal(codes.astype(np.int16) + 128, faiss_codes.astype(np.int16))
    restored = int8_calibration_of(int8_index(calibration))
    np.testing.assert_allclose(restored.high, calibration.high, rtol=0, atol=1e-6)


def test_int8_decoding_is_within_half_a_bucket():
    x = unit_rows(200, 16, 1)
    calibration = Int8Calibration.fit(x)
    error = np.abs(calibration.decode(calibration.encode(x)) - x)
    half_bucket = (calibration.high - calibration.low) / 255 / 2
    assert (error <= half_bucket + 1e-6).all()
    assert error.max() > 0.5 * half_bucket.max()  # the bound is not loose: quantization is lossy


def test_a_constant_dimension_does_not_divide_by_zero():
    x = unit_rows(10, 8, 2)
    x[:, 3] = 0.25
    calibration = Int8Calibration.fit(x)
    decoded = calibration.decode(calibration.encode(x))
    assert np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded[:, 3], 0.25, atol=1 / 255)


def test_int8_search_scores_the_float_query_against_decoded_rows():
    corpus, queries = unit_rows(300, 32, 3), unit_rows(7, 32, 4)
    search = QuantizedSearch(corpus, "int8")
    scores, rows = search.search(queries, k=5)
    decoded = search.calibration.decode(search.calibration.encode(corpus))
    for q, query in enumerate(queries):
        naive = [sum(float(query[j]) * float(row[j]) for j in range(32)) for row in decoded]
        best = sorted(range(len(naive)), key=lambda r: -naive[r])[:5]
        np.testing.assert_allclose(scores[q], [naive[r] for r in best], atol=1e-5)
        assert set(rows[q]) == set(best)


def test_sign_bits_and_hamming_search_equal_naive_loops():
    corpus, queries = unit_rows(200, 64, 5), unit_rows(6, 64, 6)
    bits = sign_bits(corpus)
    for i in (0, 17, 199):
        expected = [1 if corpus[i, j] > 0 else 0 for j in range(64)]
        unpacked = [(bits[i, j // 8] >> (7 - j % 8)) & 1 for j in range(64)]
        assert unpacked == expected
    scores, rows = QuantizedSearch(corpus, "binary").search(queries, k=8)
    query_bits = sign_bits(queries)
    for q in range(len(queries)):
        distances = [naive_popcount_distance(query_bits[q], bits[r]) for r in range(len(corpus))]
        expected = sorted(distances)[:8]
        assert [distances[r] for r in rows[q]] == expected  # the k nearest (ties may come in any order)
        np.testing.assert_allclose(scores[q], [1 - 2 * h / 64 for h in expected], atol=1e-6)


def test_binary_score_is_the_cosine_of_the_sign_vectors():
    a, b = unit_rows(2, 64, 7)
    signs = np.where(np.stack([a, b]) > 0, 1.0, -1.0)
    cosine = float(signs[0] @ signs[1]) / 64
    h = naive_popcount_distance(*sign_bits(np.stack([a, b])))
    assert math.isclose(1 - 2 * h / 64, cosine, abs_tol=1e-9)


@pytest.mark.parametrize("precision,rescore", [("binary", "float32"), ("binary", "int8"), ("int8", "float32")])
def test_rescoring_every_candidate_is_the_finer_search(precision, rescore):
    corpus, queries = unit_rows(120, 32, 8), unit_rows(5, 32, 9)
    rescored = QuantizedSearch(corpus, precision, rescore=rescore, rescore_multiplier=120 // 4).search(queries, k=4)
    finer = QuantizedSearch(corpus, "float32" if rescore == "float32" else "int8").search(queries, k=4)
    np.testing.assert_array_equal(rescored[1], finer[1])
    np.testing.assert_allclose(rescored[0], finer[0], atol=1e-5)


def test_memory_in_closed_form():
    assert index_bytes(1000, 384, "float32") == 1000 * 384 * 4
    assert index_bytes(1000, 384, "int8") == 1000 * 384 + 8 * 384
    assert index_bytes(1000, 384, "binary") == 1000 * 48
    assert index_bytes(1000, 384, "binary", rescore="int8") == 1000 * 48 + 1000 * 384 + 8 * 384
    # faiss holds exactly these codes
    x = unit_rows(1000, 384, 10)
    assert QuantizedSearch(x, "int8").index.codes.size() == 1000 * 384
    assert QuantizedSearch(x, "binary").index.xb.size() == 1000 * 48


def test_unsupported_combinations_are_errors():
    x = unit_rows(10, 8, 11)
    with pytest.raises(ConfigError, match="Rescoring"):
        QuantizedSearch(x, "int8", rescore="int8")
    with pytest.raises(ConfigError, match="multiple of 8"):
        QuantizedSearch(unit_rows(4, 12, 0), "binary")
    with pytest.raises(ConfigError, match="flat"):
        SearchIndex(8, "hnsw", quantize="int8")


@pytest.mark.parametrize("quantize", ["int8", "binary"])
def test_a_quantized_search_index_saves_reloads_and_searches_as_quantized_search(quantize, tmp_path):
    corpus, queries = unit_rows(150, 32, 12), unit_rows(4, 32, 13)
    index = SearchIndex(32, quantize=quantize)
    index.add(corpus[:100], [f"d{i}" for i in range(100)])
    index.add(corpus[100:], [f"d{i}" for i in range(100, 150)])  # int8: clipped to the first rows' ranges
    index.save(tmp_path / "index")
    reloaded = SearchIndex.load(tmp_path / "index")
    assert reloaded.quantize == quantize and len(reloaded) == 150
    assert json.loads((tmp_path / "index" / "index.json").read_text())["format_version"] == 2
    scores, ids = reloaded.search(queries, k=5)
    calibration = Int8Calibration.fit(corpus[:100]) if quantize == "int8" else None
    expected_scores, rows = QuantizedSearch(corpus, quantize, calibration=calibration).search(queries, k=5)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    if quantize == "int8":  # binary ties may come in another order
        assert ids == [[f"d{r}" for r in row] for row in rows]
    assert reloaded.embeddings().shape == (150, 32)


def test_index_command_quantizes_given_embeddings(tmp_path, capsys):
    corpus = unit_rows(50, 16, 14)
    np.save(tmp_path / "emb.npy", corpus)
    np.save(tmp_path / "q.npy", corpus[:1])
    assert main(["index", "--embeddings", str(tmp_path / "emb.npy"), "--quantize", "binary",
                 "--out", str(tmp_path / "index")]) == 0
    assert isinstance(faiss.read_index_binary(str(tmp_path / "index" / "index.faiss")), faiss.IndexBinaryFlat)
    assert main(["search", "--index", str(tmp_path / "index"), "--query", str(tmp_path / "q.npy"), "--k", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("0\t1.0000")  # a row is its own nearest, at Hamming 0
