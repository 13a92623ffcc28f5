"""Optimisers and the learning-rate schedule of the SSL recipes.

- SGD with momentum (the CIFAR recipes of lightly and solo-learn).
- LARS (You, Gitman & Ginsburg 2017), as SimCLR uses it for large batches: each parameter's update
  is scaled by the trust ratio eta * ||w|| / (||g|| + wd * ||w||); biases and BatchNorm parameters
  are excluded from both weight decay and adaptation (SimCLR's appendix B.1).
- AdamW, fused into one kernel per step where torch supports it (on a 2-core CPU the fused step
  over MiniLM's 22M parameters is ~10x faster than the loop).

Schedules, as multipliers of the base rate at 0-based step ``s`` with ``W`` warm-up steps of ``T``:

- ``warmup-cosine`` (SimCLR, BYOL): ``(s + 1) / W`` for ``s < W``, then
  ``0.5 * (1 + cos(pi * min(1, (s - W) / (T - W))))``;
- ``warmup-linear`` (sentence-transformers' ``fit``): ``(s + 1) / W``, then ``max(0, (T - s) / (T - W))``;
- ``warmup-constant``: ``(s + 1) / W``, then 1 -- what a run limited only by time gets, since ``T``
  is unknown in advance (a decay tied to an estimated ``T`` would change with the machine's speed);
- ``constant``: 1 (the official TS2Vec, SCARF, ...).
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


def parameter_groups(model: nn.Module, weight_decay: float, decay_everything: bool = False) -> list[dict]:
    """Weight decay (and LARS adaptation) on weights of dimension > 1 only: not on biases and norms
    (``decay_everything``: on every parameter, as the official GraphMAE, TS2Vec and SCARF code do).
    Parameters that do not require a gradient are left out."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim > 1 or decay_everything else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float,
                    decay_everything: bool = False) -> Optimizer:
    groups = [group for group in parameter_groups(model, weight_decay, decay_everything) if group["params"]]
    if name == "sgd":
        for group in groups:
            group.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        for group in groups:
            group.pop("lars_exclude", None)
        return adamw(groups, lr)
    if name == "adam":  # Adam with L2 weight decay added to the gradient (GraphMAE, SCGC, GRACE)
        for group in groups:
            group.pop("lars_exclude", None)
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")  # validated in config; unreachable for users


OPTIMIZERS = ("sgd", "lars", "adamw", "adam")
SCHEDULES = ("warmup-cosine", "warmup-linear", "warmup-constant", "constant")


def adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch has a kernel for the parameters' device and dtype."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base rate at ``step``: linear warm-up, then cosine decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int | None) -> float:
    """Multiplier at ``step``: linear warm-up, then linear decay to 0 at ``total_steps`` (constant 1
    after the warm-up when ``total_steps`` is None)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def lr_multiplier(schedule: str, step: int, warmup_steps: int, total_steps: int | None) -> float:
    """The multiplier of the base rate at 0-based ``step`` under ``schedule`` (module docstring)."""
    if schedule == "constant":
        return 1.0
    if schedule == "warmup-constant" or total_steps is None:
        return linear_warmup_decay(step, warmup_steps, None)
    if schedule == "warmup-linear":
        return linear_warmup_decay(step, warmup_steps, total_steps)
    if schedule == "warmup-cosine":
        return warmup_cosine(step, warmup_steps, total_steps)
    raise ValueError(f"unknown schedule {schedule!r}")
