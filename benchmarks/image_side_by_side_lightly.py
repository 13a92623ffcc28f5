"""LightlySSL's side of ``image_side_by_side.py``: SimCLR, BYOL and MoCo v2 as LightlySSL's examples
train them (a LightningModule with its heads, losses and momentum utilities, ``LightlyDataset`` over
the JPEG files with its transforms in DataLoader workers), on the backbone module, optimiser,
schedule and settings that the contrastkit run uses.

Memory format: with ``channels_last`` the whole module (backbone, heads, momentum copies) is
converted with ``.to(memory_format=torch.channels_last)`` before training, and each batch of views
is converted likewise inside ``training_step``, so the conversion is timed as part of the step, as
contrastkit's views convert inside its step.
"""

from __future__ import annotations

import copy

import torch


def lightly_module(method: str, backbone: torch.nn.Module, settings: dict, configure_optimizers,
                   channels_last: bool):
    """The LightningModule for ``method`` around ``backbone``; ``settings`` are the run's
    method settings (``image_side_by_side.method_settings``): the same values contrastkit runs with."""
    import lightning as L
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead
    from lightly.models.modules.heads import ProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from torch import nn

    dim = backbone.output_dim
    view_format = torch.channels_last if channels_last else torch.contiguous_format

    class LightlyMethod(L.LightningModule):
        def views(self, batch):
            return [view.contiguous(memory_format=view_format) for view in batch[0]]

        def configure_optimizers(self):
            return configure_optimizers(self)

    class LightlySimCLR(LightlyMethod):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            # contrastkit's SimCLR head, in LightlySSL's blocks: its SimCLRProjectionHead (1.6) adds a
            # BatchNorm1d on the output (SimCLR v2), which contrastkit's SimCLR does not have.
            hidden, out = settings["projection_hidden"], settings["projection_dim"]
            self.projection_head = ProjectionHead([(dim, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
                                                   (hidden, out, None, None)])
            self.criterion = NTXentLoss(temperature=settings["temperature"])

        def training_step(self, batch, batch_idx):
            x0, x1 = self.views(batch)
            z0 = self.projection_head(self.backbone(x0))
            z1 = self.projection_head(self.backbone(x1))
            loss = self.criterion(z0, z1)
            self.log("train_loss_ssl", loss)
            return loss

    class LightlyBYOL(LightlyMethod):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = BYOLProjectionHead(dim, settings["projection_hidden"], settings["projection_dim"])
            self.prediction_head = BYOLPredictionHead(settings["projection_dim"], settings["predictor_hidden"],
                                                      settings["projection_dim"])
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)
            self.criterion = NegativeCosineSimilarity()

        def forward(self, x):
            return self.prediction_head(self.projection_head(self.backbone(x)))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x)).detach()

        def training_step(self, batch, batch_idx):
            momentum = cosine_schedule(self.global_step, settings["total_steps"], settings["momentum"], 1.0)
            update_momentum(self.backbone, self.backbone_momentum, m=momentum)
            update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
            x0, x1 = self.views(batch)
            p0, p1 = self.forward(x0), self.forward(x1)
            z0, z1 = self.forward_momentum(x0), self.forward_momentum(x1)
            # LightlySSL's example loss is 0.5 (-cos + -cos); contrastkit's (2 - 2 cos) + (2 - 2 cos) has
            # four times its gradient, so x 4 makes the same optimiser take the same steps.
            loss = 2.0 * (self.criterion(p0, z1) + self.criterion(p1, z0))
            self.log("train_loss_ssl", loss)
            return loss

    class LightlyMoCo(LightlyMethod):
        """MoCo v2 as LightlySSL's example: NT-Xent with a memory bank is MoCo's InfoNCE over
        [the query's key, the bank]; the keys join the bank inside the loss."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = MoCoProjectionHead(dim, settings["projection_hidden"], settings["projection_dim"])
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)
            self.criterion = NTXentLoss(temperature=settings["temperature"],
                                        memory_bank_size=(settings["queue_size"], settings["projection_dim"]))

        def training_step(self, batch, batch_idx):
            # The EMA before the step's forward uses the weights after the previous step: the same
            # sequence of key encoders as contrastkit's update after each optimiser step.
            update_momentum(self.backbone, self.backbone_momentum, m=settings["momentum"])
            update_momentum(self.projection_head, self.projection_head_momentum, m=settings["momentum"])
            x_query, x_key = self.views(batch)
            query = self.projection_head(self.backbone(x_query))
            key = self.projection_head_momentum(self.backbone_momentum(x_key)).detach()
            loss = self.criterion(query, key)
            self.log("train_loss_ssl", loss)
            return loss

    module = {"simclr": LightlySimCLR, "byol": LightlyBYOL, "moco": LightlyMoCo}[method]()
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def lightly_transform(method: str, normalize: dict):
    """The views of ``image_side_by_side``'s docstring, in LightlySSL's transforms."""
    from lightly.transforms import (BYOLTransform, BYOLView1Transform, BYOLView2Transform, MoCoV2Transform,
                                    SimCLRTransform)

    if method == "simclr":  # jitter 0.8 x 0.5 = (0.4, 0.4, 0.4, 0.1), crop 0.08-1
        return SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0, normalize=normalize)
    if method == "moco":  # contrastkit's MoCo takes SimCLR's views: crop 0.08-1 (MoCo v2's own is 0.2)
        return MoCoV2Transform(input_size=32, min_scale=0.08, gaussian_blur=0.0, normalize=normalize)
    return BYOLTransform(view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0, normalize=normalize),
                         view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0, normalize=normalize))


def head_parameters(module: torch.nn.Module, backbone: torch.nn.Module) -> int:
    """Trainable parameters outside the backbone (heads, predictor): the same count in both
    libraries when their heads have the same sizes."""
    inside = {id(p) for p in backbone.parameters()}
    return sum(p.numel() for p in module.parameters() if p.requires_grad and id(p) not in inside)
