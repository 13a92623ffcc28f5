"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021).

Two augmented views of each image go through one backbone and a projector (the paper's
"expander"), each view in its own pass as in the paper's code; the loss drives the cross-correlation
matrix of the two views' embeddings, each dimension standardised over the batch, to the identity
(:class:`contrastkit.objectives.barlow_twins.BarlowTwins`). No negatives, no predictor, no momentum
encoder: the off-diagonal terms keep the dimensions decorrelated, which rules out collapse.

Recipe, scaled to the image size:
    views: BYOL's asymmetric views (:class:`BYOLViews`; the paper uses "the same parameters as in
        BYOL", LightlySSL's CIFAR-10 benchmark too); the blur is dropped below 96 pixels.
    projector: Linear-BN-ReLU blocks then a Linear; three layers (paper, ImageNet: 2048 -> 8192 ->
        8192 -> 8192), two up to 64 pixels (LightlySSL's CIFAR-10 benchmark: 512 -> 2048 -> 2048).
        Hidden width 4x the backbone's output (8192 = 4 x 2048 in both) or
        ``--projection-hidden-dim``; output ``--projection-dim`` (default 128; the paper and
        LightlySSL make it as wide as the hidden layers, pass ``--projection-dim`` to match).
    loss: lambda = 5e-3 (the paper and LightlySSL's CIFAR-10 benchmark; the paper's code 0.0051).
    optimiser: LightlySSL's CIFAR-10 benchmark uses SGD with lr 0.06 x batch / 128, momentum 0.9,
        weight decay 5e-4 and a cosine schedule (batch 128, 200 epochs); ``contrastkit fit``'s SGD
        defaults are these but for a warm-up epoch and the rate, 0.06 per 256 images (``--lr 0.12``
        matches it).
        The paper's ImageNet run uses LARS.

Data parallelism: the loss is computed on the embeddings of the global batch, gathered with
gradient (:class:`~contrastkit.nn.distributed.GatheredObjective`), as the paper's code sums the
cross-correlation over devices; the paper also uses global (synchronised) BatchNorm.

``--grad-cache-chunk C`` (:mod:`contrastkit.nn.gradcache`; here and in VICReg): the loss couples the
batch through its cross-correlation (VICReg: its variance and covariance) but depends on the
backbone only through the embeddings, so GradCache applies: the backbone embeds each view C rows at
a time (BatchNorm over each chunk), the projector (its BatchNorm over the whole view batch) and the
loss see the whole batch.

Options (YAML ``extra: {barlowtwins: {...}}``):
    redundancy_weight: lambda (default 5e-3).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options
from contrastkit.modalities.image.views.image import BYOLViews, EvalView
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.gradcache import embed_batch
from contrastkit.nn.heads import ProjectionHead
from contrastkit.objectives.barlow_twins import PAPER_REDUNDANCY_WEIGHT, BarlowTwins

DEFAULTS = {"redundancy_weight": PAPER_REDUNDANCY_WEIGHT}


class JointEmbedding(nn.Module):
    """Backbone + projector applied to each view in its own pass; the objective compares the two
    batches of embeddings (Barlow Twins, VICReg: the same architecture, different losses)."""

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
        # Separate passes, as the papers' code: BatchNorm normalises each view's batch on its own.
        z_a = self.projection(embed_batch(self.backbone, view_a, self.grad_cache_chunk))
        z_b = self.projection(embed_batch(self.backbone, view_b, self.grad_cache_chunk))
        return self.objective(z_a, z_b), {}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)


def expander(in_dim: int, hidden_dim: int | None, out_dim: int, image_size: int) -> ProjectionHead:
    """Barlow Twins' and VICReg's projector: Linear-BN-ReLU blocks and a last Linear; three layers
    above 64 pixels (the papers), two up to 64 (LightlySSL's CIFAR-10 recipe); hidden 4 x ``in_dim``."""
    return ProjectionHead(in_dim, hidden_dim or 4 * in_dim, out_dim, num_layers=2 if image_size <= 64 else 3,
                          batch_norm=True)


def joint_embedding_parts(config, data: DataInfo) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """Backbone, projector, views and evaluation view as Barlow Twins builds them (shared with VICReg)."""
    backbone = build_backbone(config.backbone, data, config.width, config)
    projection = expander(backbone.output_dim, config.projection_hidden_dim, config.projection_dim, data.image_size)
    views = BYOLViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                      **(config.extra.get("views") or {}))
    return backbone, projection, views, EvalView(mean=data.mean, std=data.std)


def build(config, data: DataInfo) -> JointEmbedding:
    options = method_options(config, "barlowtwins", DEFAULTS)
    backbone, projection, views, eval_view = joint_embedding_parts(config, data)
    objective = BarlowTwins(redundancy_weight=options["redundancy_weight"])
    return JointEmbedding(backbone, projection, views, eval_view, GatheredObjective(objective),
                          config.grad_cache_chunk)
