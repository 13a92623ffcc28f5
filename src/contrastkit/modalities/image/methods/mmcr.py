"""MMCR (Yerxa, Kuang, Simoncelli & Chung, "Learning Efficient Coding of Natural Images with Maximum
Manifold Capacity Representations", NeurIPS 2023).

Each image of the batch gets ``k`` random views; one backbone and projector embed them all, and
the objective maximises the nuclear norm of the matrix of the per-image centroids of the
normalised embeddings (:mod:`contrastkit.objectives.mmcr`)::

    c_i  = (1 / k) sum_v z_i^v / ||z_i^v||,     loss = -||C||_* + lambda * mean_i ||Z_i||_*

There are no negatives: long centroids need the views of an image to agree, and a large nuclear
norm needs the centroids of different images to spread over many directions. Under data
parallelism the views are gathered with their gradient and every process takes the SVD of the
global centroid matrix (exact; see the objective's docstring).

Defaults. LightlySSL's CIFAR-10 benchmark has no MMCR entry (its table lists BarlowTwins, BYOL,
DCL, DCLW, DINO, FastSiam, MoCo, NNCLR, SimCLR, SimSiam, SwaV and SMoG). The paper's CIFAR-10
code (github.com/ThomasYerxa/mmcr, ``pretrain_cifar_stl.py``) trains a ResNet-50 with a projector
``2048 -> 512 (BN, ReLU) -> 128`` without biases, 40 views of each of 32 images per batch,
lambda = 0, Adam at lr 1e-3 with weight decay 1e-6, for 500 epochs, with SimCLR's CIFAR views (no
blur). Here:

- views: SimCLR's recipe (:class:`SimCLRViews`), as the paper's;
- k = 8 views (``num_views``), LightlySSL's MMCR example on CIFAR-10 (``MMCRTransform(k=8)``),
  instead of the paper's 40: this library's default batch is 256 images, not 32, so k = 8 already
  gives 2,048 view images a step (the paper: 1,280). ``extra: {mmcr: {num_views: 40}}`` with
  ``--batch-size 32`` is the paper's setting;
- lambda = 0 (``local_weight``), the paper's CIFAR value (LightlySSL's ``MMCRLoss``: 5e-3, the
  paper's ImageNet value);
- projector ``backbone -> hidden (BN, ReLU) -> --projection-dim`` with ``hidden =
  --projection-hidden-dim`` or the backbone's width (512 for a ResNet-18, as LightlySSL's example
  ``MMCRProjectionHead(512, 512, 128)``; the paper's 512 after a ResNet-50), the output layer
  without bias as in the paper's code;
- the optimiser is the run's (``--optimizer adamw --lr 1e-3`` is close to the paper's Adam); the
  momentum encoder of the paper's ImageNet variant is not implemented.

All k x B views go through the backbone in one pass, so BatchNorm normalises them together: the
paper's code does so (``mmcr/cifar_stl/train.py`` folds the views into the batch before one model
call); LightlySSL's example calls the model once per view.

With the views' BSS option on, the k views of a batch are standardised together (one style for
the whole k x B batch), not each view separately as in :class:`SimCLRViews.two_views`.

Options (YAML ``extra: {mmcr: {...}}``):
    num_views: k, the views per image (default 8, at least 2).
    local_weight: lambda (default 0).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.heads import MLPHead
from contrastkit.objectives.mmcr import MMCRLoss

DEFAULTS = {"num_views": 8, "local_weight": 0.0}


class MMCR(nn.Module):
    """Backbone + projector over ``num_views`` views of each image; ``objective(z)`` with z (B, k, d)."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, views: nn.Module, eval_view: nn.Module,
                 objective: nn.Module, num_views: int):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.num_views = num_views

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        # One pipeline call and one backbone pass over the k copies of the batch (independent
        # draws per copy; BatchNorm statistics over all k x B views). Row v * B + i is view v of image i.
        views = self.views(images.repeat(self.num_views, 1, 1, 1))
        z = self.projection(self.backbone(views))
        z = z.view(self.num_views, images.shape[0], -1).transpose(0, 1)  # (B, k, d)
        return self.objective(z), {}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)


def mmcr_projection(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """``Linear -> BN -> ReLU -> Linear``, no biases (the paper's CIFAR projector, 2048 -> 512 -> 128)."""
    return nn.Sequential(
        MLPHead([(in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True))]),
        nn.Linear(hidden_dim, out_dim, bias=False),
    )


def build(config, data: DataInfo) -> MMCR:
    options = method_options(config, "mmcr", DEFAULTS)
    num_views = options["num_views"]
    if not isinstance(num_views, int) or isinstance(num_views, bool) or num_views < 2:
        raise ConfigError(f"extra.mmcr.num_views must be an integer >= 2 (the paper: 40, LightlySSL's example: 8), "
                          f"got {num_views!r}.")
    backbone = build_backbone(config.backbone, data, config.width, config)
    hidden = config.projection_hidden_dim or backbone.output_dim
    return MMCR(
        backbone=backbone,
        projection=mmcr_projection(backbone.output_dim, hidden, config.projection_dim),
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          **(config.extra.get("views") or {})),
        eval_view=EvalView(mean=data.mean, std=data.std),
        objective=GatheredObjective(MMCRLoss(local_weight=options["local_weight"])),
        num_views=num_views,
    )
