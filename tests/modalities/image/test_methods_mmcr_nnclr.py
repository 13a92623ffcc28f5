"""The MMCR and NNCLR image methods (issue 20): they build, their losses are finite with gradients,
MMCR stacks each image's k views in its own row, NNCLR fills its support set after the optimiser
step, two steps through the CLI write a run folder, an NNCLR run killed with SIGKILL resumes
exactly (the support set is state), and a deliberately collapsing variant is flagged by the
collapse diagnostics while the healthy methods are not.

The collapsing variant is MMCR without its capacity term: only lambda * mean_i ||Z_i||_*, the
nuclear norm of each image's normalised views, whose minimum (sqrt(k), reached when the k views of
an image point the same way) any constant map attains. Measured on digits (640 images, batch 64,
small CNN at width 0.25, 10 epochs = 100 steps, about 5 s a run): the mean cosine between the
projections of two different images is 1.000 (healthy MMCR 0.04, healthy NNCLR 0.10), and every
snapshot rule of :func:`contrastkit.evaluation.diagnostics.collapse_report` trips (effective rank
1.6, per-dimension std 0.0012, uniformity -0.001; healthy MMCR 57.5, 0.086, -3.5; NNCLR 74.5,
0.083, -2.9). NNCLR whose support set always returns the same key does *not* collapse, so it is not
the broken variant here: with one positive ``c`` for every anchor, NT-Xent still pushes the
predictions of different images apart (measured in a plain loop of 150 steps on digits: effective
rank 81, mean pairwise cosine 0.21, not flagged).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.sources.images import load_digits_source
from contrastkit.modalities.image.training.restore import load_method
from contrastkit.modalities.image.views.image import EvalView
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.base import normalize
from contrastkit.objectives.mmcr import MMCRLoss, nuclear_norm
from tests.resume_harness import assert_fit_resumes_exactly, load_checkpoint

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)
METHODS = ["mmcr", "nnclr"]



def build(method: str, data: DataInfo = TINY, **config) -> nn.Module:
    return build_method(method, FitConfig(method=method, width=0.125, projection_dim=16, **config), data)


def batch(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


# -- building and one loss ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_loss_is_finite_and_every_trained_part_gets_a_gradient(method):
    torch.manual_seed(0)
    model = build(method).train()
    loss, logs = model.training_loss(batch())
    assert loss.dim() == 0 and torch.isfinite(loss) and isinstance(logs, dict)
    loss.backward()
    parts = ["backbone", "projection"] + (["predictor"] if method == "nnclr" else [])
    for part in parts:
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads), f"{part} has parameters without gradient"
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"{part} gets a zero gradient"
    assert model.embed(batch()["image"]).shape[0] == 16


def test_mmcr_gives_the_objective_each_images_views_in_its_row():
    torch.manual_seed(0)
    model = build("mmcr", extra={"mmcr": {"num_views": 3}}).eval()  # eval: BN statistics fixed
    model.views = EvalView(mean=TINY.mean, std=TINY.std)  # deterministic "views": all k views alike

    class Capture(nn.Module):
        def forward(self, z, z_b=None):
            self.z = z
            return z.sum()

    model.objective = Capture()
    images = batch(5)["image"]
    model.training_loss({"image": images})
    z = model.objective.z
    assert z.shape == (5, 3, 16)
    expected = model.projection(model.embed(images))  # image i's embedding, in row i, k times
    for v in range(3):
        torch.testing.assert_close(z[:, v], expected)


def test_mmcr_options_and_defaults():
    model = build("mmcr")
    assert model.num_views == 8  # LightlySSL's MMCR example on CIFAR-10 (the paper: 40)
    assert isinstance(model.objective, GatheredObjective) and isinstance(model.objective.objective, MMCRLoss)
    assert model.objective.objective.local_weight == 0.0  # the paper's CIFAR-10 lambda
    model = build("mmcr", extra={"mmcr": {"num_views": 2, "local_weight": 0.005}})
    assert model.num_views == 2 and model.objective.objective.local_weight == 0.005
    assert model.projection[-1].bias is None  # the paper's projector has no biases
    with pytest.raises(ConfigError, match="num_views"):
        build("mmcr", extra={"mmcr": {"num_views": 1}})
    with pytest.raises(ConfigError, match="num_view"):  # a misspelt option names the right one
        build("mmcr", extra={"mmcr": {"num_view": 4}})


def test_nnclr_options_and_defaults():
    model = build("nnclr")
    assert model.support_set.size == 32  # min(4096, N / 2) for 64 samples
    assert model.objective.objective.temperature == 0.5  # LightlySSL's NTXentLoss() default
    hidden = model.projection.layers[0].out_features
    assert hidden == 4 * model.backbone.output_dim and model.predictor.layers[0].out_features == 16 * 16
    assert isinstance(model.projection.layers[-1], nn.BatchNorm1d)  # the projection ends with BN
    model = build("nnclr", temperature=0.1, objective="dcl", extra={"nnclr": {"queue_size": 10}})
    assert model.support_set.size == 10 and model.objective.objective.temperature == 0.1
    with pytest.raises(ConfigError, match="negative_cosine"):
        build("nnclr", objective="negative_cosine")  # no negatives: refused, as SimCLR refuses it


def test_nnclr_fills_its_support_set_after_the_optimiser_step_with_the_second_views():
    torch.manual_seed(0)
    model = build("nnclr").train()
    images = batch(16)
    torch.manual_seed(7)
    loss, _ = model.training_loss(images)
    assert len(model.support_set) == 0  # the loss looked up an empty support set; nothing stored yet
    model.after_optimizer_step(1, 10)
    assert len(model.support_set) == 16
    torch.manual_seed(7)  # the same views again: the stored keys are the projections of view b
    view_a, view_b = model.views.two_views(images["image"])
    z = model.projection(model.backbone(torch.cat([view_a, view_b])))
    torch.testing.assert_close(model.support_set.keys(), z[16:].detach())
    model.after_optimizer_step(2, 10)  # no new loss: nothing more is stored
    assert len(model.support_set) == 16


def test_nnclr_keeps_a_skipped_batch_out_of_its_support_set():
    torch.manual_seed(0)
    model = build("nnclr").train()
    with torch.no_grad():
        model.projection.layers[0].weight.fill_(float("nan"))
    loss, _ = model.training_loss(batch())
    assert not torch.isfinite(loss)
    model.after_optimizer_step(1, 10)  # called by the engine even when --nan-policy skip skips the batch
    assert len(model.support_set) == 0


def test_nnclr_support_set_is_in_the_state_dict():
    model = build("nnclr")
    assert {"support_set.rows", "support_set.pointer", "support_set.filled"} <= set(model.state_dict())


# -- through the command line ------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_two_steps_through_the_cli_write_a_run_folder(tmp_path, method):
    out = tmp_path / method
    assert main(["fit", "--method", method, "--data", "digits", "--limit", "128", "--holdout", "0",
                 "--backbone", "small-cnn", "--batch-size", "32", "--max-steps", "2", "--max-epochs", "1",
                 "--no-report", "--no-baselines", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["collapse"]["n_samples"] == 128
    checkpoint = load_checkpoint(out)
    assert checkpoint["global_step"] == 2
    if method == "nnclr":  # two batches of 32 second views stored, in a support set of 64
        assert int(checkpoint["state_dict"]["method.support_set.filled"]) == 64


def test_options_the_methods_do_not_use_are_refused(tmp_path, capsys):
    common = ["fit", "--data", "digits", "--limit", "64", "--out", str(tmp_path / "x")]
    assert main([*common, "--method", "mmcr", "--temperature", "0.1"]) != 0
    assert "--temperature does not apply to method 'mmcr'" in " ".join(capsys.readouterr().err.split())
    assert main([*common, "--method", "mmcr", "--objective", "infonce"]) != 0
    assert "--objective does not apply to method 'mmcr'" in " ".join(capsys.readouterr().err.split())


# Images through the command line, as tests/engine/test_engine.py's SIGKILL test: 320 digits, batches
# of 64 (5 steps an epoch), 3 epochs, a checkpoint every 2 steps. The support set holds 160 keys, so
# it fills in 3 steps and wraps around from then on: its rows and write pointer are state.
NNCLR_OPTIONS = ["--method", "nnclr", "--data", "digits", "--limit", "320", "--holdout", "0", "--batch-size", "64",
                 "--width", "0.25", "--epochs", "3", "--no-report", "--no-baselines", "--seed", "4",
                 "--checkpoint-every-steps", "2"]


@pytest.mark.slow
def test_an_nnclr_run_killed_between_step_checkpoints_resumes_exactly(tmp_path):
    whole = assert_fit_resumes_exactly(tmp_path, NNCLR_OPTIONS, kill_after_step=6, seed=2)
    assert int(load_checkpoint(whole)["state_dict"]["method.support_set.filled"]) == 160


# -- collapse ------------------------------------------------------------------------------------------

class ViewInvarianceOnly(nn.Module):
    """MMCR's local term alone, ``mean_i ||Z_i||_*`` of the normalised views, without ``-||C||_*``."""

    def forward(self, z: torch.Tensor, z_b: torch.Tensor | None = None) -> torch.Tensor:
        return nuclear_norm(normalize(z)).mean()


