"""MSN (Assran, Caron, Misra, Bojanowski, Bordes, Vincent, Joulin, Rabbat & Ballas, "Masked Siamese
Networks for Label-Efficient Learning", ECCV 2022).

Chosen over SMoG for issue 21 because its one requirement beyond the catalogue, a patch
transformer that runs on a subset of its patches, is already the project's (the ViT of
:mod:`contrastkit.modalities.image.encoders.vit`, I-JEPA's encoder here): masking is then just
dropping tokens, as in the paper.

Each image gives two views (random resized crops of area (0.3, 1) with SimCLR's colour ops, MSN's
``RandomResizedCrop(scale=(0.3, 1.0))``). The anchor view loses a random ``mask_ratio`` of its
patches (random masking, the paper's default for ViT-S) and goes through the encoder, the mean of
its kept tokens (the ViT's pooling) through a projection head; the target view, unmasked, through
EMA copies of both (no gradient). Both projections are compared with K learned prototypes, and the anchor's assignment
is trained to match the target's sharpened one, with mean-entropy maximisation over the batch
(:class:`contrastkit.objectives.msn.MSNLoss`). The targets follow the online networks with a rate
rising linearly from ``momentum`` to 1 (the paper: 0.996 to 1; 0.99 here for short runs, as JEPA).

Deviations, all for the project's small patch transformer: the representation is the mean of the
tokens (the paper's ViT has a [CLS] token); there are no focal views (the paper's ten 96-pixel
crops, also masked; the ViT's positions would be resized for them, which is not tried here).

Defaults: the encoder as JEPA's (width ``96 * --width``, 4 blocks, 3 heads, patches of 4 pixels
at 32; or ``--backbone vit-micro | vit-tiny | vit-small``); projection ``dim -> 4 dim -> 4 dim -> --projection-dim`` with BatchNorm and GELU
(LightlySSL's ``MSNProjectionHead``, 384 -> 2048 -> 2048 -> 256, scaled); 1024 prototypes; tau 0.1,
sharpening T 0.25, ME-MAX weight 1, three Sinkhorn iterations on the targets (LightlySSL's
``MSNLoss``; its MSN benchmark is on ImageNet with a ViT, there is none on CIFAR-10), mask ratio
0.15 (LightlySSL's benchmark, the paper's ViT-S random masking). Transformers want
``--optimizer adamw`` (the paper: AdamW).

Options (YAML ``extra: {msn: {...}}``): ``dim``, ``depth``, ``heads``, ``patch_size`` (as JEPA),
``mask_ratio`` (0.15), ``prototypes`` (1024), ``temperature`` (0.1), ``sharpen_temperature``
(0.25), ``regularization_weight`` (1; 0 drops ME-MAX: collapses), ``sinkhorn_iterations`` (3),
``momentum`` (0.99).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.encoders.vit import VisionTransformer
from contrastkit.modalities.image.methods.jepa import build_patch_encoder
from contrastkit.modalities.image.methods.parts import DataInfo, method_options
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews, defaults_for
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.heads import MLPHead
from contrastkit.nn.momentum import check_momentum, ema_update_, linear_momentum, momentum_copy
from contrastkit.objectives.msn import (
    PAPER_REGULARIZATION_WEIGHT,
    PAPER_SHARPEN_TEMPERATURE,
    PAPER_SINKHORN_ITERATIONS,
    PAPER_TEMPERATURE,
    MSNLoss,
)

DEFAULTS = {"dim": None, "depth": 4, "heads": 3, "patch_size": None, "mask_ratio": 0.15, "prototypes": 1024,
            "temperature": PAPER_TEMPERATURE, "sharpen_temperature": PAPER_SHARPEN_TEMPERATURE,
            "regularization_weight": PAPER_REGULARIZATION_WEIGHT, "sinkhorn_iterations": PAPER_SINKHORN_ITERATIONS,
            "momentum": 0.99}
CROP_SCALE_LOW = 0.3  # MSN's random resized crops


def random_keep(batch: int, num_patches: int, keep: int, device: torch.device) -> Tensor:
    """(B, keep) patch indices, a uniformly random subset of each image's patches (random masking)."""
    return torch.rand(batch, num_patches, device=device).argsort(dim=1)[:, :keep]


