"""VICRegL (Bardes, Ponce & LeCun, "VICRegL: Self-Supervised Learning of Local Visual Features",
NeurIPS 2022).

VICReg's architecture with a second, local branch: the backbone's last feature map (before
pooling) goes through a local projector applied to every cell, and the loss
(:class:`contrastkit.objectives.vicregl.VICRegL`) adds VICReg between cells matched across the two
views, by position in the source image and by nearest neighbour in feature space, to VICReg on the
pooled embeddings. The views keep their crop boxes and flips
(:class:`~contrastkit.modalities.image.views.located.LocatedViews`) so that every cell of a map can
be placed in the source image; the grid is built at the map's own size.

Recipe, scaled to the image size:
    views: BYOL's asymmetric views (the authors' transforms: blur 1.0 / 0.1, solarisation 0 / 0.2,
        jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2); two global crops. The authors' 6
        local 96-pixel crops (multi-crop) are not built: the loss takes two views.
    global projector: VICReg's expander (two layers up to 64 pixels, hidden 4x the backbone's output).
    local projector: Linear-LayerNorm-ReLU, Linear-LayerNorm-ReLU, Linear on each cell (LightlySSL's
        ``VicRegLLocalProjectionHead``; the authors' ``maps_mlp`` 512-512-512), hidden width the
        backbone's output, output ``local_dim`` (default: ``--projection-dim``).
    loss: lambda, mu, nu = 25, 25, 1, alpha 0.75, num_matches (20, 4), feature matching over every
        cell (the authors' defaults). Not in LightlySSL's CIFAR-10 benchmark.
    The grid: with the CIFAR ResNet-18 at 32 pixels the map is 4 x 4, so location matching keeps
        all 16 cells in one direction (20 > 16) and 4 in the other.

Backbones: those with a ``feature_map`` (ResNet-18/50, the small CNN).

Data parallelism: the loss gathers the embeddings, maps and grids of the global batch
(:class:`~contrastkit.nn.distributed.GatheredObjective`); the authors use synchronised BatchNorm.

Options (YAML ``extra: {vicregl: {...}}``):
    invariance_weight, variance_weight, covariance_weight, alpha, num_matches, l2_all_matches,
    match_order: the loss's (see the objective); local_dim: output width of the local projector.
    ``alpha: 1`` is VICReg with its covariance averaged over the views (no local term);
    ``variance_weight: 0, covariance_weight: 0`` collapses (tests/modalities/image/test_methods_vicregl.py).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.methods.barlowtwins import expander
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options
from contrastkit.modalities.image.views.image import EvalView
from contrastkit.modalities.image.views.located import LocatedViews, location_grid
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.heads import MLPHead
from contrastkit.objectives.vicregl import VICRegL as VICRegLLoss

DEFAULTS = {"invariance_weight": 25.0, "variance_weight": 25.0, "covariance_weight": 1.0, "alpha": 0.75,
            "num_matches": (20, 4), "l2_all_matches": True, "match_order": "index", "local_dim": None}


def local_projector(in_dim: int, hidden_dim: int, out_dim: int) -> MLPHead:
    """Linear-LayerNorm-ReLU twice, then Linear, applied to each cell of a (B, H, W, C) map."""
    return MLPHead([(in_dim, hidden_dim, nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True)),
                    (hidden_dim, hidden_dim, nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True)),
                    (hidden_dim, out_dim, None, None)])


class VICRegL(nn.Module):
    def __init__(self, backbone: nn.Module, projection: nn.Module, local_projection: nn.Module,
                 views: LocatedViews, eval_view: nn.Module, objective: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.local_projection = local_projection
        self.views = views
        self.eval_view = eval_view
        self.objective = objective

    def _branches(self, view: torch.Tensor, geometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = self.backbone.feature_map(view)  # (B, C, h, w)
        global_embedding = self.projection(maps.mean(dim=(2, 3)))
        local_embedding = self.local_projection(maps.permute(0, 2, 3, 1))  # (B, h, w, D)
        grid = location_grid(geometry, maps.shape[2], maps.shape[3]).to(maps.device)
        return global_embedding, local_embedding, grid

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        view_a, view_b, geometry_a, geometry_b = self.views.two_views_located(batch["image"])
        # Separate passes, as the paper's code: BatchNorm normalises each view's batch on its own.
        z_a, maps_a, grid_a = self._branches(view_a, geometry_a)
        z_b, maps_b, grid_b = self._branches(view_b, geometry_b)
        return self.objective(z_a, z_b, maps_a=maps_a, maps_b=maps_b, grid_a=grid_a, grid_b=grid_b), {}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)


def build(config, data: DataInfo) -> VICRegL:
    options = method_options(config, "vicregl", DEFAULTS)
    local_dim = options.pop("local_dim") or config.projection_dim
    backbone = build_backbone(config.backbone, data, config.width, config)
    if not hasattr(backbone, "feature_map"):
        raise ConfigError(
            f"vicregl needs a backbone with a feature map before pooling (resnet18, resnet50, small-cnn); "
            f"{config.backbone!r} has none."
        )
    projection = expander(backbone.output_dim, config.projection_hidden_dim, config.projection_dim, data.image_size)
    local_projection = local_projector(backbone.output_dim, backbone.output_dim, int(local_dim))
    views = LocatedViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                         **(config.extra.get("views") or {}))
    objective = GatheredObjective(VICRegLLoss(**options))
    return VICRegL(backbone, projection, local_projection, views, EvalView(mean=data.mean, std=data.std), objective)
