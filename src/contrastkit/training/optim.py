"""Optimisers and the learning-rate schedule of the SSL recipes.

- SGD with momentum (the CIFAR recipes of lightly and solo-learn).
- LARS (You, Gitman & Ginsburg 2017), as SimCLR uses it for large batches: each parameter's update
  is scaled by the trust ratio eta * ||w|| / (||g|| + wd * ||w||); biases and BatchNorm parameters
  are excluded from both weight decay and adaptation (SimCLR's appendix B.1).
- AdamW.
Schedule: linear warm-up from 0 for ``warmup_steps`` then cosine decay to 0 (SimCLR, BYOL).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling.

    For a parameter w with gradient g (groups with ``lars_exclude=True`` skip this):
        g <- g + weight_decay * w
        g <- g * trust_coefficient * ||w|| / ||g||   (when both norms are > 0)
        v <- momentum * v + g;  w <- w - lr * v
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 0.001):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                if not group["lars_exclude"]:
                    g = g.add(w, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["trust_coefficient"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g.mul(trust)
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                w.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay (and LARS adaptation) on weights of dimension > 1 only: not on biases and norms."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float) -> Optimizer:
    groups = parameter_groups(model, weight_decay)
    if name == "sgd":
        for group in groups:
            group.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        for group in groups:
            group.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")  # validated in config; unreachable for users


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base rate at ``step``: linear warm-up, then cosine decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
