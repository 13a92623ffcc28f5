"""Deliberately collapsing runs are flagged in summary.json, healthy ones are not.

Short runs on scikit-learn's digits (1,437 pretraining images, batch 64, small CNN at width 0.25,
15 epochs = 330 steps), differing only in the method or its ablation:

- BYOL without predictor (Grill et al. 2020, Table 5: collapses) -> flagged;
- SimSiam without stop-gradient (Chen & He 2021, Fig. 2) -> its effective rank falls far below the
  healthy run's and its kNN accuracy with it (measured: RankMe of the projections 9.8 vs 38.5,
  kNN 61 % vs 76 %), but the per-dimension std of the normalised projections stays healthy
  (0.083 vs 1/sqrt(d) = 0.088): SimSiam's projector ends with a BatchNorm, which keeps every
  output dimension's batch variance at 1, so the run collapses to a few dimensions, not to a
  point, and none of :func:`collapse_report`'s snapshot thresholds trips (the rank floor is 2 % of
  128 = 2.56). It is flagged during training instead, by the fall of its effective rank below 40 %
  of its peak (training/callbacks.py, RANK_DROP_FRACTION);
- a second, independently broken method for that rule, which was set on the SimSiam run: BYOL
  whose target starts as the online network itself (EMA rate m_0 = 0) and without predictor,
  both of which collapse BYOL (Grill et al. 2020, Table 5a and 5b). Measured: the effective rank
  of its projections rises to 26.7 after one epoch, then falls to 7.0 (26 % of the peak); the
  mean cosine between the projections of two different images is 0.994 (healthy BYOL: 0.47);
  kNN 62 % vs 74 %;
- healthy SimCLR, MoCo, BYOL, SimSiam and DirectPred -> no warning at any epoch (mean pairwise
  cosine of their projections 0.004 to 0.54);
- JEPA (AdamW, as its docstring asks; 480 images, 4 epochs, for time) has no healthy run at this
  scale: its embedding, the mean of the target encoder's patch tokens, points nearly one way for
  every image from initialisation on (mean pairwise cosine 0.994 untrained, 0.996 after this run
  and 0.999 after 15 epochs on all of digits, where its kNN accuracy is 46-49 %), so the snapshot
  rules flag it at every epoch, rightly by that measurement; the rank-drop rule stays silent (its
  effective rank, 1.3-1.6, never falls from a peak).

The collapse is established by a measurement that shares nothing with the rules: the mean cosine
between the projections of distinct images, computed here from each run's saved checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.sources.images import load_digits_source
from contrastkit.modalities.image.training.restore import load_method
from contrastkit.modalities.image.training.run import fit

pytestmark = pytest.mark.slow

COMMON = dict(data="digits", epochs=15, batch_size=64, width=0.25, holdout=0.2, report=False, seed=0)
RUNS = {  # name: (method, extra, changes to COMMON)
    "byol": ("byol", {}, {}),
    "byol-no-predictor": ("byol", {"byol": {"predictor": False}}, {}),
    "byol-no-ema-no-predictor": ("byol", {"byol": {"predictor": False, "momentum": 0.0}}, {}),
    "simsiam": ("simsiam", {}, {}),
    "simsiam-no-stop-gradient": ("simsiam", {"simsiam": {"stop_gradient": False}}, {}),
    "simclr": ("simclr", {}, {}),
    "moco": ("moco", {}, {}),
    "directpred": ("directpred", {}, {}),
    "jepa": ("jepa", {}, {"optimizer": "adamw", "limit": 480, "epochs": 4}),
}
HEALTHY = ["simclr", "moco", "byol", "simsiam", "directpred"]
RANK_DROP = "fell from"  # in the warning of the rank-drop rule, and only there


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    """Each run's summary.json, trained once for the whole module (on first use)."""
    cache: dict[str, dict] = {}
    root = tmp_path_factory.mktemp("collapse")

    def get(name: str) -> dict:
        if name not in cache:
            method, extra, changes = RUNS[name]
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # a small CNN: intra-op threads cost more than they save
            try:
                config = FitConfig(method=method, extra=extra, out=str(root / name), **{**COMMON, **changes})
                cache[name] = fit(config)
            finally:
                torch.set_num_threads(threads)
        return cache[name]

    return get


def mean_pairwise_cosine(run_dir: str, n: int = 512) -> float:
    """Mean cosine between the projections of two different digits images (the first ``n``), from
    the run's last checkpoint: 1 when every image maps to the same direction."""
    method, _, _ = load_method(Path(run_dir) / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        z = method.project_embedding(method.embed(load_digits_source().images[:n])).double().numpy()
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    cosines = unit @ unit.T
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


def test_byol_without_predictor_is_flagged(summaries):
    summary = summaries("byol-no-predictor")
    assert summary["collapse"]["collapsed"], summary["collapse"]
    assert summary["collapse_warnings"], "no collapse warning was raised during training"


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_runs_are_not_flagged(summaries, name):
    summary = summaries(name)
    # Healthy by the measurement independent of the rules, so "not flagged" is not vacuous.
    assert mean_pairwise_cosine(summary["out"]) < 0.8
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
    assert any(RANK_DROP in warning for warning in summary["collapse_warnings"]), summary["collapse_warnings"]


def test_a_second_broken_method_collapses_and_the_rank_drop_rule_flags_it(summaries):
    broken, healthy = summaries("byol-no-ema-no-predictor"), summaries("byol")
    # It collapsed, by measurements that share nothing with the rule: every image's projection
    # points the same way, unlike healthy BYOL's, and the kNN probe loses accuracy.
    assert mean_pairwise_cosine(broken["out"]) > 0.95
    assert mean_pairwise_cosine(healthy["out"]) < 0.8
    assert broken["knn_top1"] < healthy["knn_top1"] - 0.05
    # The rank-drop rule flags it (the snapshot rules do too: it is a collapse towards a point).
    assert any(RANK_DROP in warning for warning in broken["collapse_warnings"]), broken["collapse_warnings"]
    assert broken["collapse"]["collapsed"]


def test_jepa_is_flagged_only_as_far_as_its_embedding_points_one_way(summaries):
    summary = summaries("jepa")
    assert not any(RANK_DROP in warning for warning in summary["collapse_warnings"])
    # The snapshot verdict agrees with the independent measurement, whichever way it goes.
    assert summary["collapse"]["collapsed"] == (mean_pairwise_cosine(summary["out"]) > 0.9)
