"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).

One network (backbone f, projector g) for both views, a predictor h on one side and a
stop-gradient on the other; no negatives, no momentum encoder. With ``z = g(f(v))`` and
``p = h(z)`` for the two views v, v' (Eq. 1-2)::

    loss = D(p(v), stopgrad(z(v'))) / 2 + D(p(v'), stopgrad(z(v))) / 2,    D(p, z) = -mean_i cos(p_i, z_i)

The stop-gradient is what prevents collapse (Sec. 4.1, Fig. 2: without it the loss reaches -1
at once and the per-dimension std of normalize(z) falls to 0).

Architecture (Sec. 3): the projector's layers all end with BatchNorm, the output one without
affine parameters; three layers for ImageNet, two for CIFAR-sized images (the paper's Sec. A),
here two when images are at most 64 pixels. The predictor is a bottleneck
``d -> d/4 -> d`` (2048 -> 512 -> 2048 in the paper), ``d`` = ``--projection-dim``.

Options (YAML ``extra: {simsiam: {...}}``):
    stop_gradient: default true; false reproduces the paper's collapse ablation.
    predictor: ``mlp`` (default), ``linear`` (trained ``p = W f``, eigen-alignment logged) or
        ``false`` (no predictor: collapses, the paper's Table 1).
    predictor_hidden_dim: hidden width of the ``mlp`` predictor (default d / 4).
    separate_view_passes: default true (below); false passes both views as one batch.

Each view goes through the network in its own pass, as in the paper's code, so BatchNorm normalises
each view's batch on its own. One pass over both views (``separate_view_passes=False``, what
DirectPred's online-target variant keeps) was 1.6-2.1 kNN points worse on both seeds of the ranking
protocol (CIFAR-10, 25 epochs: 29.05 / 29.05 against 31.15 / 30.65; docs/benchmarks.md) and tied on
digits and an MNIST subset (3 seeds each, benchmarks/view_passes.py).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.nn.heads import ProjectionHead
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options, require_flags
from contrastkit.nn.predictors import (
    build_predictor,
    linear_predictor_matrices,
    negative_cosine,
)
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews

DEFAULTS = {"stop_gradient": True, "predictor": "mlp", "predictor_hidden_dim": None, "separate_view_passes": True}


class SimSiam(nn.Module):
    """Backbone + projection + predictor with a stop-gradient on the target side."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, predictor: nn.Module, views: nn.Module,
                 eval_view: nn.Module, stop_gradient: bool = True, separate_view_passes: bool = True):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.predictor = predictor
        self.views = views
        self.eval_view = eval_view
        self.stop_gradient = stop_gradient
        self.separate_view_passes = separate_view_passes

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        view_a, view_b = self.views.two_views(batch["image"])
        if self.separate_view_passes:  # BatchNorm statistics per view (module docstring)
            z_a, z_b = (self.projection(self.backbone(view)) for view in (view_a, view_b))
            p_a, p_b = self.predictor(z_a), self.predictor(z_b)
        else:
            z = self.projection(self.backbone(torch.cat([view_a, view_b])))
            (p_a, p_b), (z_a, z_b) = self.predictor(z).chunk(2), z.chunk(2)
        target_a, target_b = (z_a.detach(), z_b.detach()) if self.stop_gradient else (z_a, z_b)
        loss = negative_cosine(p_a, target_b) / 2 + negative_cosine(p_b, target_a) / 2
        return loss, {}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)

    def predictor_matrices(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W, F) of a linear predictor, for the eigen-alignment diagnostic; None otherwise."""
        return linear_predictor_matrices(self.predictor)


def simsiam_projection(in_dim: int, hidden_dim: int, out_dim: int, image_size: int) -> ProjectionHead:
    """SimSiam's projector: BN after every layer, the output BN without affine parameters."""
    return ProjectionHead(in_dim, hidden_dim, out_dim, num_layers=2 if image_size <= 64 else 3,
                          batch_norm=True, last_batch_norm=True)


def build(config, data: DataInfo) -> SimSiam:
    options = method_options(config, "simsiam", DEFAULTS)
    require_flags(options, "simsiam", "stop_gradient", "separate_view_passes")
    backbone = build_backbone(config.backbone, data, config.width, config)
    dim = config.projection_dim
    hidden = config.projection_hidden_dim or backbone.output_dim
    return SimSiam(
        backbone=backbone,
        projection=simsiam_projection(backbone.output_dim, hidden, dim, data.image_size),
        predictor=build_predictor(options["predictor"], dim, options["predictor_hidden_dim"] or max(1, dim // 4)),
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          **config.extra.get("views", {})),
        eval_view=EvalView(mean=data.mean, std=data.std),
        stop_gradient=options["stop_gradient"],
        separate_view_passes=options["separate_view_passes"],
    )
