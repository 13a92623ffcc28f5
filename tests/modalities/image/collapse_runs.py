"""Training runs for the collapse checks, made once per test module and shared by its tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from contrastkit.modalities.image.config import FitConfig
from contrastkit.modalities.image.training.run import fit


def collapse_run_cache(root: Path, run: dict, variants: dict[str, dict]) -> Callable[[str], dict]:
    """``get(name)``: the summary of ``fit(FitConfig(**run, extra=variants[name]))`` in ``root/name``,
    trained on one thread the first time it is asked for (tiny models: more threads cost more)."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                cache[name] = fit(FitConfig(**run, extra=variants[name], out=str(Path(root) / name)))
            finally:
                torch.set_num_threads(threads)
        return cache[name]

    return get
