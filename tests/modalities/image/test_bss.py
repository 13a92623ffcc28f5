"""Batch Styles Standardization, checked against numpy's full 2-D FFT (a second derivation of the
amplitude and phase; the implementation uses torch's rfft2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.views import BYOLViews, SimCLRViews
from contrastkit.modalities.image.views.bss import BatchStyleStandardization, standardize_styles

EPS = 1e-3  # phase is compared where the amplitude exceeds this (elsewhere it is ill-defined)


def _spectra(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    spectrum = np.fft.fft2(images.double().numpy(), axes=(-2, -1))
    return np.abs(spectrum), np.angle(spectrum)


def _phase_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (a - b))))  # wrapped to [0, pi]


def _window(height: int, width: int, ratio: float) -> np.ndarray:
    """The low-frequency window on the full fft2 grid, written from the definition."""
    half_y, half_x = round(np.sqrt(ratio) * height / 2), round(np.sqrt(ratio) * width / 2)
    fy = np.abs(np.fft.fftfreq(height) * height)
    fx = np.abs(np.fft.fftfreq(width) * width)
    return (fy[:, None] <= half_y) & (fx[None, :] <= half_x)


@pytest.mark.parametrize("size", [(16, 16), (15, 12)])
@pytest.mark.parametrize("style", ["random", "mean"])
def test_full_window_gives_every_image_the_same_amplitude_and_keeps_phase(size, style):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, *size, generator=generator)
    out = standardize_styles(images, ratio=1.0, style=style, index=2)
    assert out.shape == images.shape and out.dtype == images.dtype
    amp_in, phase_in = _spectra(images)
    amp_out, phase_out = _spectra(out)
    target = amp_in[2] if style == "random" else amp_in.mean(axis=0)
    for i in range(len(images)):
        np.testing.assert_allclose(amp_out[i], target, rtol=1e-4, atol=1e-4)
    where = (amp_in > EPS) & (amp_out > EPS)
    assert _phase_distance(phase_out, phase_in)[where].max() < 1e-3
    # The style image itself is unchanged by its own style.
    if style == "random":
        torch.testing.assert_close(out[2], images[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.4])
def test_partial_window_swaps_only_low_frequencies(ratio):
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = standardize_styles(images, ratio=ratio, style="random", index=4)
    amp_in, phase_in = _spectra(images)
    amp_out, phase_out = _spectra(out)
    window = _window(16, 16, ratio)
    assert window[0, 0] and window.sum() < 16 * 16
    for i in range(len(images)):
        np.testing.assert_allclose(amp_out[i][:, window], amp_in[4][:, window], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(amp_out[i][:, ~window], amp_in[i][:, ~window], rtol=1e-4, atol=1e-4)
    where = (amp_in > EPS) & (amp_out > EPS)
    assert _phase_distance(phase_out, phase_in)[where].max() < 1e-3


def test_the_mean_is_standardized_at_the_smallest_window():
    # r = 0 keeps only f = 0: every image gets the style image's per-channel mean, nothing else changes.
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = standardize_styles(images, ratio=0.0, index=1)
    expected = images - images.mean(dim=(2, 3), keepdim=True) + images[1].mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_module_is_seeded_by_the_global_generator_and_checks_options():
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    step = BatchStyleStandardization(ratio_range=(1.0, 1.0))
    torch.manual_seed(5)
    first = step(images)
    torch.manual_seed(5)
    torch.testing.assert_close(step(images), first)
    amp, _ = _spectra(first)
    np.testing.assert_allclose(amp, np.broadcast_to(amp[0], amp.shape), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="ratio_range"):
        BatchStyleStandardization(ratio_range=(0.5, 0.2))
    with pytest.raises(ConfigError, match="style"):
        BatchStyleStandardization(style="median")
    with pytest.raises(DataError, match="float"):
        standardize_styles(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), 1.0, index=0)


@pytest.mark.parametrize("views_class", [SimCLRViews, BYOLViews])
def test_views_standardize_each_view_batch_separately(views_class):
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    # No random op other than BSS, no normalisation: the views are BSS of the raw batch.
    options = {"random_crop": False, "hflip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "mean": 0.0,
               "std": 1.0, "bss": {"ratio_range": [1.0, 1.0]}}
    if views_class is BYOLViews:
        options["solarize_p"] = (0.0, 0.0)
    views = views_class(16, **options)
    torch.manual_seed(0)
    first, second = views.two_views(images)
    for view in (first, second):
        amp, phase = _spectra(view)
        np.testing.assert_allclose(amp, np.broadcast_to(amp[0], amp.shape), rtol=1e-4, atol=1e-3)
        amp_in, phase_in = _spectra(images.float() / 255)
        where = (amp_in > EPS) & (amp > EPS)
        assert _phase_distance(phase, phase_in)[where].max() < 1e-3
    # Without BSS the same views are the input itself: BSS is what changed them.
    plain = views_class(16, **{**options, "bss": False})
    torch.testing.assert_close(plain.two_views(images)[0], images.float() / 255)
    with pytest.raises(ConfigError, match="extra.views.bss"):
        views_class(16, bss={"ratio": 1.0})
