"""MAE (issue 22): patches in MAE's layout (a loop over pixels), the per-patch normalisation and the
loss against loops, the loss reads the masked patches only (targets at visible positions perturbed:
no change; at a masked one: a change), the encoder sees the visible patches only and the decoder
predicts the masked ones, the masks are uniform random splits, ``embed`` is the unmasked ViT, the
options are checked, and ``contrastkit fit --method mae --backbone vit-micro`` runs on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.export import export_encoder
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.mae import MAE, patchify, random_masking
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.objectives import get
from contrastkit.objectives.masked_pixels import masked_pixel_regression, normalize_patches
from tests.conftest import data_path
from tests.modalities.image.test_methods import _one_gradient_step
from tests.resume_harness import load_checkpoint

TINY = DataInfo(channels=1, image_size=8, mean=(0.3,), std=(0.3,), num_samples=64)
COLOUR = DataInfo(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=64)



def build(data: DataInfo = COLOUR, backbone: str = "vit-micro", **options) -> MAE:
    torch.manual_seed(0)
    config = FitConfig(method="mae", backbone=backbone, width=0.125, extra={"mae": options})
    return build_method("mae", config, data).train()


def batch(n: int = 8, data: DataInfo = COLOUR, seed: int = 0) -> dict[str, torch.Tensor]:
    shape = (n, data.channels, data.image_size, data.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return {"image": images, "index": torch.arange(n), "label": torch.full((n,), -1)}


# -- the loss against loops -------------------------------------------------------------------------

def test_patchify_is_raster_order_with_the_channels_of_a_pixel_together():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    for b in range(2):
        for p in range(6):
            row, col = divmod(p, 3)
            values = [images[b, c, 4 * row + i, 4 * col + j].item()
                      for i in range(4) for j in range(4) for c in range(3)]
            np.testing.assert_array_equal(patches[b, p].numpy(), np.array(values, dtype=np.float32))


def naive_loss(predictions: np.ndarray, patches: np.ndarray, masked: np.ndarray, normalise: bool) -> float:
    """MAE's loss by loops: each masked patch's target normalised by its mean and unbiased variance."""
    total, count = 0.0, 0
    for b in range(len(predictions)):
        for m, p in enumerate(masked[b]):
            target = [float(v) for v in patches[b, p]]
            if normalise:
                mean = sum(target) / len(target)
                variance = sum((v - mean) ** 2 for v in target) / (len(target) - 1)
                target = [(v - mean) / (variance + 1e-6) ** 0.5 for v in target]
            for k, v in enumerate(target):
                total += (float(predictions[b, m, k]) - v) ** 2
                count += 1
    return total / count


@pytest.mark.parametrize("normalise", [True, False])
def test_the_loss_is_the_mean_squared_error_on_the_masked_patches_by_a_loop(normalise):
    generator = torch.Generator().manual_seed(0)
    patches = 3 * torch.randn(3, 9, 12, generator=generator, dtype=torch.float64) + 1
    masked = torch.rand(3, 9, generator=generator).argsort(dim=1)[:, :6]
    predictions = torch.randn(3, 6, 12, generator=generator, dtype=torch.float64)
    loss = masked_pixel_regression(predictions, patches, masked, norm_pix_loss=normalise)
    assert loss.item() == pytest.approx(naive_loss(predictions.numpy(), patches.numpy(), masked.numpy(), normalise),
                                        rel=1e-12)
    assert get("masked_pixel_regression", norm_pix_loss=normalise)(predictions, patches, masked_index=masked).item() \
        == pytest.approx(loss.item(), rel=1e-12)


def test_normalised_patches_have_zero_mean_and_unit_unbiased_variance():
    patches = torch.randn(4, 5, 16, dtype=torch.float64) * 7 + 3
    normalised = normalize_patches(patches)
    torch.testing.assert_close(normalised.mean(dim=-1), torch.zeros(4, 5, dtype=torch.float64), atol=1e-12, rtol=0)
    variance = patches.var(dim=-1, keepdim=True)
    torch.testing.assert_close(normalised.var(dim=-1), (variance / (variance + 1e-6)).squeeze(-1))


def test_targets_at_visible_positions_do_not_move_the_loss_and_a_masked_one_does():
    generator = torch.Generator().manual_seed(1)
    patches = torch.randn(2, 16, 12, generator=generator, dtype=torch.float64)
    visible, masked = random_masking(2, 16, 4, torch.device("cpu"))
    predictions = torch.randn(2, 12, 12, generator=generator, dtype=torch.float64)
    loss = masked_pixel_regression(predictions, patches, masked)
    changed = patches.clone()
    for b in range(2):
        changed[b, visible[b]] += 100 * torch.randn(4, 12, generator=generator, dtype=torch.float64)
    assert masked_pixel_regression(predictions, changed, masked).item() == loss.item()
    changed[0, masked[0, 3], :4] += 1.0
    assert masked_pixel_regression(predictions, changed, masked).item() != pytest.approx(loss.item(), rel=1e-6)


def test_the_method_reads_the_visible_pixels_only_through_the_encoder():
    # The method's own loss call, replayed with the visible patches' targets perturbed: unchanged.
    model = build()
    calls = []
    objective = model.objective.objective
    original = objective.forward
    objective.forward = lambda predictions, patches, masked_index=None: calls.append(
        (predictions, patches, masked_index)) or original(predictions, patches, masked_index)
    seen = []
    model.backbone.blocks.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape[1]))
    torch.manual_seed(3)
    loss, logs = model.training_loss(batch())
    (predictions, patches, masked), = calls
    assert seen == [model.num_visible] == [logs["visible_patches"]] == [16]  # 64 patches, 0.75 masked
    assert predictions.shape == (8, 48, 4 * 4 * 3) and masked.shape == (8, 48)
    visible = torch.ones(8, 64, dtype=torch.bool).scatter(1, masked, False)
    changed = torch.where(visible[:, :, None], patches + 50 * torch.randn_like(patches), patches)
    assert original(predictions, changed, masked).item() == loss.item()


def test_masks_are_uniform_random_splits_of_the_patches():
    visible, masked = random_masking(400, 16, 4, torch.device("cpu"))
    together = torch.cat([visible, masked], dim=1).sort(dim=1).values
    assert torch.equal(together, torch.arange(16).expand(400, -1))  # disjoint and covering
    counts = torch.bincount(visible.flatten(), minlength=16).double()
    assert counts.min() > 0.7 * 100 and counts.max() < 1.3 * 100  # each patch visible with probability 1/4


# -- the method ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "backbone"), [(TINY, "auto"), (COLOUR, "vit-micro")])
def test_every_weight_learns_and_a_small_step_lowers_the_loss(data, backbone):
    model = build(data, backbone)
    torch.manual_seed(0)
    loss, _ = model.training_loss(batch(data=data))
    loss.backward()
    assert not [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    before, after, squared_norm = _one_gradient_step(model, batch(data=data), lr=1e-3)
    assert squared_norm > 0 and after < before


def test_embed_is_the_unmasked_vit_on_the_eval_view():
    model = build().eval()
    images = batch(4)["image"]
    torch.manual_seed(1)
    first = model.embed(images)
    torch.manual_seed(2)  # no randomness in embed: no mask
    torch.testing.assert_close(model.embed(images), first, atol=0, rtol=0)
    torch.testing.assert_close(first, model.backbone.tokens(model.eval_view(images)).mean(dim=1))


def test_options_are_checked_and_defaults_follow_the_paper():
    model = build()
    assert model.num_visible == 16 and model.objective.objective.norm_pix_loss  # 0.75 of 64 patches masked
    assert len(model.decoder.blocks.layers) == 2 and model.decoder.embed.out_features == 16  # 32 / 2 -> 16
    assert build(mask_ratio=0.5, decoder_depth=1).num_visible == 32
    for options, message in (({"mask_ratio": 1.0}, "mask_ratio"), ({"decoder_depth": 0}, "decoder_depth"),
                             ({"norm_pix_loss": "yes"}, "norm_pix_loss"), ({"decoder_dim": 30}, "decoder_dim"),
                             ({"mask_rate": 0.5}, "mask_ratio")):
        with pytest.raises(ConfigError, match=message):
            build(**options)
    with pytest.raises(ConfigError, match="patch_size"):  # 1-pixel grey patches have no statistics
        build(TINY, "auto", patch_size=1)


@pytest.mark.parametrize(("data", "limit"), [("digits", 128), ("cifar10-test", 256)])
def test_two_steps_from_the_command_line(tmp_path, data, limit):
    if data != "digits":
        data_path(data)
    out = tmp_path / "mae"
    assert main(["fit", "--method", "mae", "--backbone", "vit-micro", "--data", data, "--holdout", "0",
                 "--batch-size", "32", "--width", "0.25", "--optimizer", "adamw", "--max-steps", "2",
                 "--max-epochs", "1", "--limit", str(limit), "--no-report", "--no-baselines", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "mae" and summary["collapse"]["n_samples"] == limit
    assert load_checkpoint(out)["global_step"] == 2
    # The encoder exports as vit-micro + normalisation (export_encoder checks embed bit for bit).
    exported = export_encoder(out / "checkpoints" / "last.ckpt", tmp_path / "encoder")
    assert json.loads((exported / "config.json").read_text())["architecture"] == "vit-micro"


def test_a_vit_that_mae_sized_itself_exports_and_reloads_as_the_explicit_vit(tmp_path):
    from contrastkit.modalities.image.encoders import build_encoder
    from contrastkit.modalities.image.export import load_exported

    out = tmp_path / "mae-auto"
    (tmp_path / "mae.yaml").write_text("extra:\n  mae: {dim: 32, depth: 2, heads: 2}\n")
    assert main(["fit", "--config", str(tmp_path / "mae.yaml"), "--method", "mae", "--data", "digits", "--holdout",
                 "0", "--batch-size", "32", "--optimizer", "adamw", "--max-steps", "1", "--max-epochs", "1",
                 "--limit", "64", "--no-report", "--no-baselines", "--out", str(out)]) == 0
    exported = export_encoder(out / "checkpoints" / "last.ckpt", tmp_path / "encoder")
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "vit" and config["width"] == 1.0
    assert {k: config["backbone_options"][k] for k in ("dim", "depth", "heads")} == {"dim": 32, "depth": 2, "heads": 2}
    method = load_checkpoint(out)  # the raw checkpoint: the trained backbone's weights, read without the exporter
    state = {k[len("method.backbone."):]: v for k, v in method["state_dict"].items() if k.startswith("method.backbone.")}
    by_hand = build_encoder("vit", in_channels=1, image_size=8, dim=32, depth=2, heads=2,
                            **{k: config["backbone_options"][k] for k in ("patch_size", "pooling", "positions")})
    by_hand.load_state_dict(state)
    reloaded = load_exported(exported)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(config["mean"]).view(1, -1, 1, 1), torch.tensor(config["std"]).view(1, -1, 1, 1)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(images), by_hand.eval()((images / 255 - mean) / std))
    with pytest.raises(ConfigError, match="explicitly sized ViT"):
        build_encoder("vit", in_channels=1, image_size=8)
