"""Global BatchNorm where the recipe calls for it: with several processes, methods whose papers
normalise over the global batch get it by default (unless --no-sync-batchnorm), which makes a
2-process step equal one process on the concatenated batch; without it the two differ."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.nn.global_batchnorm import GlobalBatchNorm, convert_to_global_batchnorm
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import GLOBAL_BATCHNORM_RECIPES, DataInfo
from contrastkit.modalities.image.training.run import global_batchnorm_choice
from contrastkit.modalities.image.views.image import SimCLRViews
from tests.ddp import run_distributed

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)
DETERMINISTIC_VIEWS = {"random_crop": False, "hflip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}


def _config(method: str = "simclr", **options) -> FitConfig:
    return FitConfig(method=method, width=0.25, **options)


@pytest.mark.parametrize("method", ["simclr", "byol", "simsiam", "directpred", "moco", "jepa", "barlowtwins",
                                    "vicreg", "tico", "mmcr", "nnclr", "swav", "dino"])
def test_the_choice_follows_the_recipe_the_flags_and_the_world_size(method):
    built = build_method(method, _config(method), TINY)
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in built.modules())
    assert has_batchnorm == (method != "jepa")  # JEPA's transformer uses LayerNorm
    on, why = global_batchnorm_choice(_config(method, devices=2), built)
    assert on == (method in GLOBAL_BATCHNORM_RECIPES and has_batchnorm)
    if on:
        assert "recipe" in why
    else:  # no BatchNorm, or a recipe that does not state global statistics (not verified: tico, mmcr, nnclr)
        assert ("no BatchNorm" in why) if not has_batchnorm else ("per-process BatchNorm" in why)
    assert global_batchnorm_choice(_config(method, devices=1, num_nodes=1), built)[0] is False
    assert global_batchnorm_choice(_config(method, devices=1, num_nodes=2), built)[0] == on  # 2 nodes
    if has_batchnorm:
        assert global_batchnorm_choice(_config(method, devices=2, sync_batchnorm=False), built) == (
            False, "--no-sync-batchnorm")
        for devices in (1, 2):  # forced even in one process (same code as the run it is compared with)
            assert global_batchnorm_choice(_config(method, devices=devices, sync_batchnorm=True), built) == (
                True, "--sync-batchnorm")


def _images() -> torch.Tensor:
    return torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def _step(method_name: str, images: torch.Tensor, convert: bool, rank: int = 0, world_size: int = 1) -> dict:
    """One training loss + backward of ``method_name`` on this rank's slice of ``images``; the gradients
    are averaged over the ranks as DDP does."""
    torch.manual_seed(0)  # the same initial weights in every process
    method = build_method(method_name, _config(method_name), TINY)
    # Each process draws its own augmentations; deterministic views make the processes comparable.
    method.views = SimCLRViews(image_size=8, channels=1, mean=TINY.mean, std=TINY.std, **DETERMINISTIC_VIEWS)
    if convert:
        convert_to_global_batchnorm(method)
    share = len(images) // world_size
    rows = slice(rank * share, (rank + 1) * share)
    batch = {"image": images[rows], "index": torch.arange(len(images))[rows],
             "label": torch.full((share,), -1, dtype=torch.long)}
    loss, _ = method.training_loss(batch)
    loss.backward()
    grads = {}
    for name, parameter in method.named_parameters():
        if parameter.grad is not None:
            grad = parameter.grad.clone()
            if world_size > 1:
                torch.distributed.all_reduce(grad)
                grad /= world_size
            grads[name] = grad
    running = {name: b.clone() for name, b in method.named_buffers() if name.endswith("running_mean")}
    return {"loss": loss.detach(), "grads": grads, "running_mean": running,
            "global_bn": sum(isinstance(m, GlobalBatchNorm) for m in method.modules())}


def _two_process_step(rank: int, world_size: int, method_name: str, images: torch.Tensor, sync: bool | None):
    config = _config(method_name, devices=world_size, sync_batchnorm=sync)
    probe = build_method(method_name, config, TINY)
    convert, _ = global_batchnorm_choice(config, probe)  # what `fit` decides for this run
    return _step(method_name, images, convert, rank, world_size)


@pytest.mark.distributed
@pytest.mark.parametrize("method_name", ["simclr", "simsiam"])
def test_recipe_default_makes_two_processes_equal_one_on_the_concatenated_batch(method_name):
    images = _images()
    single = _step(method_name, images, convert=False)
    ranks = run_distributed(_two_process_step, method_name, images, None)
    # SimCLR's gathered objective gives every rank the global loss; SimSiam's is a mean over the
    # rank's own samples, so the ranks' mean is the single-process loss.
    mean_loss = torch.stack([result["loss"] for result in ranks]).mean()
    torch.testing.assert_close(mean_loss, single["loss"], rtol=1e-5, atol=1e-6)
    for result in ranks:
        assert result["global_bn"] > 0  # the recipe switched global BatchNorm on
        for name, grad in single["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
        for name, mean in single["running_mean"].items():
            torch.testing.assert_close(result["running_mean"][name], mean, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.distributed
def test_without_global_batchnorm_the_processes_see_other_statistics():
    images = _images()
    single = _step("simclr", images, convert=False)
    ranks = run_distributed(_two_process_step, "simclr", images, False)
    assert all(result["global_bn"] == 0 for result in ranks)
    assert not torch.allclose(ranks[0]["loss"], single["loss"], rtol=1e-3)
    name = next(iter(single["running_mean"]))
    assert not torch.allclose(ranks[0]["running_mean"][name], single["running_mean"][name], rtol=1e-3)


@pytest.mark.slow
@pytest.mark.distributed
def test_summary_states_the_choice_of_a_ddp_run(tmp_path):
    run_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "contrastkit.cli", "fit", "--data", "digits", "--limit", "128", "--holdout", "0",
               "--width", "0.25", "--epochs", "1", "--batch-size", "32", "--no-report", "--no-baselines",
               "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--out", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 64
    assert summary["sync_batchnorm"] is True
    assert summary["sync_batchnorm_reason"].startswith("the method's recipe: SimCLR")
