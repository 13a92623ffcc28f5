"""OBoW as an image method (issue 21): it builds with the paper's ResNet-18 configuration and BYOL's
views, every trained weight gets a gradient and a small step lowers the loss, the teacher's maps are
the last stages of the backbone (the pooled last map is the backbone's output), the vocabulary is a
queue that receives, after each step, one 3 x 3-averaged teacher feature per image (checked against
every window of the image's maps by a loop) and never changes with ``update_vocabulary: false``, the
teacher follows the student by EMA, it trains from the command line with and without local crops,
and a run killed with SIGKILL resumes exactly.

The bag of words and the loss are checked against loops in tests/objectives/test_objectives_obow.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.obow import OBoW, stage_maps, trim_border
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.views.image import BYOLViews
from contrastkit.objectives.obow import OBoWLoss
from tests.conftest import data_path
from tests.modalities.image.test_methods import _one_gradient_step
from tests.resume_harness import assert_fit_resumes_exactly, load_checkpoint

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)
COLOUR = DataInfo(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)



def build(data: DataInfo = TINY, backbone: str = "auto", **options) -> OBoW:
    return build_method("obow", FitConfig(method="obow", backbone=backbone, width=0.125, projection_dim=16,
                                          extra={"obow": {"num_words": 64, **options}}), data)


def batch(n: int = 16, data: DataInfo = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    shape = (n, data.channels, data.image_size, data.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


@pytest.mark.parametrize(("data", "backbone", "local_crops"), [(TINY, "auto", 0), (TINY, "auto", 3),
                                                                (COLOUR, "resnet18", 2)])
def test_builds_and_trains_every_weight(data, backbone, local_crops):
    model = build(data, backbone, local_crops=local_crops)
    assert all(isinstance(o.objective, OBoWLoss) for o in model.objectives) and len(model.objectives) == 2
    torch.manual_seed(0)
    loss, logs = model.training_loss(batch(data=data))
    assert loss.dim() == 0 and torch.isfinite(loss) and set(logs) == {"loss_level0", "loss_level1"}
    loss.backward()
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and not any(name.startswith("target_") for name in trained)
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    before, after, squared_norm = _one_gradient_step(model, batch(data=data), lr=1e-3)
    assert squared_norm > 0 and after < before


def test_paper_defaults_and_byol_views():
    model = build_method("obow", FitConfig(method="obow", backbone="resnet18", width=0.125), COLOUR)
    assert [v.size for v in model.vocabularies] == [8192, 8192] and model.kappa == 5.0
    assert [v.dim for v in model.vocabularies] == [32, 64]  # ResNet-18 stages 3 and 4 at width 1/8
    assert [o.objective.inverse_temperature for o in model.objectives] == [10.0, 10.0]
    assert model.generators[0].mlp.layers[0].out_features == 2 * model.backbone.output_dim
    assert model.base_momentum == 0.99 and model.views.num_local == 0
    byol = BYOLViews(32, 3, (0.5,) * 3, (0.25,) * 3).recipe
    ours = model.views.recipe
    for key in ("crop_scale", "jitter", "jitter_p", "grayscale_p", "hflip_p"):
        assert ours[key] == byol[key], key
    assert ours["global_blur_p"] == tuple(byol["blur_p"]) and ours["global_solarize_p"] == tuple(byol["solarize_p"])


def test_options_are_checked():
    with pytest.raises(ConfigError, match="num_words"):
        build(num_word=3)
    with pytest.raises(ConfigError, match="levels"):
        build(levels=3)
    with pytest.raises(ConfigError, match="kappa"):
        build(kappa=0)


@pytest.mark.parametrize(("data", "backbone"), [(TINY, "auto"), (COLOUR, "resnet18")])
def test_stage_maps_are_the_backbones_last_stages(data, backbone):
    model = build(data, backbone).eval()
    images = torch.rand(3, data.channels, data.image_size, data.image_size)
    maps = stage_maps(model.backbone, images, 2)
    torch.testing.assert_close(maps[-1].mean(dim=(2, 3)), model.backbone(images))
    assert maps[0].shape[1] == model.vocabularies[0].dim and maps[1].shape[1] == model.vocabularies[1].dim
    if backbone == "resnet18":  # 32 pixels: stage 3 is 8 x 8 (border dropped -> 6 x 6), stage 4 4 x 4 (kept)
        assert [tuple(trim_border(m).shape[-2:]) for m in maps] == [(6, 6), (4, 4)]


def test_vocabulary_receives_one_averaged_teacher_feature_per_image_after_the_step():
    model = build(COLOUR, "resnet18", num_words=48)
    before = [v.rows.clone() for v in model.vocabularies]
    images = batch(16, COLOUR)
    torch.manual_seed(3)
    crops = model.views.multi_crop(images["image"])
    with torch.no_grad():
        maps = [trim_border(m) for m in stage_maps(model.target_backbone, crops.global_crops, 2)]
    torch.manual_seed(3)  # the same crops in the step
    model.training_loss(images)
    assert all(torch.equal(v.rows, b) for v, b in zip(model.vocabularies, before, strict=True))  # not yet
    model.after_optimizer_step(1, 10)
    for vocabulary, old, level in zip(model.vocabularies, before, maps, strict=True):
        assert int(vocabulary.pointer) == 16 and len(vocabulary) == 48
        assert torch.equal(vocabulary.rows[16:], old[16:])  # the oldest (initial) words go first
        window = min(3, *level.shape[-2:])
        for image in range(16):
            candidates = [level[crop * 16 + image, :, r:r + window, c:c + window].mean(dim=(1, 2))
                          for crop in range(2) for r in range(level.shape[-2] - window + 1)
                          for c in range(level.shape[-1] - window + 1)]
            distance = min(float((vocabulary.rows[image] - c).abs().max()) for c in candidates)
            assert distance < 1e-5, (image, distance)


def test_a_frozen_vocabulary_never_changes():
    model = build(update_vocabulary=False)
    before = [v.rows.clone() for v in model.vocabularies]
    for step in range(1, 3):
        model.training_loss(batch(seed=step))
        model.after_optimizer_step(step, 5)
    assert all(torch.equal(v.rows, b) for v, b in zip(model.vocabularies, before, strict=True))


def test_the_teacher_follows_the_student_with_the_cosine_schedule():
    model = build(momentum=0.9)
    teacher = [p.detach().clone() for p in model.target_backbone.parameters()]
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    model.training_loss(batch())
    model.after_optimizer_step(5, 10)  # m_4 = 1 - 0.1 (cos(0.4 pi) + 1) / 2
    m = 1 - 0.1 * (torch.cos(torch.tensor(0.4 * torch.pi)).item() + 1) / 2
    for t0, s1, t1 in zip(teacher, model.backbone.parameters(), model.target_backbone.parameters(), strict=True):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s1)


def test_generated_head_weights_are_unit_vectors_of_the_normalised_words():
    model = build().eval()
    words = model.vocabularies[1].keys()
    weights = model.generators[1](words)
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(len(words)))
    torch.testing.assert_close(model.generators[1](3.0 * words), weights)  # the words' scale does not matter
    assert F.normalize(weights, dim=1).shape == (64, model.backbone.output_dim)


# -- through the command line ------------------------------------------------------------------------------

def _cli_fit(tmp_path: Path, local_crops: int, data: str = "digits", limit: int = 128) -> dict:
    out = tmp_path / f"obow-{local_crops}"
    config = tmp_path / f"obow-{local_crops}.yaml"
    config.write_text(f"extra:\n  obow:\n    local_crops: {local_crops}\n    num_words: 256\n")
    assert main(["fit", "--method", "obow", "--data", data, "--config", str(config), "--holdout", "0",
                 "--batch-size", "32", "--width", "0.125", "--max-steps", "2", "--max-epochs", "1", "--limit",
                 str(limit), "--no-report", "--no-baselines", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "obow" and load_checkpoint(out)["global_step"] == 2
    return summary


@pytest.mark.parametrize("local_crops", [0, 2])
def test_two_steps_from_the_command_line(tmp_path, local_crops):
    assert _cli_fit(tmp_path, local_crops)["collapse"]["n_samples"] == 128


def test_two_steps_on_cifar10_images(tmp_path):
    data_path("cifar10-test")
    assert _cli_fit(tmp_path, 2, data="cifar10-test", limit=256)["collapse"]["n_samples"] == 256


def test_objective_and_temperature_are_refused(tmp_path, capsys):
    for option in (["--objective", "infonce"], ["--temperature", "0.2"]):
        assert main(["fit", "--method", "obow", "--data", "digits", *option, "--out", str(tmp_path / "x")]) != 0
        assert option[0] in capsys.readouterr().err


@pytest.mark.slow
def test_killed_between_checkpoints_resumes_exactly(tmp_path):
    # 15 steps of 64 images; the vocabulary of 192 words wraps around after 3 steps; local crops.
    config = tmp_path / "obow.yaml"
    config.write_text("extra:\n  obow:\n    local_crops: 2\n    num_words: 192\n")
    options = ["--method", "obow", "--data", "digits", "--config", str(config), "--limit", "320", "--holdout", "0",
               "--batch-size", "64", "--width", "0.25", "--epochs", "3", "--no-report", "--no-baselines",
               "--seed", "6", "--checkpoint-every-steps", "2"]
    whole = assert_fit_resumes_exactly(tmp_path, options, kill_after_step=6, seed=5)
    state = load_checkpoint(whole)["state_dict"]
    assert int(state["method.vocabularies.0.pointer"]) == (15 * 64) % 192
    assert float(state["method.objectives.0.objective.mean_min_distance"]) != 0.5
