"""Views of time-series batches: functions on tensors (B, C, T), random draws from a generator.

Two families:

* **Context views** (TS2Vec, Yue et al., AAAI 2022, Sec. 3.2): two overlapping crops of each
  series, :func:`sample_overlapping_crops` + :func:`take_crops`, and the timestamp mask
  :func:`binomial_timestamp_mask` that the encoder applies to its input projection's output.
  TS2Vec uses no value-level augmentation: the same time step seen in two contexts must get the
  same representation (contextual consistency).
* **Value transforms** (TS-TCC, Eldele et al., IJCAI 2021): :func:`jitter`, :func:`scale`,
  :func:`permute_segments`; and a CVRL-style clip pair sampler (Qian et al., CVPR 2021,
  Sec. 3.2) :func:`sample_clip_pair` whose clips are close in time more often than far apart.

Every function takes an optional ``torch.Generator`` so that views are reproducible without
touching the global random state. Positions (crops, segment orders, clip starts) are drawn on
the CPU and need a CPU generator; values (jitter, scale factors, masks) are drawn on the
batch's device and need a generator on that device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contrastkit.core.errors import ConfigError


def _randint(low: int, high: int, generator: torch.Generator | None, size: tuple[int, ...] = ()) -> torch.Tensor:
    """Uniform integers in [low, high) on the CPU (crop positions are host-side decisions)."""
    return torch.randint(low, high, size, generator=generator)


# --------------------------------------------------------------------------- TS2Vec crops


@dataclass(frozen=True)
class OverlappingCrops:
    """Where the two crops of every series of a batch lie (TS2Vec's random cropping).

    With ``a1 = left_start``, ``b1 = overlap_end``, ``a2 = overlap_start``, ``b2 = right_end``
    (0 <= a1 <= a2 < b1 <= b2 <= T), crop 1 is ``[a1, b1)`` and crop 2 is ``[a2, b2)``: they
    overlap on ``[a2, b1)``, of ``overlap_length = b1 - a2`` steps. All four positions are
    shared by the batch and then shifted per series by ``offsets[i]`` (so that different series
    are cut at different absolute times); the shift keeps both crops inside [0, T).

    In crop coordinates the overlap is the *last* ``overlap_length`` steps of crop 1 and the
    *first* ``overlap_length`` steps of crop 2 — :meth:`overlap_of_first` and
    :meth:`overlap_of_second` cut it out of the encoder outputs.
    """

    left_start: int
    overlap_start: int
    overlap_end: int
    right_end: int
    offsets: torch.Tensor  # int64 (B,)

    @property
    def overlap_length(self) -> int:
        return self.overlap_end - self.overlap_start

    def overlap_of_first(self, out1: torch.Tensor) -> torch.Tensor:
        """The overlap part of crop 1's encoding (B, T1, D) -> (B, overlap_length, D)."""
        return out1[:, -self.overlap_length :]

    def overlap_of_second(self, out2: torch.Tensor) -> torch.Tensor:
        """The overlap part of crop 2's encoding (B, T2, D) -> (B, overlap_length, D)."""
        return out2[:, : self.overlap_length]


def sample_overlapping_crops(
    batch_size: int,
    length: int,
    min_overlap: int = 2,
    generator: torch.Generator | None = None,
) -> OverlappingCrops:
    """Draw TS2Vec's two overlapping crops for a batch of series of ``length`` steps.

    The overlap length is uniform in [min_overlap, T], its start uniform among the places it
    fits; crop 1 extends it to the left to a start uniform in [0, a2], crop 2 to the right to
    an end uniform in [b1, T]; each series is then shifted by an offset uniform in
    [-a1, T - b2] (official TS2Vec; the paper's ``min_overlap`` is ``2 ** (temporal_unit + 1)``
    so that the overlap survives ``temporal_unit`` poolings with length >= 2).
    """
    if not 1 <= min_overlap <= length:
        raise ConfigError(
            f"Overlapping crops need 1 <= min_overlap <= length, got min_overlap={min_overlap} "
            f"for series of length {length}. Use a smaller temporal_unit or longer series."
        )
    overlap_length = int(_randint(min_overlap, length + 1, generator))
    overlap_start = int(_randint(0, length - overlap_length + 1, generator))
    overlap_end = overlap_start + overlap_length
    left_start = int(_randint(0, overlap_start + 1, generator))
    right_end = int(_randint(overlap_end, length + 1, generator))
    offsets = _randint(-left_start, length - right_end + 1, generator, (batch_size,))
    return OverlappingCrops(left_start, overlap_start, overlap_end, right_end, offsets)


def take_windows(x: torch.Tensor, starts: torch.Tensor, window: int) -> torch.Tensor:
    """Per-series windows: ``out[i] = x[i, :, starts[i] : starts[i] + window]``.

    Shapes: x (B, C, T), starts int64 (B,) -> (B, C, window); one gather, no Python loop.
    """
    steps = starts.to(x.device)[:, None] + torch.arange(window, device=x.device)  # (B, window)
    index = steps[:, None, :].expand(-1, x.shape[1], -1)
    return torch.gather(x, 2, index)


def take_crops(x: torch.Tensor, crops: OverlappingCrops) -> tuple[torch.Tensor, torch.Tensor]:
    """The two crops of every series: (B, C, b1 - a1) and (B, C, b2 - a2)."""
    first = take_windows(x, crops.offsets + crops.left_start, crops.overlap_end - crops.left_start)
    second = take_windows(x, crops.offsets + crops.overlap_start, crops.right_end - crops.overlap_start)
    return first, second


# --------------------------------------------------------------------------- timestamp masking


def binomial_timestamp_mask(
    batch_size: int,
    length: int,
    p: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Keep-mask (B, T): each time step is masked independently with probability ``p``.

    ``True`` = keep. TS2Vec masks latent vectors, not input values (Sec. 3.2: a value of 0 in
    the input may be real data, a zeroed latent vector is unambiguous), so the encoder applies
    this mask to the output of its input projection. The paper uses p = 0.5.
    """
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"mask probability p must be in [0, 1], got {p}.")
    if generator is not None:
        device = generator.device
    draws = torch.rand(batch_size, length, generator=generator, device=device)
    return draws >= p


# --------------------------------------------------------------------------- value transforms


def jitter(x: torch.Tensor, sigma: float = 0.8, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + eps, eps ~ N(0, sigma^2) i.i.d. per value (TS-TCC's strong augmentation uses 0.8)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * noise


def scale(x: torch.Tensor, sigma: float = 1.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """x * s with s ~ N(1, sigma^2) drawn per series and channel, shared over time (TS-TCC)."""
    factors = 1.0 + sigma * torch.randn(
        x.shape[0], x.shape[1], 1, generator=generator, device=x.device, dtype=x.dtype
    )
    return x * factors


def permute_segments(
    x: torch.Tensor, max_segments: int = 5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Cut each series into k equal-ish segments (k uniform in [1, max_segments]) and shuffle them.

    Every series gets its own k and order; channels of one series move together. The result is
    a permutation of the time steps of each series (TS-TCC's strong augmentation).
    """
    batch, _, length = x.shape
    if max_segments < 1:
        raise ConfigError(f"max_segments must be >= 1, got {max_segments}.")
    max_segments = min(max_segments, length)
    order = torch.empty(batch, length, dtype=torch.int64)
    for i in range(batch):
        k = int(_randint(1, max_segments + 1, generator))
        bounds = torch.linspace(0, length, k + 1).round().to(torch.int64)
        segments = [torch.arange(int(bounds[j]), int(bounds[j + 1])) for j in range(k)]
        shuffled = torch.randperm(k, generator=generator)
        order[i] = torch.cat([segments[j] for j in shuffled])
    index = order.to(x.device)[:, None, :].expand(-1, x.shape[1], -1)
    return torch.gather(x, 2, index)


# --------------------------------------------------------------------------- CVRL-style clips


def clip_distance_probabilities(max_distance: int, c: float | None = None) -> torch.Tensor:
    """P(d) ∝ c - d for start distances d = 0..max_distance (CVRL, Qian et al. 2021, Sec. 3.2).

    A monotonically decreasing distribution: clips close in time are paired most often and far
    clips rarely, so the objective does not force invariance between distant (possibly
    different) content. CVRL requires c >= T; the default c = max_distance + 1 gives the
    farthest pair a small but non-zero weight.
    """
    if max_distance < 0:
        raise ConfigError(f"max_distance must be >= 0, got {max_distance}.")
    c = float(max_distance + 1) if c is None else float(c)
    if c <= max_distance:
        raise ConfigError(
            f"CVRL's distance weights c - d must stay positive: need c > max_distance "
            f"({max_distance}), got c={c}."
        )
    distances = torch.arange(max_distance + 1, dtype=torch.float64)
    weights = c - distances
    return weights / weights.sum()


def sample_clip_pair(
    batch_size: int,
    length: int,
    clip_length: int,
    c: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Starts (B,), (B,) of two clips of ``clip_length`` steps per series, CVRL-style.

    Draw the distance d ~ P(d) ∝ c - d over 0..T-clip_length, the earlier start uniform in
    [0, T - clip_length - d], the later start = earlier + d; which clip comes first is a coin
    flip so that neither view is always the past one. Cut them with :func:`take_windows`.
    """
    if not 1 <= clip_length <= length:
        raise ConfigError(f"clip_length must be in [1, {length}], got {clip_length}.")
    max_distance = length - clip_length
    probabilities = clip_distance_probabilities(max_distance, c)
    distances = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
    uniform = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    earlier = (uniform * (max_distance - distances + 1)).floor().long()  # in [0, T - clip - d]
    later = earlier + distances
    swap = torch.rand(batch_size, generator=generator) < 0.5
    first = torch.where(swap, later, earlier)
    second = torch.where(swap, earlier, later)
    return first, second
