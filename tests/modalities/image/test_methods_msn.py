"""MSN as an image method (issue 21): it builds with the patch transformer and LightlySSL's MSN
settings, every trained weight gets a gradient and a small step lowers the loss, the anchor view is
encoded from a random subset of (1 - mask_ratio) of its patches while the target view is whole, the
targets follow by EMA, it trains from the command line on digits and CIFAR-10 images, refuses a CNN
backbone, and a run killed with SIGKILL resumes exactly.

The loss is checked against loops in tests/objectives/test_objectives_msn.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.msn import MSN, random_keep
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.objectives.msn import MSNLoss
from tests.conftest import data_path
from tests.modalities.image.test_methods import _one_gradient_step
from tests.resume_harness import assert_fit_resumes_exactly, load_checkpoint

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)
COLOUR = DataInfo(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)



def build(data: DataInfo = TINY, **options) -> MSN:
    return build_method("msn", FitConfig(method="msn", width=0.125, projection_dim=16, extra={"msn": options}), data)


def batch(n: int = 16, data: DataInfo = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    shape = (n, data.channels, data.image_size, data.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


@pytest.mark.parametrize("data", [TINY, COLOUR])
def test_builds_and_trains_every_weight(data):
    model = build(data)
    assert isinstance(model.objective.objective, MSNLoss) and model.prototypes.shape == (1024, 16)
    loss = model.objective.objective
    assert (loss.temperature, loss.sharpen_temperature, loss.regularization_weight, loss.sinkhorn_iterations) == (
        0.1, 0.25, 1.0, 3)
    torch.manual_seed(0)
    value, _ = model.training_loss(batch(data=data))
    value.backward()
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert "prototypes" in trained and not any(name.startswith("target_") for name in trained)
    assert not [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    before, after, squared_norm = _one_gradient_step(model, batch(data=data), lr=1e-3)
    assert squared_norm > 0 and after < before


def test_the_anchor_is_encoded_from_a_random_subset_of_its_patches_and_the_target_whole():
    model = build(COLOUR, mask_ratio=0.25)
    assert model.encoder.num_patches == 64 and model.kept_patches == 48
    seen = []
    for encoder, name in ((model.encoder, "anchor"), (model.target_encoder, "target")):
        encoder.blocks.register_forward_hook(lambda m, inputs, out, name=name: seen.append((name, inputs[0].shape[1])))
    model.training_loss(batch(8, COLOUR))
    assert seen == [("anchor", 48), ("target", 64)]
    keep = random_keep(500, 64, 48, torch.device("cpu"))
    assert all(len(set(row.tolist())) == 48 for row in keep)  # distinct patches per image
    counts = torch.bincount(keep.flatten(), minlength=64).double()
    assert counts.min() > 0.75 * 375 and counts.max() < 1.25 * 375  # each patch kept with probability 3/4


def test_the_targets_follow_by_ema_and_options_are_checked():
    model = build(momentum=0.9)
    target = [p.detach().clone() for p in model.target_projection.parameters()]
    with torch.no_grad():
        for p in model.projection.parameters():
            p.add_(1.0)
    model.after_optimizer_step(1, 10)  # linear schedule: m_0 = 0.9 for the first update
    for t0, s1, t1 in zip(target, model.projection.parameters(), model.target_projection.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s1)
    with pytest.raises(ConfigError, match="mask_ratio"):
        build(mask_ratio=1.5)
    with pytest.raises(ConfigError, match="backbone"):
        build_method("msn", FitConfig(method="msn", backbone="resnet18"), COLOUR)


@pytest.mark.parametrize(("data", "limit"), [("digits", 128), ("cifar10-test", 256)])
def test_two_steps_from_the_command_line(tmp_path, data, limit):
    if data != "digits":
        data_path(data)
    out = tmp_path / "msn"
    assert main(["fit", "--method", "msn", "--data", data, "--holdout", "0", "--batch-size", "32", "--width",
                 "0.125", "--optimizer", "adamw", "--max-steps", "2", "--max-epochs", "1", "--limit", str(limit),
                 "--no-report", "--no-baselines", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "msn" and summary["collapse"]["n_samples"] == limit
    assert load_checkpoint(out)["global_step"] == 2


@pytest.mark.slow
def test_killed_between_checkpoints_resumes_exactly(tmp_path):
    options = ["--method", "msn", "--data", "digits", "--limit", "320", "--holdout", "0", "--batch-size", "64",
               "--width", "0.25", "--optimizer", "adamw", "--epochs", "3", "--no-report", "--no-baselines",
               "--seed", "6", "--checkpoint-every-steps", "2"]
    assert_fit_resumes_exactly(tmp_path, options, kill_after_step=6, seed=7)
