"""The local stage of Chaitanya, Erdil, Karani & Konukoglu, "Contrastive learning of global and local
features for medical image segmentation with limited annotations", NeurIPS 2020 (Sec. 2.2).

The encoder ``e`` of the global stage is frozen; the first ``decoder_blocks`` blocks ``d_l`` of a
U-Net-style decoder (:class:`~contrastkit.modalities.image.segmentation.model.UNetDecoder`, its skips
from ``e``) and a small head ``g_2`` (1x1 conv - ReLU - 1x1 conv) are trained with the local
contrastive loss (:class:`contrastkit.objectives.dense_infonce.DenseInfoNCE`): the feature map of one
view and that of another view of the same image are compared position by position; the position of the
other view that shows the same point of the image is the positive, the image's other positions are the
negatives (the paper's; ``negatives: batch`` adds the other images'). The map is average-pooled to a
``grid x grid`` grid of regions first (the paper contrasts small local regions, not single pixels:
neighbouring positions of a decoder map see nearly the same pixels and are no negatives).

Where the paper's two views of a slice differ only by intensity transforms (so position u of one is
position u of the other), here the views are also cropped, flipped and rescaled
(:class:`~contrastkit.modalities.image.views.located.LocatedViews`, BYOL's colour recipe), and
:func:`~contrastkit.modalities.image.segmentation.views.corresponding_cells` places each region of
one view in the other from the crop boxes and flips; regions outside the overlap are not anchors.
The loss is symmetrised: a -> b and b -> a, averaged.

Start it from the global stage with ``--init``, e.g.
``contrastkit fit --method gcl-local --data DIR --init runs/gcl-global`` (the run's encoder is
loaded into ``backbone`` before the first step). Without ``--init`` the frozen encoder keeps its random
initialisation (the paper's "local only" ablation needs no more). The downstream representation
(``embed``) is the frozen encoder's; the decoder blocks are what the stage adds, and
``contrastkit segment --run RUN`` starts fine-tuning from both.

Options (YAML ``extra: {gcl-local: {...}}``): decoder_blocks (2), grid (8, must divide the map's side),
local_dim (128, the head's output), negatives (image | batch), crop_scale (the views' crop area
share, default (0.3, 1.0) so that two views overlap). ``--temperature`` (default 0.1, the paper's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options, method_temperature
from contrastkit.modalities.image.segmentation.model import UNetDecoder, stage_encoder_check
from contrastkit.modalities.image.segmentation.views import corresponding_cells
from contrastkit.modalities.image.views.image import EvalView
from contrastkit.modalities.image.views.located import LocatedViews
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.dense_infonce import DenseInfoNCE

PAPER_TEMPERATURE = 0.1
DEFAULTS = {"decoder_blocks": 2, "grid": 8, "local_dim": 128, "negatives": "image", "crop_scale": (0.3, 1.0)}


class GlobalLocalStage(nn.Module):
    """Frozen ``backbone`` + trainable ``decoder`` blocks and ``local_projection``, trained with the dense loss."""

    def __init__(self, backbone: nn.Module, decoder: UNetDecoder, local_projection: nn.Module, views: LocatedViews,
                 eval_view: nn.Module, objective: nn.Module, grid: int):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.decoder = decoder
        self.local_projection = local_projection
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.grid = grid

    def train(self, mode: bool = True) -> GlobalLocalStage:
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm keeps the global stage's statistics too
        return self

    def local_maps(self, views: Tensor) -> Tensor:
        """(B, grid, grid, local_dim): the projected decoder map, averaged over regions, channels last."""
        with torch.no_grad():
            features = self.backbone.stage_features(views)
        maps = self.local_projection(self.decoder(features))
        if maps.shape[-1] % self.grid or maps.shape[-2] % self.grid:
            raise ConfigError(f"gcl-local: the decoder map is {maps.shape[-2]} x {maps.shape[-1]}, which a grid of "
                              f"{self.grid} does not divide; set extra.gcl-local.grid to a divisor.")
        return F.adaptive_avg_pool2d(maps, self.grid).permute(0, 2, 3, 1)

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        view_a, view_b, geometry_a, geometry_b = self.views.two_views_located(batch["image"])
        maps_a, maps_b = self.local_maps(torch.cat([view_a, view_b])).chunk(2)
        a_to_b = corresponding_cells(geometry_a, geometry_b, self.grid, self.grid).to(maps_a.device)
        b_to_a = corresponding_cells(geometry_b, geometry_a, self.grid, self.grid).to(maps_a.device)
        loss = 0.5 * (self.objective(maps_a, maps_b, correspondence=a_to_b)
                      + self.objective(maps_b, maps_a, correspondence=b_to_a))
        return loss, {"matched_share": float((a_to_b >= 0).float().mean())}

    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: Tensor) -> Tensor:
        return embedding  # no global head: the frozen encoder's features are where collapse would show


def build(config, data: DataInfo) -> GlobalLocalStage:
    options = method_options(config, "gcl-local", DEFAULTS)
    backbone = build_backbone(config.backbone, data, config.width, config)
    stage_encoder_check(backbone, "gcl-local")
    decoder = UNetDecoder(backbone.stage_channels, num_blocks=int(options["decoder_blocks"]))
    width = decoder.out_channels
    local_projection = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(width, int(options["local_dim"]), 1))
    views = LocatedViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                         **{"crop_scale": tuple(options["crop_scale"]), **(config.extra.get("views") or {})})
    objective = GatheredObjective(DenseInfoNCE(method_temperature(config, PAPER_TEMPERATURE), options["negatives"]))
    return GlobalLocalStage(backbone, decoder, local_projection, views, EvalView(mean=data.mean, std=data.std),
                            objective, int(options["grid"]))
