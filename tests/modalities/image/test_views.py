"""Image views: each op checked alone against a direct computation (torch.flip, ITU-R 601 gray,
identity crop, a ramp's slope, manual normalisation and solarisation), plus the randomness
contract of two_views and seeding."""

from __future__ import annotations

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.views import BYOLViews, EvalView, SimCLRViews, defaults_for

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.247, 0.243, 0.261)
ALL_OFF = dict(random_crop=False, hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def uint8_images(batch: int, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, channels, size, size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


def only(**options) -> dict:
    return {**ALL_OFF, **options}


@pytest.mark.parametrize(
    ("channels", "size", "input_size"), [(1, 8, 8), (1, 28, 28), (3, 32, 40), (3, 16, 16)]
)
def test_shape_dtype_and_range(channels, size, input_size) -> None:
    torch.manual_seed(0)
    views = SimCLRViews(size, channels, mean=0.5, std=0.25)
    x = uint8_images(6, channels, input_size)
    first, second = views.two_views(x)
    for view in (first, second, views(x)):
        assert view.shape == (6, channels, size, size)
        assert view.dtype == torch.float32
        # Pixels in [0, 1] map to [(0 - 0.5) / 0.25, (1 - 0.5) / 0.25] = [-2, 2].
        assert view.min() >= -2 - 1e-5 and view.max() <= 2 + 1e-5


def test_flip_alone_flips_some_rows_exactly() -> None:
    torch.manual_seed(0)
    views = SimCLRViews(16, 3, mean=0.0, std=1.0, **only(hflip_p=0.5))
    x = torch.rand(64, 3, 16, 16)
    out = views(x)
    mirrored = torch.flip(x, dims=[-1])
    flipped = torch.tensor([torch.equal(o, m) for o, m in zip(out, mirrored, strict=True)])
    unchanged = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped ^ unchanged).all())  # every row is exactly one of the two
    assert 10 < int(flipped.sum()) < 54  # ~Binomial(64, 0.5)


def test_grayscale_alone_gives_itu601_luma_in_every_channel() -> None:
    views = SimCLRViews(16, 3, mean=0.0, std=1.0, **only(grayscale_p=1.0))
    x = torch.rand(4, 3, 16, 16)
    out = views(x)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for channel in range(3):
        torch.testing.assert_close(out[:, channel], luma, atol=1e-5, rtol=0)


def test_full_crop_is_identity() -> None:
    options = only(random_crop=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    views = SimCLRViews(16, 3, mean=0.0, std=1.0, **options)
    x = torch.rand(8, 3, 16, 16)
    torch.testing.assert_close(views(x), x, atol=1e-5, rtol=0)


def test_half_side_crop_of_ramp_is_a_ramp_over_the_crop() -> None:
    # Bilinear resampling is exact on a linear function. kornia maps the centres of the crop's
    # corner pixels onto the output's corner pixels, so an 8-pixel crop (area 0.25 of 16x16)
    # of the ramp x/16 resized to 16 pixels runs from x0/16 to (x0 + 7)/16 in 15 equal steps.
    torch.manual_seed(0)
    options = only(random_crop=True, crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0))
    views = SimCLRViews(16, 1, mean=0.0, std=1.0, **options)
    ramp = (torch.arange(16.0) / 16).expand(32, 1, 16, 16).contiguous()
    out = views(ramp)
    start = out[..., :1]
    expected = start + torch.arange(16.0) * (7 / 15) / 16
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-5, rtol=0)
    left_pixel = start.flatten() * 16
    torch.testing.assert_close(left_pixel, left_pixel.round(), atol=1e-4, rtol=0)
    assert left_pixel.min() >= 0 and left_pixel.max() <= 8  # inside the image
    assert len(left_pixel.round().unique()) > 3  # the crop position varies


