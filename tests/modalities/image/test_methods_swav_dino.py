"""SwAV and DINO as image methods (issue 21): they build with LightlySSL's CIFAR-10 defaults, every
trained weight gets a gradient and a small step lowers the loss, the backbone runs once per crop size,
SwAV's prototypes stay on the unit sphere, are frozen for the first steps and its queue fills after
the step and joins the codes once full; DINO's teacher follows the student by EMA and its teacher
temperature warms up as documented; both train from the command line with and without local crops
(digits, and CIFAR-10 images when present), a run killed with SIGKILL resumes exactly, and a broken
variant of each is flagged by the collapse diagnostics while the healthy method is not.

The losses are checked against naive loops in tests/objectives/test_objectives_swav_dino.py; the crops
in tests/modalities/image/test_multicrop.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.dino import DINO, teacher_temperature
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.methods.swav import SwAV
from contrastkit.modalities.image.training.callbacks import objective_space_report
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.dino import DINOLoss
from contrastkit.objectives.swav import SwAVLoss
from tests.conftest import data_path
from tests.modalities.image.collapse_runs import collapse_run_cache
from tests.modalities.image.test_collapse import mean_pairwise_cosine
from tests.modalities.image.test_methods import _one_gradient_step
from tests.resume_harness import assert_fit_resumes_exactly, load_checkpoint

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)
COLOUR = DataInfo(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)
METHODS = {"swav": (SwAV, SwAVLoss), "dino": (DINO, DINOLoss)}


def build(method: str, data: DataInfo = TINY, **extra) -> torch.nn.Module:
    return build_method(method, FitConfig(method=method, width=0.125, projection_dim=16, extra=extra), data)


def batch(n: int = 16, data: DataInfo = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    shape = (n, data.channels, data.image_size, data.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


# -- building, gradients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("local_crops", [0, 3])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_builds_and_trains_every_weight_with_and_without_local_crops(method, local_crops):
    model = build(method, **{method: {"local_crops": local_crops}})
    method_type, loss_type = METHODS[method]
    assert isinstance(model, method_type) and isinstance(model.objective, GatheredObjective)
    assert type(model.objective.objective) is loss_type and model.views.num_local == local_crops
    torch.manual_seed(0)
    loss, _ = model.training_loss(batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and not any(name.startswith("target_") for name in trained)
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    before, after, squared_norm = _one_gradient_step(model, batch(), lr=1e-3)
    assert squared_norm > 0 and after < before


def test_lightly_cifar10_defaults():
    swav = build_method("swav", FitConfig(method="swav", backbone="resnet18", width=0.125), COLOUR)
    assert swav.prototypes.weight.shape == (512, 128)  # 512 prototypes of --projection-dim (128)
    assert swav.projection.layers[0].out_features == swav.backbone.output_dim  # 512 -> 512 -> 128, scaled
    loss = swav.objective.objective
    assert (loss.temperature, loss.epsilon, loss.sinkhorn_iterations, loss.num_global) == (0.1, 0.05, 3, 2)
    assert swav.queue is None and swav.freeze_prototypes_steps == 0
    assert swav.views.recipe["crop_scale"] == (0.14, 1.0) and swav.views.num_local == 0
    assert swav.views.recipe["jitter"] == (0.4, 0.4, 0.4, 0.1) and swav.views.recipe["global_blur_p"] == (0.0, 0.0)
    dino = build_method("dino", FitConfig(method="dino", backbone="resnet18", width=0.125), COLOUR)
    assert dino.projection.mlp.layers[0].out_features == 4 * dino.backbone.output_dim  # 512 -> 2048, scaled
    assert dino.projection.last_layer.weight.shape == (2048, 128)
    loss = dino.objective.objective
    assert (loss.student_temperature, loss.center_momentum, loss.center.shape) == (0.1, 0.9, (2048,))
    assert dino.teacher_temperatures == (0.04, 0.04) and dino.base_momentum == 0.99 and not dino.cosine_schedule
    assert dino.views.recipe["crop_scale"] == (0.4, 1.0) and dino.views.recipe["global_solarize_p"] == (0.0, 0.2)
    assert dino.views.recipe["jitter"] == (0.4, 0.4, 0.2, 0.1)
    local = build_method("dino", FitConfig(method="dino", extra={"dino": {"local_crops": 6}}), COLOUR)
    assert local.views.recipe["local_crop_scale"] == (0.05, 0.4) and local.views.local_size == 14


def test_options_are_checked():
    with pytest.raises(ConfigError, match="local_crops"):
        build("swav", swav={"local_crop": 2})  # a misspelt option names the right one
    with pytest.raises(ConfigError, match="queue_size"):
        build("swav", swav={"queue_size": -1})
    with pytest.raises(ConfigError, match="momentum_schedule"):
        build("dino", dino={"momentum_schedule": "linear"})
    with pytest.raises(ConfigError, match="teacher_temperature"):
        build("dino", dino={"teacher_temperature": 0})


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_backbone_runs_once_per_crop_size(method):
    model = build(method, **{method: {"local_crops": 2}})
    sizes = []
    model.backbone.register_forward_hook(lambda module, inputs, output: sizes.append(tuple(inputs[0].shape)))
    if method == "dino":
        model.target_backbone.register_forward_hook(lambda m, inputs, o: sizes.append(("teacher", *inputs[0].shape)))
    model.training_loss(batch(6))
    expected = [(12, 1, 8, 8), (12, 1, 4, 4)] + ([("teacher", 12, 1, 8, 8)] if method == "dino" else [])
    assert sizes == expected


# -- SwAV: prototypes, freezing, queue ----------------------------------------------------------------------

def _sgd_steps(model: torch.nn.Module, steps: int, lr: float = 0.5) -> list[torch.Tensor]:
    """What the engine does per step (loss, backward, the hooks around an SGD step with momentum and
    weight decay); returns the prototypes after each step."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                weight_decay=5e-4)
    after = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        torch.manual_seed(step)
        loss, _ = model.training_loss(batch(seed=step))
        loss.backward()
        model.before_optimizer_step()
        optimizer.step()
        model.after_optimizer_step(step, steps)
        after.append(model.prototypes.weight.detach().clone())
    return after


