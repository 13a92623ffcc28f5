"""BYOL (Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020).

An online network (backbone f, projector g, predictor q) predicts the projection that a target
network (an EMA copy of f and g, no predictor, no gradient) gives of the other view. With the two
views v, v' of each image, ``z = g(f(v))``, ``p = q(z)`` online and ``z'_t`` the target's projection,
the symmetric loss is (Eq. 2 and the sum below it)::

    loss = normalized_mse(p(v), z'_t(v')) + normalized_mse(p(v'), z'_t(v)),
    normalized_mse(p, z) = mean_i (2 - 2 cos(p_i, z_i))

After every optimiser step the target follows the online weights with the rate
``m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2`` (k steps done, K in total). The paper's m_0 is
0.996 for 1,000 epochs of ImageNet (about 1.25 M steps); here the default is 0.99, as in
solo-learn's CIFAR recipe: with a few thousand steps a slower target barely moves from its random
initialisation in the first epochs. Views are BYOL's asymmetric ones (:class:`BYOLViews`).

Options (YAML ``extra: {byol: {...}}``):
    momentum: m_0 (default 0.99).
    predictor: ``mlp`` (the paper's Linear-BN-ReLU-Linear), ``linear`` (``p = W f``, trained; its
        eigen-alignment with the correlation of its input is logged each epoch) or ``false`` (no
        predictor: the paper's Table 5 shows this collapses).
    predictor_hidden_dim: hidden width of the ``mlp`` predictor (default twice the backbone's
        output, the projector's hidden width, as 4096 for ResNet-50 in the paper).
    separate_view_passes: false (default) passes both views through each network as one batch, so
        BatchNorm normalises over both views together; true passes each view on its own, as the
        paper's code does (``byol_experiment.py`` applies the network once per view).

The joint pass stays the default because the paper's per-view pass did not help here: on the ranking
protocol (CIFAR-10, 25 epochs) it gave kNN 31.6 / 25.2 against 32.0 / 25.45 and linear (10 labels
per class) 23.45 / 20.7 against 25.75 / 22.65 on seeds 0 / 1; on digits 73.8 / 68.0 / 74.1 against
73.8 / 69.9 / 74.7, on an MNIST subset 37.0 / 36.7 / 37.5 against 43.7 / 36.7 / 35.8 (seeds 0-2;
benchmarks/view_passes.py, docs/benchmarks.md). SimSiam, where it helped by 1.6-2.1 points on
CIFAR-10 and tied on the other two sets, passes each view on its own. DirectPred keeps the joint
pass either way: its predictor updates its correlation estimate once per call.

The projector is ``backbone -> 2 * backbone (or --projection-hidden-dim) -> --projection-dim``
(the paper: 2048 -> 4096 -> 256).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.nn.heads import byol_projection
from contrastkit.nn.momentum import check_momentum, momentum_copy, step_momentum_targets
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options, require_flags
from contrastkit.nn.predictors import (
    build_predictor,
    linear_predictor_matrices,
    normalized_mse,
)
from contrastkit.modalities.image.views.image import BYOLViews, EvalView

DEFAULTS = {"momentum": 0.99, "predictor": "mlp", "predictor_hidden_dim": None, "separate_view_passes": False}


class BYOL(nn.Module):
    """Online backbone + projection + predictor, EMA target backbone + projection.

    ``predictor`` may be any module mapping projections to predictions (an MLP, a
    :class:`~contrastkit.nn.predictors.DirectPredictor`, or ``nn.Identity``).
    """

    def __init__(self, backbone: nn.Module, projection: nn.Module, predictor: nn.Module, views: nn.Module,
                 eval_view: nn.Module, base_momentum: float, separate_view_passes: bool = False):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.predictor = predictor
        self.target_backbone = momentum_copy(backbone)
        self.target_projection = momentum_copy(projection)
        self.views = views
        self.eval_view = eval_view
        self.base_momentum = base_momentum
        self.separate_view_passes = separate_view_passes

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        view_a, view_b = self.views.two_views(batch["image"])
        if self.separate_view_passes:  # BatchNorm statistics per view (module docstring)
            p_a, p_b = (self.predictor(self.projection(self.backbone(view))) for view in (view_a, view_b))
            with torch.no_grad():
                target_a, target_b = (self.target_projection(self.target_backbone(view)) for view in (view_a, view_b))
        else:
            both = torch.cat([view_a, view_b])
            p_a, p_b = self.predictor(self.projection(self.backbone(both))).chunk(2)
            with torch.no_grad():
                target_a, target_b = self.target_projection(self.target_backbone(both)).chunk(2)
        loss = normalized_mse(p_a, target_b) + normalized_mse(p_b, target_a)
        return loss, {}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        step_momentum_targets([(self.target_backbone, self.backbone), (self.target_projection, self.projection)],
                              step, total_steps, self.base_momentum)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)

    def predictor_matrices(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W, F) of a linear predictor, for the eigen-alignment diagnostic; None otherwise."""
        return linear_predictor_matrices(self.predictor)


def byol_parts(config, data: DataInfo, predictor_hidden_dim: int | None):
    """Backbone, projector, views and eval view as BYOL builds them (shared with DirectPred)."""
    backbone = build_backbone(config.backbone, data, config.width, config)
    projection = byol_projection(backbone.output_dim, config.projection_hidden_dim, config.projection_dim)
    views = BYOLViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                      **(config.extra.get("views") or {}))
    hidden = predictor_hidden_dim or 2 * backbone.output_dim
    return backbone, projection, views, EvalView(mean=data.mean, std=data.std), hidden


def build(config, data: DataInfo) -> BYOL:
    options = method_options(config, "byol", DEFAULTS)
    require_flags(options, "byol", "separate_view_passes")
    backbone, projection, views, eval_view, hidden = byol_parts(config, data, options["predictor_hidden_dim"])
    return BYOL(
        backbone=backbone,
        projection=projection,
        predictor=build_predictor(options["predictor"], config.projection_dim, hidden),
        views=views,
        eval_view=eval_view,
        base_momentum=check_momentum(options["momentum"], "extra.byol.momentum"),
        separate_view_passes=options["separate_view_passes"],
    )
