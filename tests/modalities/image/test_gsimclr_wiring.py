"""G-SimCLR and BSS reach training from the configuration: `--batch-sampler spread` puts the
pseudo-labels into the run's loader (whose batches then keep the guarantee), and `extra.views.bss`
reaches the views of every method with image views, where each view batch comes out with one
low-frequency amplitude spectrum (checked with torch's full fft2 against the same views without
BSS)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.methods import build_method
from contrastkit.modalities.image.methods.parts import DataInfo
from contrastkit.modalities.image.sources.images import load_digits_source
from contrastkit.modalities.image.training.run_data import open_run_data


def test_spread_sampler_is_used_and_batches_keep_each_pseudo_class_apart():
    config = FitConfig(data="digits", limit=240, holdout=0.0, batch_size=40, batch_sampler="spread",
                       extra={"gsimclr": {"epochs": 1, "num_clusters": 4}})
    run_data = open_run_data(config)
    module = run_data.datamodule
    assert module.pseudo_labels is not None and len(module.pseudo_labels) == 240
    module.trainer = SimpleNamespace(global_rank=0, world_size=1)
    loader = module.train_dataloader()
    labels = np.asarray(module.pseudo_labels)
    classes, counts = np.unique(labels, return_counts=True)
    batches = 240 // 40
    for batch in loader:
        in_batch = labels[batch["index"].numpy()]
        for c, n in zip(classes, counts, strict=True):
            assert (in_batch == c).sum() <= -(-n // batches)  # ceil(n_c / M)


def test_spread_sampler_refuses_several_processes():
    with pytest.raises(ConfigError, match="one process"):
        open_run_data(FitConfig(data="digits", limit=64, batch_sampler="spread", devices=2))


# -- BSS: the option reaches every method's views, and does there what BSS defines -----------------

DIGITS = DataInfo(channels=1, image_size=8, mean=(0.5,), std=(0.25,), num_samples=100)
BYOL_VIEW_METHODS = ("byol", "directpred")


def _build(method: str, extra: dict) -> torch.nn.Module:
    return build_method(method, FitConfig(method=method, backbone="small-cnn", width=0.25, extra=extra), DIGITS)


def _low_frequency_spectrum(views: torch.Tensor, r_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitudes and phases (B, C, K) of the views' pixels (normalisation undone) on the
    frequencies ``|f_y| <= round(sqrt(r) H / 2)``, ``|f_x| <= round(sqrt(r) W / 2)`` at ``r = r_min``:
    the window that BSS (Scalbert et al. 2024) replaces at the smallest area ratio it draws, so at
    every draw. Full complex fft2, not the rfft2 of the implementation."""
    pixels = views.double() * DIGITS.std[0] + DIGITS.mean[0]
    height, width = pixels.shape[-2:]
    spectrum = torch.fft.fft2(pixels)
    f_y = (torch.fft.fftfreq(height, dtype=torch.float64) * height).abs()
    f_x = (torch.fft.fftfreq(width, dtype=torch.float64) * width).abs()
    window = ((f_y <= round(math.sqrt(r_min) * height / 2))[:, None]
              & (f_x <= round(math.sqrt(r_min) * width / 2))[None, :])
    return spectrum.abs()[..., window], spectrum.angle()[..., window]


def _same_batch_views(model: torch.nn.Module, images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return model.views.two_views(images)


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam", "directpred"])
def test_bss_option_gives_each_view_batch_one_low_frequency_amplitude(method):
    plain, styled = _build(method, {}), _build(method, {"views": {"bss": True}})
    assert plain.views.bss is None
    r_min = styled.views.bss.ratio_range[0]
    images = load_digits_source().images[:32]
    # Both views, BYOL's solarised second view included: BSS runs after every view's own ops.
    checked_views = (0, 1)
    for seed in range(3):
        # The same seed gives the same crops and colours; BSS draws after them.
        before = _same_batch_views(plain, images, seed)
        after = _same_batch_views(styled, images, seed)
        for k in checked_views:
            assert not torch.allclose(after[k], before[k], atol=1e-3)  # the option changes the views
            amplitude, phase = _low_frequency_spectrum(after[k], r_min)
            amplitude_before, phase_before = _low_frequency_spectrum(before[k], r_min)
            # Without BSS the images' low-frequency amplitudes differ: the check below can fail.
            assert (amplitude_before - amplitude_before[:1]).abs().max() > 0.5
            # With it, every image of the view batch has the same ones ...
            torch.testing.assert_close(amplitude, amplitude[:1].expand_as(amplitude), atol=1e-4, rtol=1e-4)
            # ... those of one image of the batch (the style image) ...
            distance = (amplitude_before - amplitude[:1]).abs().flatten(1).max(dim=1).values
            assert distance.min() < 1e-4, distance
            # ... and each image keeps its own phase (its content) where the amplitude is not ~0.
            where = (amplitude_before > 1e-3) & (amplitude > 1e-3)
            wrapped = torch.remainder(phase - phase_before + math.pi, 2 * math.pi) - math.pi
            assert wrapped[where].abs().max() < 1e-4


@pytest.mark.parametrize("method", BYOL_VIEW_METHODS)
def test_bss_style_is_shared_by_byols_second_view_batch(method):
    styled = _build(method, {"views": {"bss": True}})
    r_min = styled.views.bss.ratio_range[0]
    images = load_digits_source().images[:32]
    for seed in range(3):
        amplitude, _ = _low_frequency_spectrum(_same_batch_views(styled, images, seed)[1], r_min)
        torch.testing.assert_close(amplitude, amplitude[:1].expand_as(amplitude), atol=1e-4, rtol=1e-4)
