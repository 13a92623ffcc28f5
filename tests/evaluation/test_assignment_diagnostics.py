"""Assignment collapse diagnostics (issue 21) and the BatchNorm recheck of the collapse verdict.

``assignment_report``'s information against the mutual information of the joint distribution
written out as a loop (sample drawn uniformly, output from its row), and closed forms: identical
rows carry 0 nats (uniform or peaked: DINO's two failures), distinct one-hot rows log n. The
BatchNorm recheck: ``batch_statistics`` gives what ``F.batch_norm`` with the batch's statistics gives
and leaves the running statistics as they were; a network whose running statistics are stale (never
updated) looks collapsed in eval mode but is not flagged, unless they are old (more than 43 updates
at momentum 0.1); a network with a constant output is flagged.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import DataError
from contrastkit.evaluation.diagnostics import (
    MIN_ASSIGNMENT_INFORMATION,
    assignment_report,
    collapse_report,
    with_assignment_checks,
)
from contrastkit.modalities.image.training.callbacks import batch_statistics, objective_space_report
from contrastkit.nn.global_batchnorm import convert_to_global_batchnorm


def mutual_information_loop(p: np.ndarray) -> float:
    """I(X; K) = sum_{x, k} P(x, k) log(P(x, k) / (P(x) P(k))) with P(x) = 1/n and P(k | x) = p[x, k]."""
    n, k = p.shape
    marginal = [sum(p[x, j] for x in range(n)) / n for j in range(k)]
    total = 0.0
    for x in range(n):
        for j in range(k):
            joint = p[x, j] / n
            if joint > 0:
                total += joint * math.log(joint / ((1 / n) * marginal[j]))
    return total


@pytest.mark.parametrize(("n", "k", "sharpness"), [(7, 5, 1.0), (12, 30, 4.0), (40, 3, 0.3)])
def test_information_equals_the_mutual_information_of_the_joint(n, k, sharpness):
    rng = np.random.default_rng(n)
    p = torch.softmax(torch.from_numpy(sharpness * rng.normal(size=(n, k))), dim=1).numpy()
    p[0] = np.eye(k)[1]  # a one-hot row: 0 log 0 terms
    report = assignment_report(p, "codes")
    assert report["codes_information"] == pytest.approx(mutual_information_loop(p), rel=1e-6, abs=1e-9)
    assert report["codes_max_information"] == pytest.approx(math.log(min(n, k)))
    entropy = [-sum(v * math.log(v) for v in row if v > 0) for row in p]
    assert report["codes_mean_entropy"] == pytest.approx(np.mean(entropy), rel=1e-6)


def test_identical_rows_carry_nothing_and_distinct_one_hot_rows_log_n():
    uniform = np.full((50, 16), 1 / 16)
    peaked = np.tile(torch.softmax(torch.arange(16.0) * 3, dim=0).numpy(), (50, 1))  # one output dominates
    for rows, kind in ((uniform, "the uniform"), (peaked, "the same")):
        report = assignment_report(rows)
        assert report["assignments_information"] == pytest.approx(0.0, abs=1e-9)
        assert report["collapsed"] and kind + " distribution" in report["reasons"][0]
    distinct = np.eye(16)[:10]
    report = assignment_report(distinct)
    assert report["assignments_information"] == pytest.approx(math.log(10)) and not report["collapsed"]
    # Half the samples on one output, half on another: log 2 nats, well above the floor.
    halves = np.eye(4)[[0] * 25 + [3] * 25]
    assert assignment_report(halves)["assignments_information"] == pytest.approx(math.log(2))
    assert MIN_ASSIGNMENT_INFORMATION < 0.1 * math.log(2)


def test_rows_must_be_distributions_and_checks_merge_into_the_report():
    with pytest.raises(DataError, match="distribution"):
        assignment_report(np.ones((4, 3)))
    z = np.random.default_rng(0).normal(size=(60, 8))
    merged = with_assignment_checks(collapse_report(z), {"bags": np.full((60, 5), 0.2), "codes": np.eye(60)})
    assert merged["collapsed"] and len(merged["reasons"]) == 1 and "bags" in merged["reasons"][0]
    assert merged["codes_information"] == pytest.approx(math.log(60)) and "effective_rank" in merged


class TinyMethod(nn.Module):
    """``embed``: Linear -> BatchNorm -> ReLU on flattened pixels; ``project_embedding``: Linear."""

    def __init__(self, pixels: int = 16, width: int = 32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(pixels, width), nn.BatchNorm1d(width), nn.ReLU())
        self.head = nn.Linear(width, 16)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images.float().flatten(1) / 255)

    def project_embedding(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)


def test_batch_statistics_normalise_with_the_batch_and_leave_the_running_statistics():
    method = TinyMethod().eval()
    bn = method.backbone[1]
    with torch.no_grad():
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(7.0)
    x = torch.randn(20, 16)
    with torch.no_grad(), batch_statistics(method):
        got = method.backbone(x)
    pre = method.backbone[0](x)
    expected = F.relu(F.batch_norm(pre, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))
    torch.testing.assert_close(got, expected.detach())
    assert bool((bn.running_mean == 3.0).all()) and bool((bn.running_var == 7.0).all())
    assert int(bn.num_batches_tracked) == 0 and not method.training
    # A global BatchNorm (multi-process runs) normalises with this process's batch, without collectives.
    converted = convert_to_global_batchnorm(copy.deepcopy(method)).eval()
    with torch.no_grad(), batch_statistics(converted):
        torch.testing.assert_close(converted.backbone(x), expected.detach())
    with torch.no_grad():  # and its own forward is back afterwards: the running statistics again
        torch.testing.assert_close(converted.backbone(x), method.backbone(x))


def test_stale_running_statistics_are_not_a_collapse_but_a_constant_output_is():
    images = torch.randint(0, 256, (300, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images[:, 0, 0] = 255  # a large mean shared by every image (as ReLU features have)
    method = TinyMethod()
    with torch.no_grad():  # pre-BN features with a mean far larger than their spread
        method.backbone[0].bias.fill_(20.0)
    method.eval()  # running statistics never updated: mean 0, variance 1
    device = torch.device("cpu")
    with torch.no_grad():
        projected = method.project_embedding(method.embed(images))
    assert collapse_report(projected)["collapsed"]  # in eval mode the outputs point one way ...
    report = objective_space_report(method, images, device, projected, batch_size=128)
    assert not report["collapsed"] and report["running_statistics_reasons"]  # ... but not with batch statistics
    # A second derivation: running statistics recomputed over all the images (cumulative average) in
    # eval mode give spread outputs too.
    bn = method.backbone[1]
    bn.reset_running_stats()
    bn.momentum = None
    method.train()
    with torch.no_grad():
        method.embed(images)
    method.eval()
    with torch.no_grad():
        assert not collapse_report(method.project_embedding(method.embed(images)))["collapsed"]

    # Old running statistics (100 updates) are trusted: the same stale network is then flagged.
    stale = TinyMethod()
    with torch.no_grad():
        stale.backbone[0].bias.fill_(20.0)
        stale.backbone[1].num_batches_tracked.fill_(100)
    stale.eval()
    with torch.no_grad():
        projected = stale.project_embedding(stale.embed(images))
    report = objective_space_report(stale, images, device, projected, batch_size=128)
    assert report["collapsed"] and "running_statistics_reasons" not in report
    stale.backbone[1].num_batches_tracked.fill_(43)  # 0.9^43 = 1.1 % of the start left: young
    assert not objective_space_report(stale, images, device, projected, batch_size=128)["collapsed"]

    constant = TinyMethod()
    with torch.no_grad():
        constant.backbone[1].weight.zero_()  # BatchNorm's output is its bias for every image
    constant.eval()
    with torch.no_grad():
        projected = constant.project_embedding(constant.embed(images))
    report = objective_space_report(constant, images, device, projected, batch_size=128)
    assert report["collapsed"] and "running_statistics_reasons" not in report