COLLAPSE_RUN = dict(data="digits", limit=640, holdout=0.0, epochs=10, batch_size=64, width=0.25, report=False,
                    baselines=False, seed=0)


def _fit(tmp_path: Path, method: str, broken: bool, monkeypatch) -> dict:
    from contrastkit.modalities.image.training import run

    if broken:
        def build_broken(name, config, data):
            model = build_method(name, config, data)
            model.objective = GatheredObjective(ViewInvarianceOnly(), local_loss=False)
            return model

        monkeypatch.setattr(run, "build_method", build_broken)
    name = f"{method}-{'broken' if broken else 'healthy'}"
    return run.fit(FitConfig(method=method, out=str(tmp_path / name), **COLLAPSE_RUN))


def mean_pairwise_cosine(run_dir: str, n: int = 512) -> float:
    """Mean cosine between the projections of two different digits, from the run's checkpoint (a
    measurement that shares nothing with the diagnostics' rules)."""
    method, _, _ = load_method(Path(run_dir) / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        z = method.project_embedding(method.embed(load_digits_source().images[:n])).double().numpy()
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    cosines = unit @ unit.T
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


def test_mmcr_without_its_capacity_term_collapses_and_is_flagged(tmp_path, monkeypatch):
    summary = _fit(tmp_path, "mmcr", broken=True, monkeypatch=monkeypatch)
    assert mean_pairwise_cosine(summary["out"]) > 0.95
    assert summary["collapse"]["collapsed"], summary["collapse"]


@pytest.mark.parametrize("method", METHODS)
def test_healthy_mmcr_and_nnclr_are_not_flagged(tmp_path, monkeypatch, method):
    summary = _fit(tmp_path, method, broken=False, monkeypatch=monkeypatch)
    assert mean_pairwise_cosine(summary["out"]) < 0.8  # healthy by the independent measurement
    assert not summary["collapse"]["collapsed"], summary["collapse"]["reasons"]
