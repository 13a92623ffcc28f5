"""VICRegL as an image method (issue 20): its views place every feature-map cell in the source image
(checked on an image whose pixels hold their own coordinates), it builds with its loss and trains
every weight, two steps from the command line write a run folder, a run killed with SIGKILL resumes
exactly, and the collapse diagnostic flags VICRegL without its variance and covariance terms but not
VICRegL itself.

The loss is checked against a naive derivation in tests/objectives/test_objectives_vicregl.py.
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
from contrastkit.modalities.image.views.located import (
    CropGeometry,
    LocatedViews,
    crop_and_flip,
    location_grid,
    random_crop_boxes,
)
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.vicregl import VICRegL as VICRegLLoss
from tests.modalities.image.test_collapse import mean_pairwise_cosine
from tests.modalities.image.test_methods import _one_gradient_step
from tests.modalities.image.collapse_runs import collapse_run_cache
from tests.resume_harness import assert_fit_resumes_exactly

SMALL = DataInfo(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)



# -- where the cells come from --------------------------------------------------------------------------

def coordinate_images(n: int, height: int, width: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column (pixel centres at index + 0.5)."""
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    columns = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    return torch.stack([rows, columns]).expand(n, 2, height, width).contiguous()


def test_the_grid_gives_the_source_position_that_each_view_pixel_samples():
    # Bilinear resampling reproduces a linear function exactly, so a view of the coordinate image
    # holds, at each output pixel, the source position it sampled (minus the half-pixel of the
    # pixel-centre convention). With a map as fine as the view, cell (k, l) is output pixel (k, l).
    torch.manual_seed(0)
    n, height, width, size = 64, 20, 28, 12
    boxes = random_crop_boxes(n, height, width, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    flipped = torch.rand(n) < 0.5
    assert flipped.any() and not flipped.all()
    geometry = CropGeometry(boxes, flipped, (height, width))
    views = crop_and_flip(coordinate_images(n, height, width), geometry, size)  # (n, 2, size, size)
    grid = location_grid(geometry, size, size).double()  # (n, size, size, 2)
    sampled = views.permute(0, 2, 3, 1) + 0.5
    # Away from the border (where grid_sample clamps), the two agree to rounding.
    inside = ((grid[..., 0] >= 0.5) & (grid[..., 0] <= height - 0.5)
              & (grid[..., 1] >= 0.5) & (grid[..., 1] <= width - 0.5))
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(sampled[inside], grid[inside], rtol=0, atol=1e-4)


def test_crop_boxes_follow_the_requested_scale_and_ratio():
    torch.manual_seed(1)
    boxes = random_crop_boxes(4000, 32, 32, scale=(0.3, 0.6), ratio=(0.5, 2.0))
    top, left, h, w = boxes.unbind(1)
    area = h * w / (32 * 32)
    assert (area >= 0.3 - 1e-5).all() and (area <= 0.6 + 1e-5).all()
    assert ((w / h) >= 0.5 - 1e-5).all() and ((w / h) <= 2.0 + 1e-5).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32 + 1e-4).all() and (left + w <= 32 + 1e-4).all()
    # Positions uniform over the free range: the mean of top / (32 - h) is 1/2.
    assert abs(float((top / (32 - h)).mean()) - 0.5) < 0.02


def test_located_views_are_seeded_and_differ_between_the_views():
    views = LocatedViews(image_size=16, channels=3, mean=SMALL.mean, std=SMALL.std)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = views.two_views_located(images, generator=torch.Generator().manual_seed(3))
    again = views.two_views_located(images, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first[:2], again[:2]))
    assert torch.equal(first[2].boxes, again[2].boxes) and not torch.equal(first[2].boxes, first[3].boxes)
    assert first[0].shape == (8, 3, 16, 16)


# -- the method -----------------------------------------------------------------------------------------

def build(**extra) -> torch.nn.Module:
    config = FitConfig(method="vicregl", backbone="resnet18", width=0.125, projection_dim=16, extra=extra)
    return build_method("vicregl", config, SMALL)