def test_swav_prototypes_are_unit_vectors_and_frozen_for_the_first_steps():
    model = build("swav", swav={"freeze_prototypes_steps": 2, "prototypes": 10})
    initial = model.prototypes.weight.detach().clone()
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(10))
    after = _sgd_steps(model, 3)
    for frozen in after[:2]:  # no update, no weight decay (renormalising unit rows moves only the last bits)
        torch.testing.assert_close(frozen, initial, rtol=0, atol=1e-7)
    assert (after[2] - initial).abs().max() > 1e-3 and int(model.steps_done) == 3
    torch.testing.assert_close(after[2].norm(dim=1), torch.ones(10))  # back on the sphere after the step
    assert "steps_done" in model.state_dict()  # the freeze reads it after a resume


def test_swav_queue_fills_after_the_step_with_the_global_crops_and_joins_the_codes_when_full():
    model = build("swav", swav={"queue_size": 32})
    seen = []
    inner = model.objective.objective
    original = inner.loss_terms
    inner.loss_terms = lambda *args, **kwargs: (seen.append(kwargs.get("queue_scores")), original(*args, **kwargs))[1]
    images = batch(16)
    torch.manual_seed(7)
    model.training_loss(images)
    assert len(model.queue) == 0 and seen[-1] is None
    model.after_optimizer_step(1, 10)
    assert len(model.queue) == 16
    torch.manual_seed(7)  # the same crops again: the stored keys are the normalised projections of both
    crops = model.views.multi_crop(images["image"])
    z = model.project_embedding(crops.map(model.backbone).flatten(0, 1)).view(2, 16, -1)
    torch.testing.assert_close(model.queue.keys(), z.transpose(0, 1).flatten(1).detach())
    model.training_loss(images)
    assert seen[-1] is None  # half full: not used yet
    model.after_optimizer_step(2, 10)
    model.training_loss(images)
    assert seen[-1].shape == (32, 2, 512)  # full: 32 past samples' two global crops against 512 prototypes


# -- DINO: teacher, temperature warm-up ------------------------------------------------------------------

