"""Local randomness: run a block with torch's global generators seeded, and restore them after.

Augmentations, dropout and initialisation draw from torch's global generators. Objects that promise
reproducibility for a seed (TS2Vec, SCARF/CLAN, the forecaster, seeded views) run their random work
inside :func:`seeded`, so that the same seed gives the same result and the caller's random state is
left exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None) -> Iterator[None]:
    """Fork torch's CPU generator (and ``device``'s, when it is a CUDA device), seed them with
    ``seed`` for the block, and restore them afterwards. ``seed=None`` is a no-op: the block uses
    and advances the global state as usual."""
    if seed is None:
        yield
        return
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # Seed only the generators that fork_rng restores (torch.manual_seed would touch every GPU's).
        torch.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(seed)
        yield
