"""Representation diagnostics against naive double loops in numpy and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastkit.evaluation import diagnostics as dg


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def matrix_with_singular_values(sigma, n: int, d: int, seed: int = 0) -> np.ndarray:
    """U diag(sigma) V^T with random orthonormal U (n x r) and V (d x r)."""
    rng = np.random.default_rng(seed)
    r = len(sigma)
    u, _ = np.linalg.qr(rng.normal(size=(n, r)))
    v, _ = np.linalg.qr(rng.normal(size=(d, r)))
    return (u * np.asarray(sigma, dtype=float)) @ v.T


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_loop(alpha):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    ua, ub = unit_rows(a), unit_rows(b)
    expected = (
        sum(math.sqrt(sum((ua[i, j] - ub[i, j]) ** 2 for j in range(5))) ** alpha for i in range(9))
        / 9
    )
    assert dg.alignment(a, b, alpha=alpha) == pytest.approx(expected, rel=1e-5)
    assert dg.alignment(torch.from_numpy(a), torch.from_numpy(b), alpha=alpha) == pytest.approx(
        expected, rel=1e-5
    )


@pytest.mark.parametrize("t", [1.0, 2.0, 5.0])
def test_uniformity_matches_loop_over_distinct_pairs(t):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(13, 6))
    u = unit_rows(z)
    pair_terms = [
        math.exp(-t * float(np.sum((u[i] - u[j]) ** 2)))
        for i in range(13)
        for j in range(i + 1, 13)
    ]
    expected = math.log(sum(pair_terms) / len(pair_terms))
    assert dg.uniformity(z, t=t) == pytest.approx(expected, abs=1e-5)
    # chunked log-sum-exp equals one block
    assert dg.uniformity(z, t=t, chunk_size=3) == pytest.approx(expected, abs=1e-5)
    assert dg.uniformity(z, t=t, max_samples=13) == pytest.approx(expected, abs=1e-5)


def test_uniformity_subsample_is_a_subset_estimate():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(400, 16))
    full, sampled = dg.uniformity(z), dg.uniformity(z, max_samples=100, seed=3)
    assert sampled != full and sampled == pytest.approx(full, abs=0.1)


def test_singular_values_match_numpy():
    z = np.random.default_rng(3).normal(size=(20, 7))
    np.testing.assert_allclose(dg.singular_values(z), np.linalg.svd(z, compute_uv=False), rtol=1e-5)


def test_effective_rank_closed_forms():
    equal = matrix_with_singular_values([2.0] * 8, n=30, d=8)
    assert dg.effective_rank(equal) == pytest.approx(8.0, rel=1e-4)
    one = matrix_with_singular_values([5.0], n=30, d=8)
    assert dg.effective_rank(one) == pytest.approx(1.0, rel=1e-4)
    # sigma = (3, 1): p = (3/4, 1/4), exp(H) = exp(-(3/4 ln 3/4 + 1/4 ln 1/4)) = 4 / 3^(3/4)
    two = matrix_with_singular_values([3.0, 1.0], n=30, d=8)
    assert dg.effective_rank(two) == pytest.approx(4 / 3**0.75, rel=1e-4)
    assert dg.effective_rank(np.zeros((5, 3))) == 0.0


def test_per_dimension_std_and_isotropy_match_numpy_loops():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(11, 4)) + np.array([2.0, 0, 0, 0])
    u = unit_rows(z)
    assert dg.per_dimension_std(z) == pytest.approx(float(np.mean(np.std(u, axis=0))), rel=1e-5)
    cosines = [float(u[i] @ u[j]) for i in range(11) for j in range(11) if i != j]
    assert dg.isotropy(z) == pytest.approx(float(np.mean(cosines)), abs=1e-6)


def test_collapse_report_flags_complete_collapse():
    rng = np.random.default_rng(5)
    z = np.ones((400, 64)) + 1e-4 * rng.normal(size=(400, 64))
    report = dg.collapse_report(z)
    assert report["collapsed"] and len(report["reasons"]) == 3
    assert report["isotropy"] == pytest.approx(1.0, abs=1e-3)


def test_collapse_report_flags_dimensional_collapse():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(400, 1)) * rng.normal(size=(1, 64))  # rank 1
    report = dg.collapse_report(z)
    assert report["collapsed"]
    assert len(report["reasons"]) == 1 and "effective rank" in report["reasons"][0]


def test_the_rank_floor_is_taken_of_the_rank_an_embedding_can_have():
    # DINO's case: 2048 outputs that are a linear map of a 128-wide layer, 10 equal directions used
    # of the 128: RankMe 10 (closed form: equal singular values), under 2 % of min(n, d) = 20, over
    # 2 % of min(n, d, 128) = 2.56.
    z = matrix_with_singular_values([3.0] * 10, n=1000, d=2048, seed=8)
    assert dg.effective_rank(z) == pytest.approx(10.0, abs=0.05)  # up to float32 and RankMe's eps
    unbounded = dg.collapse_report(z)
    assert unbounded["collapsed"] and "2% of min(n, d) = 1000" in unbounded["reasons"][0]
    bounded = dg.collapse_report(z, max_rank=128)
    assert not bounded["collapsed"], bounded["reasons"]
    assert bounded["max_rank"] == 128 and "max_rank" not in unbounded
    # The bound lowers the floor, never below 1.5: rank-1 outputs are still flagged.
    one_direction = matrix_with_singular_values([3.0], n=1000, d=2048, seed=9)
    flagged = dg.collapse_report(one_direction, max_rank=128)
    assert flagged["collapsed"] and "min(n, d, max_rank) = 128" in flagged["reasons"][-1]
    for bad in (0, 2.5, True):
        with pytest.raises(dg.ConfigError, match="max_rank"):
            dg.collapse_report(z, max_rank=bad)


@pytest.mark.parametrize("n, d", [(1000, 64), (600, 256), (500, 2)])
def test_collapse_report_passes_isotropic_gaussian(n, d):
    z = np.random.default_rng(7).normal(size=(n, d))
    report = dg.collapse_report(z, z_b=z + 0.1)
    assert not report["collapsed"], report["reasons"]
    assert report["per_dimension_std"] == pytest.approx(1 / math.sqrt(d), rel=0.1)
    assert report["per_dimension_std_reference"] == pytest.approx(1 / math.sqrt(d))
    assert "alignment" in report and report["alignment"] > 0


def test_diagnostics_accept_tensors_that_require_grad():
    z = torch.randn(50, 8, requires_grad=True)
    report = dg.collapse_report(z)
    assert isinstance(report["uniformity"], float) and report["n_samples"] == 50
