"""Batch Styles Standardization (BSS): one style for every image of a batch.

Scalbert, Vakalopoulou & Couzinié-Devy, "Towards domain-invariant Self-Supervised Learning with
Batch Styles Standardization", ICLR 2024 (arXiv 2303.06088), Sec. 3 and Algorithm 1.

A Fourier transform splits an image ``x`` (per channel) into an amplitude ``A = |F(x)|`` and a
phase ``P = angle(F(x))``; the low-frequency amplitudes carry the "style" (colour, contrast,
texture statistics), the phase the content (Yang & Soatto 2020, FDA; Xu et al. 2021, FACT). BSS
picks one image ``j`` of the batch and writes its low-frequency amplitudes into every image::

    r        ~ U(r_min, r_max)                              (one draw per batch)
    M_r      = 1 on the centred frequency window |f_y| <= b_y, |f_x| <= b_x,
               b_y = round(sqrt(r) H / 2), b_x = round(sqrt(r) W / 2)   (area ~ r of the spectrum)
    A'_i     = M_r * A_j + (1 - M_r) * A_i                  (A_j: the style; the paper's choice)
    x'_i     = F^-1(A'_i * exp(1j * P_i))

so the images of the batch keep their own content and share one style; a contrastive loss can then
no longer tell negatives apart by their style (their domain), which is the paper's aim. With
``r = 1`` the window is the whole spectrum and every image of the batch has exactly the amplitude
spectrum ``A_j``. ``style="mean"`` uses the batch's mean amplitude ``mean_i A_i`` instead of one
image's (a variant, not the paper's). Applied to each view batch separately (see
``SimCLRViews(bss=...)``), the two views of an image get different styles while the negatives of
a view share one.

The window is symmetric under ``f -> -f``, so a real image stays real; the transform is ``rfft2``
(half the spectrum of a real image, the other half is its mirror). Outputs are not clipped to
[0, 1]: clipping would change the amplitudes again, and the views are normalised afterwards.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError

STYLES = ("random", "mean")


def low_frequency_mask(height: int, width: int, ratio: float, device: torch.device | None = None) -> Tensor:
    """The centred low-frequency window ``M_r`` in ``rfft2`` layout, bool ``(height, width // 2 + 1)``.

    Frequencies are the integers of ``fftfreq``; the window keeps ``|f_y| <= round(sqrt(r) H / 2)``
    and ``|f_x| <= round(sqrt(r) W / 2)``: ``r = 0`` keeps only the mean (f = 0), ``r = 1`` every
    frequency (the Nyquist row/column ``-H/2`` included)."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"The BSS area ratio r must be in [0, 1], got {ratio}.")
    side = math.sqrt(ratio)
    half_y, half_x = round(side * height / 2), round(side * width / 2)
    freq_y = torch.fft.fftfreq(height, d=1.0 / height, device=device).abs()
    freq_x = torch.fft.rfftfreq(width, d=1.0 / width, device=device).abs()
    return (freq_y[:, None] <= half_y) & (freq_x[None, :] <= half_x)


def batch_style(amplitudes: Tensor, style: str, index: int | None = None) -> Tensor:
    """The amplitude every image receives, ``(C, H, W')``: image ``index``'s (``random``) or the
    batch mean (``mean``), from ``amplitudes`` of shape ``(B, C, H, W')``."""
    if style == "random":
        if index is None:
            raise ValueError("style='random' needs the index of the style image")
        return amplitudes[index]
    if style == "mean":
        return amplitudes.mean(dim=0)
    raise ConfigError(f"Unknown BSS style '{style}'; choose one of: {', '.join(STYLES)}.")


def standardize_styles(images: Tensor, ratio: float, style: str = "random", index: int | None = None) -> Tensor:
    """``x'_i = F^-1(A'_i exp(1j P_i))`` with ``A'_i = M_r A_style + (1 - M_r) A_i`` for a float
    batch ``(B, C, H, W)``; returns a float batch of the same shape (and dtype)."""
    if images.ndim != 4 or not images.is_floating_point():
        raise DataError(
            f"Batch Styles Standardization expects a float image batch (B, C, H, W), got shape "
            f"{tuple(images.shape)} and dtype {images.dtype}; apply it after the views' conversion to float."
        )
    height, width = images.shape[-2:]
    spectrum = torch.fft.rfft2(images.float())
    amplitude = spectrum.abs()
    mask = low_frequency_mask(height, width, ratio, images.device)
    new_amplitude = torch.where(mask, batch_style(amplitude, style, index), amplitude)
    # torch.polar keeps each image's phase; where A_i = 0 the phase is 0 (angle(0) = 0).
    standardized = torch.fft.irfft2(torch.polar(new_amplitude, spectrum.angle()), s=(height, width))
    return standardized.to(images.dtype)


class BatchStyleStandardization(nn.Module):
    """BSS as a view step: ``forward(x)`` standardises the styles of the float batch ``x``.

    Each call draws ``r ~ U(r_min, r_max)`` and (``style="random"``) the style image ``j`` from
    torch's global generator, as the kornia ops of the views do, so seeding the views seeds it too.

    Args:
        ratio_range: ``(r_min, r_max)``, the range of the window's area ratio; ``(1, 1)`` gives
            every image of the batch the whole amplitude spectrum of the style image. The
            default ``(0.1, 1.0)`` is our choice (the paper tunes the range per data set).
        style: ``random`` (one image of the batch, the paper) or ``mean`` (the batch's mean
            amplitude).
        p: probability of applying BSS to a batch (1: always).
    """

    def __init__(self, ratio_range: tuple[float, float] = (0.1, 1.0), style: str = "random", p: float = 1.0):
        super().__init__()
        low, high = (float(v) for v in ratio_range)
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(
                f"BSS ratio_range must satisfy 0 <= r_min <= r_max <= 1, got {tuple(ratio_range)}; e.g. "
                "extra: {views: {bss: {ratio_range: [0.1, 1.0]}}}."
            )
        if style not in STYLES:
            raise ConfigError(f"Unknown BSS style '{style}'; choose one of: {', '.join(STYLES)}.")
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"BSS p is a probability; got {p}, give a value in [0, 1].")
        self.ratio_range = (low, high)
        self.style = style
        self.p = p

    def forward(self, images: Tensor) -> Tensor:
        if self.p < 1.0 and float(torch.rand(())) >= self.p:
            return images
        low, high = self.ratio_range
        ratio = low + (high - low) * float(torch.rand(()))
        index = int(torch.randint(len(images), ())) if self.style == "random" else None
        return standardize_styles(images, ratio, self.style, index)

    def extra_repr(self) -> str:
        return f"ratio_range={self.ratio_range}, style={self.style!r}, p={self.p}"


def build_bss(option: bool | dict | None) -> BatchStyleStandardization | None:
    """The BSS step from the views option ``bss``: ``false``/None (off), ``true`` (defaults), or a
    mapping of :class:`BatchStyleStandardization`'s arguments."""
    if option is None or option is False:
        return None
    if option is True:
        return BatchStyleStandardization()
    if isinstance(option, dict):
        unknown = set(option) - {"ratio_range", "style", "p"}
        if unknown:
            raise ConfigError(
                f"Unknown option(s) {sorted(unknown)} in extra.views.bss; options: ratio_range, style, p."
            )
        return BatchStyleStandardization(**option)
    raise ConfigError(
        f"extra.views.bss must be true, false or a mapping (ratio_range, style, p), got {option!r}."
    )
