"""SimCLR (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020).

Two augmented views of each image go through one backbone and a projection MLP; the objective
(NT-Xent by default, any two-view objective of the catalogue with ``--objective``) pulls the two views
of an image together and pushes the other 2N-2 views away. Downstream tasks use the backbone's
features, not the projection (the paper's Sec. 4.2: the projection discards useful information).

``--grad-cache-chunk C`` trains the batch in bounded memory (:mod:`contrastkit.nn.gradcache`): the
backbone embeds the 2N views C rows at a time (view a's rows, then view b's), its BatchNorm over
each chunk; the projection head and the objective see the whole batch, so the gradients are those
of the whole-batch step with the backbone's BatchNorm over chunks of C rows.
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.nn.gradcache import embed_batch
from contrastkit.nn.heads import ProjectionHead
from contrastkit.modalities.image.methods.parts import (
    DataInfo,
    build_backbone,
    build_objective,
    method_temperature,
    objective_inputs,
)
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews

# NT-Xent's temperature in SimCLR's CIFAR-10 recipe (and LightlySSL's CIFAR-10 benchmark).
PAPER_TEMPERATURE = 0.5


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, projection: nn.Module, views: nn.Module, eval_view: nn.Module,
                 objective: nn.Module, grad_cache_chunk: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.grad_cache_chunk = grad_cache_chunk  # rows per backbone pass with GradCache (None: all)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        view_a, view_b = self.views.two_views(batch["image"])
        # One backbone pass over both views: half the kernel launches, and BatchNorm sees the whole
        # 2N batch as in the paper's global BN (the backbone's sees chunks with GradCache).
        z = self.projection(embed_batch(self.backbone, torch.cat([view_a, view_b]), self.grad_cache_chunk))
        z_a, z_b = z.chunk(2)
        loss = self.objective(z_a, z_b, **objective_inputs(self.objective, batch))
        return loss, {}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)


def build(config, data: DataInfo) -> SimCLR:
    reason = getattr(objectives.OBJECTIVES.factory(config.objective or "infonce"), "not_for_view_pairs", "")
    if reason:
        raise ConfigError(f"--objective {config.objective} does not fit SimCLR's view pairs: {reason}.")
    return simclr_model(config, data, config.objective or "infonce", PAPER_TEMPERATURE, config.extra.get("objective"))


def simclr_model(config, data: DataInfo, objective: str, default_temperature: float,
                 objective_options: dict | None = None) -> SimCLR:
    """SimCLR's model for ``config``: its backbone, 2-layer projection, views and ``objective`` at
    ``--temperature`` or ``default_temperature`` (the recipes that are SimCLR with another paper's
    temperature, e.g. ``gcl-global``, build it through here)."""
    backbone = build_backbone(config.backbone, data, config.width, config)
    hidden = config.projection_hidden_dim or backbone.output_dim
    return SimCLR(
        backbone=backbone,
        projection=ProjectionHead(backbone.output_dim, hidden, config.projection_dim, num_layers=2),
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          **config.extra.get("views", {})),
        eval_view=EvalView(mean=data.mean, std=data.std),
        objective=build_objective(objective, method_temperature(config, default_temperature), data.num_samples,
                                  objective_options),
        grad_cache_chunk=config.grad_cache_chunk,
    )
