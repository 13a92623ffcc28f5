"""Pieces shared by the text methods: the objective of a view pair, option checks, diagnostics."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.core.errors import ConfigError


def pair_objective(name: str, temperature: float, method: str) -> nn.Module:
    """The catalogue objective ``name`` at ``temperature``, refused when it does not read
    ``(z_a, z_b)`` as two views of the same sentences; gathered across processes (the negatives of
    every process's batch, with gradient; the objective itself in one process)."""
    factory = objectives.OBJECTIVES.factory(name)
    reason = getattr(factory, "not_for_view_pairs", "")
    if reason:
        raise ConfigError(f"The objective '{name}' cannot train text method '{method}': {reason}.")
    accepts_temperature = "temperature" in inspect.signature(factory).parameters
    objective = factory(temperature=temperature) if accepts_temperature else factory()
    return GatheredObjective(objective, local_loss=hasattr(objective, "loss_terms"))


def positive_int_or_none(value, option: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Option '{option}' must be a positive integer or null, got {value!r}.")
    return value


@torch.no_grad()
def pair_cosines(z_a: Tensor, z_b: Tensor) -> dict[str, float]:
    """Mean cosine of the positive pairs and of the other (in-batch negative) pairs: how close
    the views are drawn together and how far the rest is pushed apart."""
    u, v = F.normalize(z_a.detach().float(), dim=1), F.normalize(z_b.detach().float(), dim=1)
    cosines = u @ v.T
    n = cosines.shape[0]
    positive = cosines.diagonal().mean()
    negative = (cosines.sum() - cosines.diagonal().sum()) / max(1, n * n - n)
    return {"positive_cosine": float(positive), "negative_cosine": float(negative)}
