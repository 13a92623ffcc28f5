"""Random image views for contrastive learning, computed on whole batches on the training device.

The SimCLR recipe (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", appendix A): random resized crop -> horizontal flip -> colour jitter
(brightness, contrast, saturation, hue; applied with probability ``jitter_p``, in random order)
-> random grayscale -> Gaussian blur -> normalisation ``(x - mean) / std``. BYOL (Grill et al.
2020, table 6) uses the same ops with asymmetric blur and solarisation probabilities per view.

Each op is a kornia augmentation that draws its own parameters for every image of the batch, so
``two_views(x)`` runs the pipeline once on the batch repeated twice, ``[x; x]`` (2B images), and
splits the result: the two views of an image are independent draws, and a single batched call is
much faster than two. On two CPU cores this gives ~5,000 source images/s for 32x32 CIFAR images
(two views each), against ~470/s for LightlySSL's per-sample PIL transform.

Randomness comes from torch's global generator (kornia samples its parameters on the CPU);
``torch.manual_seed`` makes the views reproducible. Passing ``generator=`` instead seeds a forked
copy of the global generator from it, leaving the global state untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.core.seeding import seeded
from contrastkit.modalities.image.views.bss import build_bss

SIMCLR_JITTER = (0.4, 0.4, 0.4, 0.1)
"""SimCLR colour-jitter strength s = 0.5 as (0.8 s, 0.8 s, 0.8 s, 0.2 s), the CIFAR recipe of
solo-learn and lightly (the paper's ImageNet recipe uses s = 1)."""
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
"""BYOL's colour jitter (Grill et al. 2020, table 6)."""
BLUR_SIGMA = (0.1, 2.0)
"""SimCLR / BYOL: Gaussian blur sigma drawn uniformly from [0.1, 2.0]."""
SMALLEST_CROP_SIDE = 8
"""Pixels of source image the smallest default random crop keeps on a side (see defaults_for)."""


def defaults_for(image_size: int, channels: int = 3) -> dict[str, Any]:
    """The augmentation recipe for images of side ``image_size``, as keyword arguments of
    :class:`SimCLRViews`.

    * ``crop_scale = (clamp((8 / image_size) ** 2, 0.08, 0.5), 1.0)``. SimCLR's ImageNet and
      CIFAR recipes (and lightly/solo-learn's CIFAR ones) use a smallest area fraction of 0.08,
      which at 32x32 is a 9x9-pixel crop. On smaller images a 0.08 crop would be a few pixels
      (2x2 of an 8x8 digit: a blank or a stroke fragment, nothing a model can match to its
      partner view), so the smallest crop is kept at about 8 source pixels a side, capped at
      half the area: 8x8 digits -> (0.5, 1.0) (a 5.7-pixel crop), 16 -> (0.25, 1.0),
      28 (MNIST) -> (0.082, 1.0), >= 29 -> (0.08, 1.0).
    * Colour images: jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, flip p 0.5.
    * Other channel counts (digits, MNIST, 4- or 13-band TIFF/npz, ...): only the channel-agnostic
      ops -- crop, brightness and contrast jitter (the contrast mean is taken over all channels;
      hue, saturation and grayscale need RGB and are left out) -- and no horizontal flip: the
      single-channel data this library ships are handwritten digits, whose mirror images are not
      digits of the same class, whereas natural photographs are mirror-symmetric in distribution.
    * Gaussian blur only for images of side >= 96 (p 0.5, kernel ~10 % of the side, odd: 9
      at 96, 23 at 224 as in SimCLR); SimCLR drops blur for CIFAR, and lightly/solo-learn do
      the same for 32x32 images, where a blur erases most of the detail.
    """
    colour = channels == 3
    return {
        "crop_scale": (min(max((SMALLEST_CROP_SIDE / image_size) ** 2, 0.08), 0.5), 1.0),
        "hflip_p": 0.5 if colour else 0.0,
        "jitter": SIMCLR_JITTER if colour else (0.4, 0.4, 0.0, 0.0),
        "jitter_p": 0.8,
        "grayscale_p": 0.2 if colour else 0.0,
        "blur_p": 0.5 if image_size >= 96 else 0.0,
        "blur_kernel_size": blur_kernel_size(image_size),
    }


def blur_kernel_size(image_size: int) -> int:
    """The odd kernel size nearest below 10 % of the image side, at least 3 (SimCLR: 23 for 224)."""
    return max(3, int(0.1 * image_size) | 1)


def to_unit_float(images: Tensor, channels: int) -> Tensor:
    """A (B, C, H, W) uint8 batch scaled to float32 [0, 1]; a float batch is taken as already in
    [0, 1] and only cast to float32. Checks the shape."""
    if images.ndim != 4 or images.shape[1] != channels:
        raise DataError(
            f"Image views expect a batch of shape (B, {channels}, H, W), got {tuple(images.shape)}. "
            "Check the image source's channel count against the `channels` given to the views "
            "(1 for grayscale digits, 3 for colour)."
        )
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise DataError(
            f"Image views expect uint8 or float images, got dtype {images.dtype}; convert the "
            "batch to uint8 (0-255) or float (0-1)."
        )
    return images.float()


def _channel_stats(values: Sequence[float] | float, channels: int, name: str) -> Tensor:
    stats = torch.as_tensor(values, dtype=torch.float32).flatten()
    if stats.numel() == 1:
        stats = stats.expand(channels).clone()
    if stats.numel() != channels:
        raise ConfigError(
            f"The normalisation {name} has {stats.numel()} values but the images have {channels} "
            f"channels; give one {name} per channel (or a single value for all)."
        )
    if name == "std" and bool((stats <= 0).any()):
        raise ConfigError(f"The normalisation std must be positive, got {stats.tolist()}.")
    return stats.view(1, channels, 1, 1)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` are buffers (they follow ``.to``)."""

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float, channels: int):
        super().__init__()
        self.register_buffer("mean", _channel_stats(mean, channels, "mean"), persistent=False)
        self.register_buffer("std", _channel_stats(std, channels, "std"), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@contextlib.contextmanager
def seeded_from(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global generators (CPU, and ``device`` when it is CUDA) seeded
    from ``generator``, restoring their state afterwards; a no-op when ``generator`` is None."""
    seed = None if generator is None else int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    with seeded(seed, device):
        yield


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"The view option {name} is a probability; got {value}, give a value in [0, 1]."
        )


class SimCLRViews(nn.Module):
    """Random views of an image batch: crop, flip, colour jitter, grayscale, blur, normalise.

    Input: a uint8 (0-255) or float (0-1) batch (B, C, H, W) on any device. Output: float32
    (B, C, image_size, image_size) on the same device, normalised with ``mean`` and ``std``.
    Options left as None take :func:`defaults_for` ``(image_size, channels)``. An op whose
    probability is 0 is left out of the pipeline. With ``random_crop=False`` there is no crop, and
    the input must already be ``image_size`` pixels square.

    Args:
        image_size: side of the output views.
        channels: channels of the images (colour jitter and grayscale need 3).
        mean, std: per-channel normalisation statistics of the data (in [0, 1] units).
        random_crop: apply the random resized crop.
        crop_scale: area fraction range of the random resized crop.
        crop_ratio: aspect-ratio range of the crop (SimCLR: 3/4 to 4/3).
        hflip_p: probability of a horizontal flip.
        jitter: (brightness, contrast, saturation, hue) strengths; factors are drawn from
            ``[1 - s, 1 + s]`` (hue: a shift in ``[-s, s]`` turns of the colour wheel). For
            non-RGB images only brightness and contrast are used.
        jitter_p: probability of applying the colour jitter.
        grayscale_p: probability of converting to grayscale (RGB only).
        blur_p: probability of a Gaussian blur with sigma drawn from ``blur_sigma``.
        blur_kernel_size: odd kernel side of the blur.
        solarize_p: probability of solarising (``x -> 1 - x`` where ``x >= 0.5``; BYOL).
        channels_last: return the views in channels-last memory format.
        bss: Batch Styles Standardization (:mod:`contrastkit.modalities.image.views.bss`) after the colour ops:
            ``False``/None (off), ``True`` (defaults) or a mapping of its options
            (``ratio_range``, ``style``, ``p``). ``two_views`` standardises each view's batch
            separately, so the two views of an image get different styles. From YAML:
            ``extra: {views: {bss: true}}``.
    """

    def __init__(
        self,
        image_size: int,
        channels: int = 3,
        mean: Sequence[float] | float = 0.5,
        std: Sequence[float] | float = 0.5,
        random_crop: bool = True,
        crop_scale: tuple[float, float] | None = None,
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_p: float | None = None,
        jitter: tuple[float, float, float, float] | None = None,
        jitter_p: float | None = None,
        grayscale_p: float | None = None,
        blur_p: float | None = None,
        blur_kernel_size: int | None = None,
        blur_sigma: tuple[float, float] = BLUR_SIGMA,
        solarize_p: float = 0.0,
        channels_last: bool = False,
        bss: bool | dict | None = None,
    ):
        super().__init__()
        if image_size < 1 or channels < 1:
            raise ConfigError(
                f"Image views need a positive image_size and channels, got image_size={image_size}, "
                f"channels={channels}."
            )
        defaults = defaults_for(image_size, channels)
        given = {
            "crop_scale": crop_scale,
            "hflip_p": hflip_p,
            "jitter": jitter,
            "jitter_p": jitter_p,
            "grayscale_p": grayscale_p,
            "blur_p": blur_p,
            "blur_kernel_size": blur_kernel_size,
        }
        recipe = {name: defaults[name] if value is None else value for name, value in given.items()}
        recipe.update(crop_ratio=crop_ratio, blur_sigma=blur_sigma, solarize_p=solarize_p)
        self.image_size = image_size
        self.channels = channels
        self.channels_last = channels_last
        self.recipe = recipe
        if recipe["blur_kernel_size"] < 1 or recipe["blur_kernel_size"] % 2 == 0:
            raise ConfigError(
                f"blur_kernel_size must be a positive odd number, got {recipe['blur_kernel_size']}."
            )
        self.crop = self._crop(recipe["crop_scale"], crop_ratio) if random_crop else None
        tail = self._tail_ops(recipe["blur_p"], solarize_p)
        self.shared = nn.Sequential(*self._colour_ops(recipe), *tail)
        self.normalize = Normalize(mean, std, channels)
        self.bss = build_bss(bss)

    # -- construction ---------------------------------------------------------------------------

    def _crop(self, scale: tuple[float, float], ratio: tuple[float, float]) -> nn.Module:
        low, high = scale
        if not 0.0 < low <= high <= 1.0 or not 0.0 < ratio[0] <= ratio[1]:
            raise ConfigError(
                f"crop_scale must satisfy 0 < low <= high <= 1 and crop_ratio 0 < low <= high; got "
                f"crop_scale={scale}, crop_ratio={ratio}."
            )
        # 'resample' mode crops and resizes with one batched affine warp (2-3x faster on CPU than
        # slicing each crop out). kornia maps the centres of the crop box's corner pixels onto
        # those of the output (torchvision maps the pixel edges instead): the two differ by
        # less than one source pixel in where the view's border samples fall.
        return K.RandomResizedCrop(
            (self.image_size, self.image_size),
            scale=(low, high),
            ratio=ratio,
            cropping_mode="resample",
            align_corners=False,
        )

    def _colour_ops(self, recipe: dict[str, Any]) -> list[nn.Module]:
        ops: list[nn.Module] = []
        _check_probability("hflip_p", recipe["hflip_p"])
        if recipe["hflip_p"] > 0:
            ops.append(K.RandomHorizontalFlip(p=recipe["hflip_p"]))
        brightness, contrast, saturation, hue = recipe["jitter"]
        if self.channels != 3:
            # Saturation and hue need RGB; brightness and contrast work on any channel count.
            saturation = hue = 0.0
        _check_probability("jitter_p", recipe["jitter_p"])
        if recipe["jitter_p"] > 0 and any(s > 0 for s in (brightness, contrast, saturation, hue)):
            ops.append(K.ColorJitter(brightness, contrast, saturation, hue, p=recipe["jitter_p"]))
        _check_probability("grayscale_p", recipe["grayscale_p"])
        if recipe["grayscale_p"] > 0 and self.channels == 3:
            ops.append(K.RandomGrayscale(p=recipe["grayscale_p"]))
        return ops

    def _tail_ops(self, blur_p: float, solarize_p: float) -> list[nn.Module]:
        """Blur and solarisation: the ops whose probabilities BYOL sets per view."""
        ops: list[nn.Module] = []
        _check_probability("blur_p", blur_p)
        _check_probability("solarize_p", solarize_p)
        if blur_p > 0:
            kernel = self.recipe["blur_kernel_size"]
            ops.append(K.RandomGaussianBlur((kernel, kernel), self.recipe["blur_sigma"], p=blur_p))
        if solarize_p > 0:
            # thresholds=0, additions=0: the fixed threshold 0.5 and no brightness shift (BYOL).
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
        return ops

    # -- application ----------------------------------------------------------------------------

    def _geometry_and_colour(self, images: Tensor) -> Tensor:
        x = to_unit_float(images, self.channels)
        if self.crop is not None:
            x = self.crop(x)
        elif x.shape[-2:] != (self.image_size, self.image_size):
            raise DataError(
                f"Without the random crop (random_crop=False) the images must already be "
                f"{self.image_size}x{self.image_size}, got {tuple(x.shape[-2:])}; resize the "
                "source (image_size option) or enable the crop."
            )
        return self.shared(x)

    def _styled_halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The two view batches of ``[x; x]``, each with its own standardised style when BSS is on."""
        first, second = x.chunk(2)
        if self.bss is not None:
            first, second = self.bss(first), self.bss(second)
        return first, second

    def _finish(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One random view of each image: (B, C, H, W) -> (B, C, image_size, image_size)."""
        with seeded_from(generator, images.device):
            x = self._geometry_and_colour(images)
            return self._finish(x if self.bss is None else self.bss(x))

    def two_views(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Two independent random views of each image, from one pipeline call on ``[x; x]``."""
        with seeded_from(generator, images.device):
            views = self._geometry_and_colour(torch.cat([images, images]))
            if self.bss is not None:
                return tuple(self._finish(view) for view in self._styled_halves(views))
        first, second = self._finish(views).chunk(2)
        return first, second


class BYOLViews(SimCLRViews):
    """BYOL's asymmetric views (Grill et al. 2020, table 6): view 1 is always blurred and never
    solarised, view 2 is blurred with probability 0.1 and solarised with probability 0.2; the
    other ops are shared (jitter (0.4, 0.4, 0.2, 0.1) for RGB).

    ``blur_p`` and ``solarize_p`` are (view 1, view 2) pairs. As with SimCLR's recipe the blur is
    dropped for images smaller than 96 pixels (solo-learn's CIFAR BYOL recipe does the same),
    so the default ``blur_p`` is (1.0, 0.1) from 96 pixels up and (0.0, 0.0) below.
    ``two_views`` runs the shared ops once on ``[x; x]`` and each view's blur/solarise on its
    half; ``forward`` gives view-1 images.
    """

    def __init__(
        self,
        image_size: int,
        channels: int = 3,
        mean: Sequence[float] | float = 0.5,
        std: Sequence[float] | float = 0.5,
        blur_p: tuple[float, float] | None = None,
        solarize_p: tuple[float, float] = (0.0, 0.2),
        jitter: tuple[float, float, float, float] | None = None,
        **options: Any,
    ):
        if jitter is None:
            jitter = BYOL_JITTER if channels == 3 else (0.4, 0.4, 0.0, 0.0)
        if blur_p is None:
            blur_p = (1.0, 0.1) if image_size >= 96 else (0.0, 0.0)
        super().__init__(
            image_size, channels, mean, std, jitter=jitter, blur_p=0.0, solarize_p=0.0, **options
        )
        self.recipe.update(blur_p=blur_p, solarize_p=solarize_p)
        self.view_tails = nn.ModuleList(
            nn.Sequential(*self._tail_ops(blur, solarize))
            for blur, solarize in zip(blur_p, solarize_p, strict=True)
        )

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with seeded_from(generator, images.device):
            x = self.view_tails[0](self._geometry_and_colour(images))
            return self._finish(x if self.bss is None else self.bss(x))

    def two_views(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        # BSS comes last, after each view's blur and solarisation (as SimCLR's views apply it after
        # their blur): a view batch then shares one low-frequency amplitude spectrum, as BSS defines.
        with seeded_from(generator, images.device):
            first, second = self._geometry_and_colour(torch.cat([images, images])).chunk(2)
            first, second = self.view_tails[0](first), self.view_tails[1](second)
            if self.bss is not None:
                first, second = self.bss(first), self.bss(second)
        return self._finish(first), self._finish(second)


class EvalView(nn.Module):
    """The deterministic view for embedding and probing: uint8 -> float [0, 1] -> normalise.

    A float input is taken as already in [0, 1]. The number of channels is that of ``mean``
    (give one value per channel)."""

    def __init__(
        self,
        mean: Sequence[float] | float,
        std: Sequence[float] | float,
        channels: int | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        if channels is None:
            channels = torch.as_tensor(mean).numel()
        self.channels = channels
        self.channels_last = channels_last
        self.normalize = Normalize(mean, std, channels)

    def forward(self, images: Tensor) -> Tensor:
        x = self.normalize(to_unit_float(images, self.channels))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