def test_normalisation_matches_manual_formula() -> None:
    x = uint8_images(4, 3, 16)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    views = SimCLRViews(16, 3, mean=MEAN, std=STD, **ALL_OFF)
    torch.testing.assert_close(views(x), expected)
    torch.testing.assert_close(EvalView(MEAN, STD)(x), expected)
    # A float batch is taken as already in [0, 1].
    torch.testing.assert_close(EvalView(MEAN, STD)(x.float() / 255), expected)


def test_two_views_are_different_draws_from_one_call() -> None:
    views = SimCLRViews(16, 3, mean=MEAN, std=STD)
    x = uint8_images(8, 3, 16)
    torch.manual_seed(1)
    first, second = views.two_views(x)
    assert all(not torch.allclose(a, b) for a, b in zip(first, second, strict=True))
    # Same as one forward over the repeated batch [x; x] with the same randomness.
    torch.manual_seed(1)
    both = views(torch.cat([x, x]))
    torch.testing.assert_close(torch.cat([first, second]), both)


def test_two_views_crops_are_independent() -> None:
    # Crop alone: the two crops of an image differ, and view 2 is not a function of view 1
    # (the areas kept by the two views are uncorrelated across the batch).
    torch.manual_seed(0)
    options = only(random_crop=True, crop_scale=(0.1, 1.0), crop_ratio=(1.0, 1.0))
    views = SimCLRViews(16, 1, mean=0.0, std=1.0, **options)
    ramp = (torch.arange(16.0) / 16).expand(512, 1, 16, 16).contiguous()
    first, second = views.two_views(ramp)
    # A crop of side s pixels turns the ramp's step into (s - 1) / 15 / 16 (see the test above):
    # the step reads off the crop's side.
    side_first = (1 + 15 * 16 * (first[..., 8, 8] - first[..., 8, 7])).flatten()
    side_second = (1 + 15 * 16 * (second[..., 8, 8] - second[..., 8, 7])).flatten()
    correlation = torch.corrcoef(torch.stack([side_first, side_second]))[0, 1]
    assert abs(float(correlation)) < 0.15  # |r| of 512 independent pairs is < 0.15 w.p. > 0.999
    assert side_first.min() >= 5 - 1e-3 and side_first.max() <= 16 + 1e-3
    assert side_first.std() > 1


def test_same_seed_same_views() -> None:
    views = SimCLRViews(16, 3, mean=MEAN, std=STD)
    x = uint8_images(8, 3, 20)
    torch.manual_seed(5)
    a = views.two_views(x)
    torch.manual_seed(5)
    b = views.two_views(x)
    torch.manual_seed(6)
    c = views.two_views(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a[0], c[0])


def test_generator_seeds_views_and_leaves_global_state_alone() -> None:
    views = SimCLRViews(16, 3, mean=MEAN, std=STD)
    x = uint8_images(8, 3, 20)
    state = torch.get_rng_state()
    a = views.two_views(x, generator=torch.Generator().manual_seed(3))
    b = views.two_views(x, generator=torch.Generator().manual_seed(3))
    c = views.two_views(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a[0], c[0])


def test_single_channel_uses_only_brightness_and_contrast() -> None:
    views = SimCLRViews(8, 1, mean=0.5, std=0.5)
    names = [type(op).__name__ for op in views.shared]
    assert names == ["ColorJitter"]  # no flip, no grayscale for digits; see defaults_for
    jitter = views.shared[0]
    strengths = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    assert strengths == (0.4, 0.4, 0.0, 0.0)
    torch.manual_seed(0)
    # Brightness/contrast only: a constant image stays constant within each image.
    out = views.shared(torch.full((16, 1, 8, 8), 0.5))
    assert (out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))).abs().max() < 1e-6


def test_colour_jitter_changes_colour_images() -> None:
    torch.manual_seed(0)
    views = SimCLRViews(16, 3, mean=0.0, std=1.0, **only(jitter_p=1.0, jitter=(0.4, 0.4, 0.4, 0.1)))
    x = torch.rand(8, 3, 16, 16) * 0.8 + 0.1
    out = views(x)
    assert out.min() >= 0 and out.max() <= 1
    assert all(not torch.allclose(o, i, atol=1e-3) for o, i in zip(out, x, strict=True))


