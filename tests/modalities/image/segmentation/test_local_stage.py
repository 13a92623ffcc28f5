"""The local stage (methods/gcl_local.py): its loss equals a naive loop over regions, with the
correspondence read off a coordinate image run through the same views; the encoder stays frozen; the
decoder blocks it trains load into the segmentation model (segmentation/model.py)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.core.seeding import seeded
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.segmentation.model import SegmentationModel, UNetDecoder
from contrastkit.modalities.image.views.located import crop_and_flip
from tests.modalities.image.segmentation.coordinates import coordinate_image, naive_correspondence

GRID = 4
DATA = DataInfo(channels=3, image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_samples=8)


def _local_stage(**options):
    config = FitConfig(method="gcl-local", backbone="resnet18", width=0.125,
                       extra={"gcl-local": {"grid": GRID, "local_dim": 8, **options}})
    torch.manual_seed(0)
    return build_method("gcl-local", config, DATA)


def naive_loss(maps_a, maps_b, correspondence, temperature, negatives):
    terms = []
    n = maps_a.shape[0]
    for i in range(n):
        for p in range(GRID * GRID):
            q = int(correspondence[i].flatten()[p])
            if q < 0:
                continue
            anchor = maps_a[i].flatten(0, 1)[p].double()
            images = [i] if negatives == "image" else range(n)
            scores = {(j, k): float(torch.nn.functional.cosine_similarity(
                anchor, maps_b[j].flatten(0, 1)[k].double(), dim=0)) / temperature
                for j in images for k in range(GRID * GRID)}
            terms.append(math.log(sum(math.exp(s) for s in scores.values())) - scores[i, q])
    return sum(terms) / max(1, len(terms))


@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_the_local_loss_equals_a_naive_loop_over_matched_regions(negatives):
    method = _local_stage(negatives=negatives, crop_scale=(0.2, 1.0)).train()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with seeded(7):
        loss, logs = method.training_loss({"image": images, "index": torch.arange(4), "label": -torch.ones(4)})
    with seeded(7):  # the same draws: the same views and geometry
        view_a, view_b, geometry_a, geometry_b = method.views.two_views_located(images)
    with torch.no_grad():
        maps_a, maps_b = method.local_maps(torch.cat([view_a, view_b])).chunk(2)
    # Where each region of one view is in the other, from the pixels of a coordinate image under the same crops.
    source = coordinate_image(4, 64, 64)
    coords_a, coords_b = crop_and_flip(source, geometry_a, 64), crop_and_flip(source, geometry_b, 64)
    a_to_b = naive_correspondence(coords_a, coords_b, GRID, GRID)
    b_to_a = naive_correspondence(coords_b, coords_a, GRID, GRID)
    expected = 0.5 * (naive_loss(maps_a, maps_b, a_to_b, 0.1, negatives)
                      + naive_loss(maps_b, maps_a, b_to_a, 0.1, negatives))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert logs["matched_share"] == pytest.approx(float((a_to_b >= 0).float().mean()))


def test_the_encoder_is_frozen_and_the_decoder_learns():
    method = _local_stage().train()
    assert not method.backbone.training  # BatchNorm keeps the global stage's statistics
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    loss, _ = method.training_loss({"image": images, "index": torch.arange(4), "label": -torch.ones(4)})
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.backbone.parameters())
    trained = [p for p in [*method.decoder.parameters(), *method.local_projection.parameters()]]
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)


def test_the_pretrained_decoder_blocks_load_into_the_segmentation_model():
    method = _local_stage(decoder_blocks=2)
    model = SegmentationModel(method.backbone, num_classes=2)
    missing, unexpected = model.decoder.load_state_dict(method.decoder.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("blocks.2.") for key in missing)
    scores = model(torch.randn(2, 3, 64, 64))
    assert scores.shape == (2, 2, 64, 64)


def test_decoder_and_model_refuse_what_does_not_fit():
    with pytest.raises(ConfigError, match="1 to 3 blocks"):
        UNetDecoder([8, 16, 32, 64], num_blocks=4)
    with pytest.raises(ConfigError, match="stage features"):
        SegmentationModel(torch.nn.Conv2d(3, 3, 1), num_classes=2)
    with pytest.raises(ConfigError, match="grid"):
        method = _local_stage(grid=5)
        method.training_loss({"image": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)})


def test_a_local_stage_run_leaves_the_encoder_it_was_given_as_it_was(tmp_path):
    """Through ``contrastkit fit`` (the engine): the local stage's backbone at the end, BatchNorm's running
    statistics included, is the global run's it started from (``--init``), entry for entry. Lightning
    keeps the modes it finds, so without the engine applying the stage's own train() the frozen
    encoder's BatchNorm layers would normalise with batch statistics and move their running ones."""
    from contrastkit.cli import main

    common = ["--data", "digits", "--image-size", "64", "--limit", "48", "--batch-size", "16", "--epochs", "1",
              "--warmup-epochs", "0", "--width", "0.125", "--backbone", "resnet18", "--no-report", "--no-baselines"]
    assert main(["fit", "--method", "gcl-global", *common, "--max-steps", "1", "--out", str(tmp_path / "global")]) == 0
    assert main(["fit", "--method", "gcl-local", *common, "--max-steps", "2", "--init", str(tmp_path / "global"),
                 "--out", str(tmp_path / "local")]) == 0

    def backbone(run):
        state = torch.load(tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        return {k: v for k, v in state["state_dict"].items() if k.startswith("method.backbone.")}

    given, after = backbone("global"), backbone("local")
    assert given.keys() == after.keys() and any(k.endswith("running_mean") for k in given)
    assert all(torch.equal(given[k], after[k]) for k in given)