def batch(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


def test_builds_with_its_loss_and_trains_every_weight():
    model = build()
    assert isinstance(model.objective, GatheredObjective) and type(model.objective.objective) is VICRegLLoss
    torch.manual_seed(0)
    loss, logs = model.training_loss(batch())
    assert loss.dim() == 0 and torch.isfinite(loss) and logs == {}
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert any(p.grad.abs().sum() > 0 for p in model.local_projection.parameters())
    before, after, squared_norm = _one_gradient_step(model, batch(), lr=1e-3)
    assert squared_norm > 0 and after < before


def test_the_local_term_sees_the_map_of_the_backbone():
    # At 16 pixels the CIFAR ResNet-18's map is 2 x 2; its cells are what the loss matches.
    model = build()
    maps = model.backbone.feature_map(torch.zeros(2, 3, 16, 16))
    assert maps.shape == (2, model.backbone.output_dim, 2, 2)
    seen = {}
    objective = model.objective.objective
    original = objective.loss_terms

    def spy(z_a, z_b, **extra):
        seen.update(extra)
        return original(z_a, z_b, **extra)

    objective.loss_terms = spy
    torch.manual_seed(0)
    model.training_loss(batch())
    assert seen["maps_a"].shape == (16, 2, 2, 16) and seen["grid_a"].shape == (16, 2, 2, 2)


def test_options_reach_the_loss_and_are_checked(monkeypatch):
    objective = build(vicregl={"alpha": 0.9, "num_matches": [3, 2], "local_dim": 8}).objective.objective
    assert objective.alpha == 0.9 and objective.num_matches == (3, 2)
    assert build(vicregl={"local_dim": 8}).local_projection.out_dim == 8
    with pytest.raises(ConfigError, match="alpha"):
        build(vicregl={"alhpa": 0.9})
    # A backbone without a map before pooling (e.g. a timm model through timm_adapter) is refused.
    import contrastkit.modalities.image.methods.vicregl as vicregl_method

    monkeypatch.setattr(vicregl_method, "build_backbone", lambda *args: torch.nn.Flatten())
    with pytest.raises(ConfigError, match="feature map"):
        build()


def test_two_steps_from_the_command_line_write_a_run_folder(tmp_path, capsys):
    out = tmp_path / "vicregl"
    assert main(["fit", "--method", "vicregl", "--data", "digits", "--limit", "128", "--holdout", "0",
                 "--backbone", "small-cnn", "--batch-size", "64", "--width", "0.25", "--max-steps", "2",
                 "--max-epochs", "1", "--no-report", "--no-baselines", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "vicregl"
    assert {"summary.json", "config.yaml", "metrics.csv", "embeddings.npy"} <= set(os.listdir(out))
    assert torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    assert main(["fit", "--method", "vicregl", "--data", "digits", "--temperature", "0.2", "--out", str(tmp_path / "t")]) != 0
    assert "--temperature" in capsys.readouterr().err


RESUME_OPTIONS = ["--method", "vicregl", "--data", "digits", "--limit", "320", "--holdout", "0", "--batch-size", "64",
                  "--width", "0.25", "--epochs", "3", "--no-report", "--no-baselines", "--seed", "6",
                  "--checkpoint-every-steps", "2"]


@pytest.mark.slow
def test_a_vicregl_run_killed_between_checkpoints_resumes_exactly(tmp_path):
    assert_fit_resumes_exactly(tmp_path, RESUME_OPTIONS, kill_after_step=6, seed=3)


# -- collapse -------------------------------------------------------------------------------------------

# The VICReg collapse run of tests/modalities/image/test_methods_redundancy.py (512 digits, batches of
# 64, --lr 0.3) with VICRegL, at 30 epochs (240 steps; a VICRegL step costs about 5 VICReg steps):
# without its variance and covariance terms (global and local) only the invariance terms are left,
# and the embeddings collapse. Measured: mean pairwise cosine 0.96, per-dimension std 0.018 against
# the 0.088 reference, uniformity -0.16 (flagged); VICRegL 0.03, 0.087, -2.52 (not flagged). About
# 35 s a run on the free 2-core machine.
COLLAPSE_RUN = dict(method="vicregl", data="digits", limit=512, holdout=0.0, batch_size=64, width=0.25, epochs=30,
                    lr=0.3, report=False, baselines=False, probe_every=0, seed=0)
COLLAPSE_VARIANTS = {"vicregl": {}, "invariance-only": {"vicregl": {"variance_weight": 0.0, "covariance_weight": 0.0}}}


@pytest.fixture(scope="module")
def collapse_runs(tmp_path_factory):
    return collapse_run_cache(tmp_path_factory.mktemp("vicregl-collapse"), COLLAPSE_RUN, COLLAPSE_VARIANTS)


def test_vicregl_without_variance_and_covariance_collapses_and_is_flagged(collapse_runs):
    summary = collapse_runs("invariance-only")
    assert mean_pairwise_cosine(summary["out"]) > 0.9
    assert summary["collapse"]["collapsed"], summary["collapse"]


def test_healthy_vicregl_is_not_flagged(collapse_runs):
    summary = collapse_runs("vicregl")
    assert mean_pairwise_cosine(summary["out"]) < 0.5
    assert not summary["collapse"]["collapsed"], summary["collapse"]["reasons"]
