"""TiCo (Zhu, Liu & Huang, "TiCo: Transformation Invariance and Covariance Contrast for
Self-Supervised Visual Representation Learning", 2022).

BYOL's two networks without the predictor: an online network (backbone f, projector g) and a target
network (an EMA copy of f and g, no gradient). The online projection of view a and the target
projection of view b enter the TiCo loss (:class:`contrastkit.objectives.tico.TiCo`)::

    loss = -mean_i cos(u_i, v_i) + rho mean_i u_i^T C_t u_i,   C_t = beta C_{t-1} + (1 - beta) mean_i u_i u_i^T

with ``u = normalize(g(f(view a)))`` and ``v = normalize(target(view b))``; ``C`` is a running
matrix kept in the loss's buffer (saved in checkpoints), which pushes each embedding away from
the directions that recent batches occupy. One direction per step (view a online, view b target),
as in LightlySSL's TiCo. After every optimiser step the target follows the online weights with
BYOL's cosine rate from ``momentum`` up to 1.

Recipe (the paper, LightlySSL's TiCo example and ImageNet benchmark; TiCo is not in LightlySSL's
CIFAR-10 benchmark): BYOL's asymmetric views (blur dropped below 96 pixels); the projector
``backbone -> 2 x backbone (or --projection-hidden-dim) -> --projection-dim`` with BN and ReLU
(the paper: 2048 -> 4096 -> 256); beta 0.9, rho 8; momentum 0.99 (LightlySSL's ImageNet benchmark:
cosine from 0.99 to 1).

Data parallelism: the loss gathers the global batch (:class:`~contrastkit.nn.distributed.GatheredObjective`)
and every process updates C from all of it, so C stays the same on every process.

Options (YAML ``extra: {tico: {...}}``):
    covariance_momentum: beta (default 0.9).
    covariance_weight: rho (default 8).
    momentum: the target's base EMA rate m_0 (default 0.99).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.modalities.image.methods.byol import byol_parts
from contrastkit.modalities.image.methods.parts import DataInfo, method_options
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.momentum import check_momentum, momentum_copy, step_momentum_targets
from contrastkit.objectives.tico import PAPER_COVARIANCE_MOMENTUM, PAPER_COVARIANCE_WEIGHT, TiCo as TiCoLoss

DEFAULTS = {"covariance_momentum": PAPER_COVARIANCE_MOMENTUM, "covariance_weight": PAPER_COVARIANCE_WEIGHT,
            "momentum": 0.99}


class TiCo(nn.Module):
    """Online backbone + projection, EMA target backbone + projection, the TiCo loss with its buffer."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, views: nn.Module, eval_view: nn.Module,
                 objective: nn.Module, base_momentum: float):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.target_backbone = momentum_copy(backbone)
        self.target_projection = momentum_copy(projection)
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.base_momentum = base_momentum

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        view_a, view_b = self.views.two_views(batch["image"])
        z_a = self.projection(self.backbone(view_a))
        with torch.no_grad():
            z_b = self.target_projection(self.target_backbone(view_b))
        return self.objective(z_a, z_b), {}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        step_momentum_targets([(self.target_backbone, self.backbone), (self.target_projection, self.projection)],
                              step, total_steps, self.base_momentum)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)


def build(config, data: DataInfo) -> TiCo:
    options = method_options(config, "tico", DEFAULTS)
    backbone, projection, views, eval_view, _ = byol_parts(config, data, predictor_hidden_dim=None)
    objective = TiCoLoss(covariance_momentum=options["covariance_momentum"],
                         covariance_weight=options["covariance_weight"], dim=config.projection_dim)
    return TiCo(backbone, projection, views, eval_view, GatheredObjective(objective),
                base_momentum=check_momentum(options["momentum"], "extra.tico.momentum"))
