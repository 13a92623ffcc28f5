"""Deliberately collapsing runs are flagged in summary.json, healthy ones are not.

Four short runs on scikit-learn's digits (1,437 pretraining images, batch 64, small CNN at width
0.25, 15 epochs = 330 steps), differing only in the ablation:

- BYOL without predictor (Grill et al. 2020, Table 5: collapses) -> flagged;
- SimSiam without stop-gradient (Chen & He 2021, Fig. 2) -> its effective rank falls far below the
  healthy run's and its kNN accuracy with it (measured: RankMe of the projections 9.8 vs 38.5,
  kNN 61 % vs 76 %), but the per-dimension std of the normalised projections stays healthy
  (0.083 vs 1/sqrt(d) = 0.088): SimSiam's projector ends with a BatchNorm, which keeps every
  output dimension's batch variance at 1, so the run collapses to a few dimensions, not to a
  point, and none of :func:`collapse_report`'s snapshot thresholds trips (the rank floor is 2 % of
  128 = 2.56). It is flagged during training instead, by the fall of its effective rank below 40 %
  of its peak (training/callbacks.py, RANK_DROP_FRACTION);
- healthy BYOL and SimSiam -> not flagged.
"""

from __future__ import annotations

import pytest
import torch

from contrastkit.config import FitConfig
from contrastkit.training.run import fit

pytestmark = pytest.mark.slow

COMMON = dict(data="digits", epochs=15, batch_size=64, width=0.25, holdout=0.2, report=False, seed=0)
RUNS = {
    "byol": ("byol", {}),
    "byol-no-predictor": ("byol", {"byol": {"predictor": False}}),
    "simsiam": ("simsiam", {}),
    "simsiam-no-stop-gradient": ("simsiam", {"simsiam": {"stop_gradient": False}}),
}


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    """Each run's summary.json, trained once for the whole module (on first use)."""
    cache: dict[str, dict] = {}
    root = tmp_path_factory.mktemp("collapse")

    def get(name: str) -> dict:
        if name not in cache:
            method, extra = RUNS[name]
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # a small CNN: intra-op threads cost more than they save
            try:
                cache[name] = fit(FitConfig(method=method, extra=extra, out=str(root / name), **COMMON))
            finally:
                torch.set_num_threads(threads)
        return cache[name]

    return get


def test_byol_without_predictor_is_flagged(summaries):
    summary = summaries("byol-no-predictor")
    assert summary["collapse"]["collapsed"], summary["collapse"]
    assert summary["collapse_warnings"], "no collapse warning was raised during training"


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_healthy_runs_are_not_flagged(summaries, name):
    summary = summaries(name)
    assert not summary["collapse"]["collapsed"], summary["collapse"]["reasons"]
    assert not summary["collapse_warnings"]


def test_simsiam_without_stop_gradient_loses_dimensions_and_accuracy(summaries):
    collapsed, healthy = summaries("simsiam-no-stop-gradient"), summaries("simsiam")
    assert collapsed["collapse"]["effective_rank"] < 0.5 * healthy["collapse"]["effective_rank"]
    assert collapsed["knn_top1"] < healthy["knn_top1"] - 0.05


def test_simsiam_without_stop_gradient_is_flagged(summaries):
    summary = summaries("simsiam-no-stop-gradient")
    # No snapshot is degenerate; the warning comes from the fall of the effective rank during training.
    assert not summary["collapse"]["collapsed"]
    assert any("fell from" in warning for warning in summary["collapse_warnings"]), summary["collapse_warnings"]