class MSN(nn.Module):
    """Encoder + projection + prototypes; EMA target encoder + projection; random patch masking."""

    def __init__(self, encoder: VisionTransformer, projection: nn.Module, num_prototypes: int, views: nn.Module,
                 eval_view: nn.Module, objective: nn.Module, mask_ratio: float, base_momentum: float):
        super().__init__()
        self.encoder = encoder
        self.projection = projection
        initial = nn.Linear(projection.out_dim, num_prototypes, bias=False).weight  # (K, d), nn.Linear's init
        self.prototypes = nn.Parameter(initial.detach().clone())
        self.target_encoder = momentum_copy(encoder)
        self.target_projection = momentum_copy(projection)
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.kept_patches = max(1, round((1.0 - mask_ratio) * encoder.num_patches))
        self.base_momentum = base_momentum

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        target_view, anchor_view = self.views.two_views(batch["image"])
        keep = random_keep(len(anchor_view), self.encoder.num_patches, self.kept_patches, anchor_view.device)
        anchors = self.projection(self.encoder(anchor_view, keep_index=keep))
        with torch.no_grad():
            targets = self.target_projection(self.target_encoder(target_view))
        return self.objective(anchors, targets, prototypes=self.prototypes), {}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        momentum = linear_momentum(step - 1, total_steps, self.base_momentum)
        ema_update_(self.target_encoder, self.encoder, momentum)
        ema_update_(self.target_projection, self.projection, momentum)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.target_encoder(self.eval_view(images))  # the paper evaluates the target encoder

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.target_projection(embedding), dim=-1)

    @torch.no_grad()
    def objective_distributions(self, images: torch.Tensor) -> dict[str, Tensor]:
        """The loss's targets for the eval view of ``images`` before Sinkhorn (which depends on the
        batch): the target network's sharpened prototype assignment, (B, K). The same assignment for
        every image carries no information about the image (the collapse ME-MAX prevents)."""
        loss = self.objective.objective
        targets = F.normalize(self.target_projection(self.target_encoder(self.eval_view(images))), dim=-1)
        logits = targets @ F.normalize(self.prototypes, dim=-1).T
        return {"target_assignments": torch.softmax(logits / (loss.temperature * loss.sharpen_temperature), dim=-1)}


def _number(options: dict, name: str, low: float, high: float, low_open: bool = False) -> float:
    value = options[name]
    if (not isinstance(value, int | float) or isinstance(value, bool) or value > high
            or (value <= low if low_open else value < low)):
        raise ConfigError(f"extra.msn.{name} must be a number in {'(' if low_open else '['}{low}, {high}], "
                          f"got {value!r}.")
    return float(value)


def build(config, data: DataInfo) -> MSN:
    options = method_options(config, "msn", DEFAULTS)
    encoder = build_patch_encoder(config, data, options, "msn")
    dim = encoder.output_dim
    hidden = config.projection_hidden_dim or 4 * dim
    projection = MLPHead([(dim, hidden, nn.BatchNorm1d(hidden), nn.GELU()),
                          (hidden, hidden, nn.BatchNorm1d(hidden), nn.GELU()),
                          (hidden, config.projection_dim, None, None)])
    prototypes = options["prototypes"]
    if not isinstance(prototypes, int) or isinstance(prototypes, bool) or prototypes < 1:
        raise ConfigError(f"extra.msn.prototypes must be a positive whole number (the paper: 1024), "
                          f"got {prototypes!r}.")
    crop_low = max(CROP_SCALE_LOW, defaults_for(data.image_size)["crop_scale"][0])
    objective = MSNLoss(temperature=_number(options, "temperature", 0.0, float("inf"), low_open=True),
                        sharpen_temperature=_number(options, "sharpen_temperature", 0.0, 1.0, low_open=True),
                        regularization_weight=_number(options, "regularization_weight", 0.0, float("inf")),
                        sinkhorn_iterations=options["sinkhorn_iterations"])
    return MSN(
        encoder=encoder,
        projection=projection,
        num_prototypes=prototypes,
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          **{"crop_scale": (crop_low, 1.0), **(config.extra.get("views") or {})}),
        eval_view=EvalView(mean=data.mean, std=data.std),
        objective=GatheredObjective(objective),
        mask_ratio=_number(options, "mask_ratio", 0.0, 1.0),
        base_momentum=check_momentum(options["momentum"], "extra.msn.momentum"),
    )