def test_teacher_temperature_warms_up_linearly_then_stays():
    assert teacher_temperature(0.0, 0.04, 0.07, 0.3) == 0.04
    assert teacher_temperature(0.15, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(0.3, 0.04, 0.07, 0.3) == 0.07 == teacher_temperature(0.9, 0.04, 0.07, 0.3)
    assert teacher_temperature(0.0, 0.04, 0.07, 0.0) == 0.07  # no warm-up


def test_dino_teacher_follows_the_student_and_its_temperature_reaches_the_loss():
    model = build("dino", dino={"warmup_teacher_temperature": 0.02, "teacher_temperature": 0.06,
                                "warmup_fraction": 0.5, "momentum": 0.9})
    teacher = [p.detach().clone() for p in model.target_projection.parameters()]
    student = [p.detach().clone() for p in model.projection.parameters()]
    passed = []
    inner = model.objective.objective
    original = inner.loss_terms
    inner.loss_terms = lambda *a, **k: (passed.append(k["teacher_temperature"]), original(*a, **k))[1]
    _, logs = model.training_loss(batch())
    assert passed[-1] == logs["teacher_temperature"] == 0.02
    with torch.no_grad():
        for p in model.projection.parameters():
            p.add_(1.0)
    model.after_optimizer_step(1, 4)  # progress 1/4: half of the warm-up
    for t0, s0, t1 in zip(teacher, student, model.target_projection.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * (s0 + 1.0))  # constant momentum 0.9
    model.training_loss(batch())
    assert passed[-1] == pytest.approx(0.04)
    assert float(model.progress) == 0.25 and "progress" in model.state_dict()
    assert "objective.objective.center" in model.state_dict()


def test_dino_cosine_momentum_and_last_layer_rows_are_normalised():
    model = build("dino", dino={"momentum_schedule": "cosine", "momentum": 0.9})
    teacher = [p.detach().clone() for p in model.target_backbone.parameters()]
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    model.after_optimizer_step(5, 10)  # m_4 = 1 - 0.1 (cos(0.4 pi) + 1) / 2
    m = 1 - 0.1 * (torch.cos(torch.tensor(0.4 * torch.pi)).item() + 1) / 2
    for t0, s1, t1 in zip(teacher, model.backbone.parameters(), model.target_backbone.parameters(), strict=True):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s1)
    head = model.projection
    x = torch.randn(3, 16)
    direct = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(head.last_layer.weight, dim=1).T
    torch.testing.assert_close(head.last_layer(torch.nn.functional.normalize(x, dim=1)), direct)


def test_dino_logits_rank_bound_is_their_rank_and_reaches_the_collapse_floor():
    # The logits are a linear map of the 16-wide unit bottleneck (--projection-dim 16 here): their rank,
    # computed from the matrix, is the bound the method declares, far below the 2048 outputs.
    model = build("dino").eval()
    assert model.projection_max_rank == 16
    with torch.no_grad():
        logits = model.project_embedding(torch.randn(200, model.backbone.output_dim))
    assert logits.shape == (200, 2048)
    assert int(torch.linalg.matrix_rank(logits.double(), rtol=1e-4)) == 16  # float32 rounding: ~1e-7 of the largest
    # The fit-time snapshot passes the bound to the report, which takes its floor of min(n, d, bound).
    tiny = batch(40)["image"]
    projected = model.project_embedding(model.embed(tiny))
    report = objective_space_report(model, tiny, torch.device("cpu"), projected, batch_size=20)
    assert report["max_rank"] == 16


# -- through the command line ------------------------------------------------------------------------------