def test_byol_views_are_asymmetric() -> None:
    # View 1 always blurred (sigma fixed at 1 here), never solarised; view 2 (p set to 1)
    # solarised, x -> 1 - x where x >= 0.5, never blurred. Compared with a direct separable
    # Gaussian convolution with reflect padding.
    torch.manual_seed(0)
    views = BYOLViews(
        16, 3, mean=0.0, std=1.0, blur_p=(1.0, 0.0), solarize_p=(0.0, 1.0), blur_sigma=(1.0, 1.0),
        blur_kernel_size=5, random_crop=False, hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
    )
    x = torch.rand(4, 3, 16, 16)
    first, second = views.two_views(x)
    torch.testing.assert_close(second, torch.where(x < 0.5, x, 1 - x))
    taps = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / 2)
    taps = taps / taps.sum()
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 5, 5)
    blurred = torch.nn.functional.conv2d(padded, kernel, groups=3)
    torch.testing.assert_close(first, blurred, atol=1e-5, rtol=0)


def test_byol_default_probabilities() -> None:
    big, small = BYOLViews(96, 3), BYOLViews(32, 3)
    assert big.recipe["blur_p"] == (1.0, 0.1) and big.recipe["solarize_p"] == (0.0, 0.2)
    assert small.recipe["blur_p"] == (0.0, 0.0)
    assert [op.p for op in big.view_tails[0]] == [1.0]
    assert [op.p for op in big.view_tails[1]] == [0.1, 0.2]


def test_channels_last_flag() -> None:
    views = SimCLRViews(16, 3, mean=MEAN, std=STD, channels_last=True)
    out = views(uint8_images(4, 3, 16))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert EvalView(MEAN, STD, channels_last=True)(uint8_images(2)).is_contiguous(
        memory_format=torch.channels_last
    )


def test_defaults_scale_with_image_size() -> None:
    assert defaults_for(8, 1)["crop_scale"] == (0.5, 1.0)
    assert defaults_for(16, 1)["crop_scale"] == (0.25, 1.0)
    assert defaults_for(32, 3)["crop_scale"] == (0.08, 1.0)
    assert defaults_for(28, 1)["crop_scale"][0] == pytest.approx((8 / 28) ** 2)
    assert defaults_for(32, 3)["blur_p"] == 0.0
    assert (defaults_for(96, 3)["blur_p"], defaults_for(96, 3)["blur_kernel_size"]) == (0.5, 9)
    assert defaults_for(224, 3)["blur_kernel_size"] == 23  # SimCLR's ImageNet kernel
    names = [type(op).__name__ for op in SimCLRViews(96, 3).shared]
    assert names == ["RandomHorizontalFlip", "ColorJitter", "RandomGrayscale", "RandomGaussianBlur"]


def test_user_errors() -> None:
    views = SimCLRViews(16, 3, mean=MEAN, std=STD)
    with pytest.raises(DataError, match=r"\(B, 3, H, W\)"):
        views(uint8_images(2, 1, 16))
    with pytest.raises(DataError, match="dtype"):
        views(torch.zeros(2, 3, 16, 16, dtype=torch.int64))
    with pytest.raises(DataError, match="16x16"):
        SimCLRViews(16, 3, **ALL_OFF)(uint8_images(2, 3, 20))
    with pytest.raises(ConfigError, match="mean"):
        SimCLRViews(16, 3, mean=(0.5, 0.5), std=0.5)
    with pytest.raises(ConfigError, match="std"):
        EvalView(0.5, 0.0, channels=1)
    with pytest.raises(ConfigError, match="hflip_p"):
        SimCLRViews(16, 3, hflip_p=1.5)
    with pytest.raises(ConfigError, match="crop_scale"):
        SimCLRViews(16, 3, crop_scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="blur_kernel_size"):
        SimCLRViews(16, 3, blur_kernel_size=4)
