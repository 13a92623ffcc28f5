"""The masked-prediction methods' own pieces: MAE's patches and its loss on masked patches only,
wav2vec 2.0's and HuBERT's losses as their methods compute them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.modalities.audio.cli import DEFAULTS
from contrastkit.modalities.audio.methods import hubert, mae, wav2vec2
from contrastkit.modalities.audio.methods.mae import normalize_patches, patchify, unpatchify
from contrastkit.modalities.audio.targets import FrameTargets

OPTIONS = {**DEFAULTS, "width": 16, "depth": 2, "projection_dim": 8, "crop_seconds": 0.4}


def test_patchify_then_unpatchify_is_exact_and_patches_are_raster_blocks():
    spectrogram = torch.randn(3, 40, 24)
    patches = patchify(spectrogram, 8, 4)
    assert patches.shape == (3, 5 * 6, 32)
    assert torch.equal(unpatchify(patches, 5, 8, 4), spectrogram)
    for row in range(5):
        for column in range(6):
            block = spectrogram[:, row * 8:(row + 1) * 8, column * 4:(column + 1) * 4]
            assert torch.equal(patches[:, row * 6 + column], block.reshape(3, 32))


def test_the_mae_loss_is_the_normalised_error_on_the_masked_patches_only():
    torch.manual_seed(0)
    method = mae.build({**OPTIONS, "mask_ratio": 0.8}, 8000)
    generator = torch.Generator().manual_seed(1)
    batch = {"wave": 0.1 * torch.randn(4, 4000, generator=generator), "length": torch.tensor([4000, 3500, 3200, 2000])}
    method.begin_step(seed=7, rank=0, world_size=1)
    loss, _ = method.training_loss(batch)
    # The same step's crops and masks, drawn again from the same seed, and the error written out.
    from contrastkit.modalities.audio.masking import random_patch_mask
    from contrastkit.modalities.audio.views import random_crop

    draws = method.draws(4, torch.device("cpu"))
    patches, _ = method.patches(*random_crop(batch["wave"], batch["length"], method.crop, draws))
    visible, masked = random_patch_mask(patches.shape[1], 0.8, draws)
    predictions = method.reconstruct(patches, visible, masked)
    errors = []
    for i in range(4):
        for slot, patch in enumerate(masked[i].tolist()):
            target = patches[i, patch]
            target = (target - target.mean()) / torch.sqrt(target.var() + 1e-6)
            errors.append(float(((predictions[i, slot] - target) ** 2).mean().detach()))
    assert loss.item() == pytest.approx(np.mean(errors), rel=1e-5)
    assert masked.shape == (4, 40) and visible.shape == (4, 10)
    torch.testing.assert_close(normalize_patches(patches).mean(dim=-1), torch.zeros(4, 50), rtol=0, atol=1e-5)


def test_mae_embeds_a_clip_the_same_alone_and_in_a_padded_batch():
    torch.manual_seed(0)
    method = mae.build(OPTIONS, 8000).eval()
    generator = torch.Generator().manual_seed(2)
    waves = 0.1 * torch.randn(2, 5000, generator=generator)
    lengths = torch.tensor([5000, 2400])
    waves[1, 2400:] = 0  # a batch pads with zeros (AudioClips.batch)
    together = method.embed({"wave": waves, "length": lengths})
    alone = method.embed({"wave": waves[1:, :2400], "length": lengths[1:]})
    torch.testing.assert_close(together[1:], alone, rtol=1e-4, atol=1e-5)


def test_wav2vec2_trains_a_step_with_both_terms_and_anneals_its_temperature():
    torch.manual_seed(0)
    method = wav2vec2.build(OPTIONS, 8000)
    batch = {"wave": 0.1 * torch.randn(3, 4000), "length": torch.tensor([4000, 3300, 2500])}
    method.begin_step(seed=3, rank=0, world_size=1)
    loss, logs = method.training_loss(batch)
    assert loss.item() == pytest.approx(logs["contrastive"] + 0.1 * logs["diversity"], rel=1e-5)
    loss.backward()
    for name in ("quantizer.to_logits.weight", "quantizer.codebook", "backbone.mask_embedding",
                 "backbone.frontend.convs.0.weight"):
        assert dict(method.named_parameters())[name].grad.abs().sum() > 0, name
    method.after_optimizer_step(10, 20)
    assert float(method.quantizer.temperature) < 2.0


def test_hubert_reads_the_targets_of_its_crops_frames():
    torch.manual_seed(0)
    method = hubert.build({**OPTIONS, "clusters": 5}, 8000)
    lengths = torch.tensor([4000, 3300])
    frames = [method.backbone.frontend.frames(int(n)) for n in lengths]
    ids = torch.arange(sum(frames)) % 5
    method.targets = FrameTargets(ids, torch.tensor([0, frames[0], sum(frames)]), 5)
    batch = {"wave": 0.1 * torch.randn(2, 4000), "length": lengths, "index": torch.tensor([1, 0])}
    method.begin_step(seed=5, rank=0, world_size=1)
    loss, _ = method.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and method.cluster_embeddings.grad.abs().sum() > 0