def _cli_fit(tmp_path: Path, method: str, local_crops: int, data: str = "digits", extra_args=()) -> dict:
    out = tmp_path / f"{method}-{local_crops}"
    config = tmp_path / f"{method}-{local_crops}.yaml"
    config.write_text(f"extra:\n  {method}:\n    local_crops: {local_crops}\n")
    assert main(["fit", "--method", method, "--data", data, "--config", str(config), "--holdout", "0",
                 "--batch-size", "32", "--width", "0.125", "--max-steps", "2", "--max-epochs", "1",
                 "--no-report", "--no-baselines", "--out", str(out), *extra_args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and load_checkpoint(out)["global_step"] == 2
    return summary


@pytest.mark.parametrize("local_crops", [0, 4])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_steps_from_the_command_line_with_and_without_local_crops(tmp_path, method, local_crops):
    summary = _cli_fit(tmp_path, method, local_crops, extra_args=["--limit", "128"])
    assert summary["collapse"]["n_samples"] == 128


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_steps_on_cifar10_images_with_local_crops(tmp_path, method):
    data_path("cifar10-test")
    summary = _cli_fit(tmp_path, method, 2, data="cifar10-test", extra_args=["--limit", "256"])
    assert summary["collapse"]["n_samples"] == 256


@pytest.mark.parametrize("option", [["--objective", "infonce"]])
def test_options_without_meaning_for_them_are_refused(tmp_path, option, capsys):
    for method in METHODS:
        assert main(["fit", "--method", method, "--data", "digits", *option, "--out", str(tmp_path / method)]) != 0
        assert option[0] in capsys.readouterr().err
    assert main(["fit", "--method", "dino", "--data", "digits", "--temperature", "0.2",
                 "--out", str(tmp_path / "t")]) != 0


# -- resume after SIGKILL: SwAV with its queue, frozen prototypes and local crops; DINO with local crops ---

def _resume_options(tmp_path: Path, method: str, extra: str) -> list[str]:
    config = tmp_path / f"{method}.yaml"
    config.write_text(f"extra:\n  {method}:\n{extra}")
    return ["--method", method, "--data", "digits", "--config", str(config), "--limit", "320", "--holdout", "0",
            "--batch-size", "64", "--width", "0.25", "--epochs", "3", "--no-report", "--no-baselines", "--seed", "6",
            "--checkpoint-every-steps", "2"]


@pytest.mark.slow
def test_swav_killed_between_checkpoints_resumes_exactly(tmp_path):
    # 15 steps; the queue of 128 fills in 2 steps and wraps around; the prototypes are frozen for 7 steps.
    options = _resume_options(tmp_path, "swav", "    local_crops: 2\n    queue_size: 128\n"
                                                "    freeze_prototypes_steps: 7\n")
    whole = assert_fit_resumes_exactly(tmp_path, options, kill_after_step=6, seed=3)
    assert int(load_checkpoint(whole)["state_dict"]["method.queue.filled"]) == 128


@pytest.mark.slow
def test_dino_killed_between_checkpoints_resumes_exactly(tmp_path):
    options = _resume_options(tmp_path, "dino", "    local_crops: 2\n    warmup_teacher_temperature: 0.02\n")
    whole = assert_fit_resumes_exactly(tmp_path, options, kill_after_step=6, seed=4)
    assert load_checkpoint(whole)["state_dict"]["method.objective.objective.center"].any()


# -- collapse: SwAV without the equal partition, DINO without centring -------------------------------------

# 512 digits, batches of 64, 30 epochs (240 steps), small CNN at width 0.25, one thread. Measured:
# SwAV (lr 0.3) with sinkhorn_iterations 0 (codes = softmax(s / eps): no equal partition) puts every
# image on one prototype: mean pairwise cosine of the projections 0.994, per-dimension std 0.0069
# against the floor 0.0177, uniformity -0.03; SwAV spreads them (cosine 0.04, std 0.083, uniformity
# -2.2). DINO (lr 1.0) with center_momentum 1 (the centre stays 0: sharpening without centring, the
# paper's Fig. 7) collapses to one output: cosine 0.999, effective rank 3.6 against the floor 10.2,
# std 0.0008 against 0.0044, uniformity -0.006; DINO: cosine 0.17, rank 16.4, std 0.019, uniformity
# -1.8. (At lr 0.3 DINO without centring had only come close in 240 steps: cosine 0.94, rank 10.3.)
# About 10 s a SwAV run and 35 s a DINO run on the 2-core machine.
COLLAPSE_RUN = dict(data="digits", limit=512, holdout=0.0, batch_size=64, width=0.25, epochs=30, report=False,
                    baselines=False, probe_every=0, seed=0)
COLLAPSE_VARIANTS = {
    "swav": {"method": "swav", "lr": 0.3, "extra": {}},
    "swav-no-equal-partition": {"method": "swav", "lr": 0.3, "extra": {"swav": {"sinkhorn_iterations": 0}}},
    "dino": {"method": "dino", "lr": 1.0, "extra": {}},
    "dino-no-centring": {"method": "dino", "lr": 1.0, "extra": {"dino": {"center_momentum": 1.0}}},
}


@pytest.fixture(scope="module")
def collapse_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("swav-dino-collapse")
    caches = {name: collapse_run_cache(root, {**COLLAPSE_RUN, "method": variant["method"], "lr": variant["lr"]},
                                       {name: variant["extra"]})
              for name, variant in COLLAPSE_VARIANTS.items()}
    return lambda name: caches[name](name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swav-no-equal-partition", "dino-no-centring"])
def test_broken_variants_collapse_and_are_flagged(collapse_runs, name):
    summary = collapse_runs(name)
    assert mean_pairwise_cosine(summary["out"]) > 0.95  # collapsed, by a measurement the rules do not share
    assert summary["collapse"]["collapsed"], summary["collapse"]
    assert any("collapsed towards one point" in reason for reason in summary["collapse"]["reasons"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swav", "dino"])
def test_healthy_swav_and_dino_are_not_flagged(collapse_runs, name):
    summary = collapse_runs(name)
    assert mean_pairwise_cosine(summary["out"]) < 0.5
    assert not summary["collapse"]["collapsed"], summary["collapse"]["reasons"]
