"""Barlow Twins, VICReg and TiCo as image methods (issue 20): they build, their loss is finite and
trains every weight, two steps from the command line write a run folder, a TiCo run killed with
SIGKILL resumes exactly (EMA target and running covariance included), and the collapse diagnostic
flags VICReg without its variance and covariance terms but not VICReg itself.

The losses themselves are checked against naive loops in tests/objectives/test_objectives_redundancy.py.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.barlow_twins import BarlowTwins
from contrastkit.objectives.tico import TiCo as TiCoLoss
from contrastkit.objectives.vicreg import VICReg
from tests.modalities.image.test_collapse import mean_pairwise_cosine
from tests.modalities.image.test_methods import _one_gradient_step
from tests.modalities.image.collapse_runs import collapse_run_cache
from tests.resume_harness import assert_fit_resumes_exactly

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)
METHODS = {"barlowtwins": BarlowTwins, "vicreg": VICReg, "tico": TiCoLoss}


def build(method: str, **extra) -> torch.nn.Module:
    return build_method(method, FitConfig(method=method, width=0.125, projection_dim=16, extra=extra), TINY)


def batch(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_builds_with_its_loss_and_trains_every_weight(method):
    model = build(method)
    assert isinstance(model.objective, GatheredObjective) and type(model.objective.objective) is METHODS[method]
    torch.manual_seed(0)
    loss, logs = model.training_loss(batch())
    assert loss.dim() == 0 and torch.isfinite(loss) and logs == {}
    loss.backward()
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(not name.startswith("target_") for name in trained)
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # One small step along the gradient lowers the loss of the same batch (same views, same state).
    before, after, squared_norm = _one_gradient_step(model, batch(), lr=1e-3)
    assert squared_norm > 0 and after < before


def test_options_reach_the_loss_and_are_checked():
    assert build("barlowtwins", barlowtwins={"redundancy_weight": 0.1}).objective.objective.redundancy_weight == 0.1
    vicreg = build("vicreg", vicreg={"variance_weight": 0.0, "covariance_weight": 0.0}).objective.objective
    assert (vicreg.invariance_weight, vicreg.variance_weight, vicreg.covariance_weight) == (25.0, 0.0, 0.0)
    tico = build("tico", tico={"covariance_weight": 4.0, "momentum": 0.9})
    assert tico.objective.objective.covariance_weight == 4.0 and tico.base_momentum == 0.9
    assert tico.objective.objective.covariance.shape == (16, 16)  # allocated at --projection-dim
    with pytest.raises(ConfigError, match="variance_weight"):
        build("vicreg", vicreg={"varaince_weight": 0.0})
    with pytest.raises(ConfigError, match="momentum"):
        build("tico", tico={"momentum": 1.5})


def test_tico_updates_its_running_covariance_and_its_target_only_as_documented():
    model = build("tico")
    covariance = model.objective.objective.covariance
    target = [p.clone() for p in model.target_projection.parameters()]
    torch.manual_seed(0)
    model.training_loss(batch())[0].backward()
    assert covariance.any()  # updated in place by the step's loss
    assert all(torch.equal(a, b) for a, b in zip(target, model.target_projection.parameters()))
    with torch.no_grad():
        for p in model.projection.parameters():
            p.add_(1.0)
    model.after_optimizer_step(1, 10)
    assert not all(torch.equal(a, b) for a, b in zip(target, model.target_projection.parameters()))


def _cli_fit(tmp_path, method: str) -> dict:
    out = tmp_path / method
    assert main(["fit", "--method", method, "--data", "digits", "--limit", "128", "--holdout", "0",
                 "--backbone", "small-cnn", "--batch-size", "64", "--width", "0.25", "--max-steps", "2",
                 "--max-epochs", "1", "--no-report", "--no-baselines", "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_steps_from_the_command_line_write_a_run_folder(tmp_path, method):
    summary = _cli_fit(tmp_path, method)
    out = tmp_path / method
    assert summary["method"] == method
    assert {"summary.json", "config.yaml", "metrics.csv", "embeddings.npy"} <= set(os.listdir(out))
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    if method == "tico":
        assert checkpoint["state_dict"]["method.objective.objective.covariance"].any()


@pytest.mark.parametrize("option", [["--temperature", "0.2"], ["--objective", "infonce"]])
def test_options_without_meaning_for_them_are_refused(tmp_path, option, capsys):
    for method in METHODS:
        assert main(["fit", "--method", method, "--data", "digits", *option, "--out", str(tmp_path / method)]) != 0
        assert option[0] in capsys.readouterr().err


# -- resume after SIGKILL: TiCo holds the most state (EMA target, running covariance) ----------------

RESUME_OPTIONS = ["--method", "tico", "--data", "digits", "--limit", "320", "--holdout", "0", "--batch-size", "64",
                  "--width", "0.25", "--epochs", "3", "--no-report", "--no-baselines", "--seed", "5",
                  "--checkpoint-every-steps", "2"]


@pytest.mark.slow
def test_tico_killed_between_checkpoints_resumes_exactly(tmp_path):
    assert_fit_resumes_exactly(tmp_path, RESUME_OPTIONS, kill_after_step=6, seed=2)


# -- collapse: VICReg with its invariance term alone ---------------------------------------------------

# 512 digits, batches of 64, 60 epochs (480 steps) at --lr 0.3 (0.075 at batch 64): VICReg's
# invariance term alone has collapsed by then (measured: mean pairwise cosine of the projections
# 0.99, per-dimension std 0.010 against the 0.018 floor, uniformity -0.05), while VICReg spreads
# them (cosine 0.08, per-dimension std 0.084 against 1 / sqrt(128) = 0.088, uniformity -2.4).
# About 15 s a run on the 2-core machine.
COLLAPSE_RUN = dict(method="vicreg", data="digits", limit=512, holdout=0.0, batch_size=64, width=0.25, epochs=60,
                    lr=0.3, report=False, baselines=False, probe_every=0, seed=0)
COLLAPSE_VARIANTS = {"vicreg": {}, "invariance-only": {"vicreg": {"variance_weight": 0.0, "covariance_weight": 0.0}}}


@pytest.fixture(scope="module")
def collapse_runs(tmp_path_factory):
    return collapse_run_cache(tmp_path_factory.mktemp("redundancy-collapse"), COLLAPSE_RUN, COLLAPSE_VARIANTS)


def test_vicreg_without_variance_and_covariance_collapses_and_is_flagged(collapse_runs):
    summary = collapse_runs("invariance-only")
    assert mean_pairwise_cosine(summary["out"]) > 0.95  # collapsed, by a measurement the rules do not share
    assert summary["collapse"]["collapsed"], summary["collapse"]
    assert any("collapsed towards one point" in reason for reason in summary["collapse"]["reasons"])


def test_healthy_vicreg_is_not_flagged(collapse_runs):
    summary = collapse_runs("vicreg")
    assert mean_pairwise_cosine(summary["out"]) < 0.5
    assert not summary["collapse"]["collapsed"], summary["collapse"]["reasons"]
