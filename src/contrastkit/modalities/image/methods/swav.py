"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of Visual Features
by Contrasting Cluster Assignments", NeurIPS 2020).

Every crop of an image (two global crops and N local ones, :class:`MultiCropViews`) goes through the
backbone, a projector and an L2 normalisation, ``z = normalize(g(f(x)))``, and is scored against K
learned prototypes of unit norm, ``s = C^T z``. The codes of the global crops are equal-partition
soft assignments of the batch to the prototypes (Sinkhorn-Knopp), and every crop predicts the codes
of the global crops other than itself (:class:`contrastkit.objectives.swav.SwAVLoss`). The
prototypes are projected back onto the unit sphere after every optimiser step (the paper's code
normalises them before every step), and may be left untrained for the first steps
(``freeze_prototypes_steps``, the paper's ``freeze_prototypes_niters``). An optional queue keeps the
``z`` of the global crops of past batches (:class:`~contrastkit.nn.queue.MemoryQueue`); once full,
its scores join the batch's for the codes (the paper: for batches under 256).

Defaults follow LightlySSL's CIFAR-10 benchmark (``SwaVModel``; ResNet-18, batch 128, 200 epochs):

- views: two 32-pixel crops at area (0.14, 1) (scaled to the image size as
  :func:`~contrastkit.modalities.image.views.multicrop.multicrop_recipe`), SimCLR's colour jitter
  of strength 0.5, no blur, and no local crops; ``local_crops: 6`` adds the paper's six local crops
  (area (0.05, 0.14), side 96/224 of the image: 14 pixels at 32);
- projector ``backbone -> backbone (BN, ReLU) -> --projection-dim`` (512 -> 512 -> 128);
- 512 prototypes; temperature 0.1, Sinkhorn epsilon 0.05 and 3 iterations (``SwaVLoss()``);
  no queue, prototypes never frozen;
- optimiser: the benchmark uses Adam (lr 1e-3 x batch / 128, weight decay 1e-6); ``contrastkit
  fit``'s default is SGD, ``--optimizer adamw --lr 2e-3 --weight-decay 1e-6`` comes closest.

Data parallelism: the scores of the global batch are gathered (:class:`GatheredObjective`), so the
Sinkhorn sums run over the global batch; the queue is gathered before it stores.

Options (YAML ``extra: {swav: {...}}``):
    local_crops: N local crops (default 0); local_crop_size: their side (default scaled).
    prototypes: K (default 512).
    queue_size: past samples whose global crops are kept (default 0: no queue).
    freeze_prototypes_steps: optimiser steps during which the prototypes are not updated (default 0).
    sinkhorn_iterations (default 3; 0 drops the equal partition), epsilon (default 0.05).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options, method_temperature
from contrastkit.modalities.image.views.image import EvalView
from contrastkit.modalities.image.views.multicrop import MultiCropViews, multicrop_recipe
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.heads import ProjectionHead
from contrastkit.nn.queue import MemoryQueue
from contrastkit.objectives.swav import PAPER_EPSILON, PAPER_SINKHORN_ITERATIONS, PAPER_TEMPERATURE, SwAVLoss

DEFAULTS = {"local_crops": 0, "local_crop_size": None, "prototypes": 512, "queue_size": 0,
            "freeze_prototypes_steps": 0, "sinkhorn_iterations": PAPER_SINKHORN_ITERATIONS,
            "epsilon": PAPER_EPSILON}
GLOBAL_SCALE_LOW = 0.14  # LightlySSL's CIFAR-10 SwaVTransform and the paper's global crops
NUM_GLOBAL = 2


class Prototypes(nn.Module):
    """K prototype vectors of unit norm; ``prototypes(z) = z C^T``, the cosines when z is normalised."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.weight = nn.Parameter(nn.Linear(dim, count, bias=False).weight.detach().clone())
        self.normalize_()

    def forward(self, z: Tensor) -> Tensor:
        return F.linear(z, self.weight)

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))


class SwAV(nn.Module):
    """Backbone, projector, prototypes, multi-crop views, the swapped prediction and an optional queue."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, prototypes: Prototypes, views: MultiCropViews,
                 eval_view: nn.Module, objective: nn.Module, queue: MemoryQueue | None = None,
                 freeze_prototypes_steps: int = 0):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.prototypes = prototypes
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.queue = queue
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # read by the freeze after resume
        self._new_keys: Tensor | None = None  # this step's global-crop embeddings, queued after the step

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        crops = self.views.multi_crop(batch["image"])
        # The backbone once per crop size, the projector on every crop at once (the paper's code).
        features = crops.map(self.backbone)  # (V, B, F)
        z = self.project_embedding(features.flatten(0, 1)).view(crops.num_crops, crops.batch_size, -1)
        scores = self.prototypes(z).transpose(0, 1)  # (B, V, K)
        extra = {}
        if self.queue is not None and self.queue.full:
            with torch.no_grad():  # the queue's scores with today's prototypes, for the codes only
                extra["queue_scores"] = self.prototypes(self.queue.keys().view(len(self.queue), crops.num_global, -1))
        loss = self.objective(scores, **extra)
        if self.queue is not None:
            # The loss is the global one on every process, so all agree on skipping (enqueueing is a collective).
            finite = bool(torch.isfinite(loss.detach()))
            self._new_keys = z[: crops.num_global].detach().transpose(0, 1).flatten(1) if finite else None
        return loss, {}

    def before_optimizer_step(self) -> None:
        # The paper's code drops the prototypes' gradient for its first iterations: the optimiser
        # then leaves them (and their momentum and weight decay) untouched.
        if int(self.steps_done) < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.steps_done.fill_(step)
        self.prototypes.normalize_()
        keys, self._new_keys = self._new_keys, None
        if keys is not None:
            self.queue.enqueue(keys)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(embedding), dim=-1)

    def objective_distributions(self, images: torch.Tensor) -> dict[str, Tensor]:
        """What the swapped prediction scores, for the eval view of ``images``: each image's prediction
        ``softmax(C^T z / tau)`` over the K prototypes, (B, K). The codes it is scored against come from
        Sinkhorn-Knopp, which spreads any batch over the prototypes by construction, so the collapse that
        matters is in the predictions: the same distribution for every image carries no information."""
        z = self.project_embedding(self.embed(images))
        return {"prototype_predictions": torch.softmax(self.prototypes(z) / self.objective.objective.temperature, dim=-1)}


def _whole(options: dict, name: str, low: int) -> int:
    value = options[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"extra.swav.{name} must be a whole number >= {low}, got {value!r}.")
    return value


def build(config, data: DataInfo) -> SwAV:
    options = method_options(config, "swav", DEFAULTS)
    queue_size = _whole(options, "queue_size", 0)
    recipe = multicrop_recipe(data.image_size, GLOBAL_SCALE_LOW)
    views_options = {"crop_scale": recipe["global_crop_scale"], **(config.extra.get("views") or {})}
    views = MultiCropViews(data.image_size, data.channels, data.mean, data.std,
                           local_crops=_whole(options, "local_crops", 0),
                           local_crop_size=options["local_crop_size"] or recipe["local_crop_size"], **views_options)
    backbone = build_backbone(config.backbone, data, config.width, config)
    hidden = config.projection_hidden_dim or backbone.output_dim
    objective = SwAVLoss(num_global=NUM_GLOBAL, temperature=method_temperature(config, PAPER_TEMPERATURE),
                         epsilon=options["epsilon"], sinkhorn_iterations=options["sinkhorn_iterations"])
    return SwAV(
        backbone=backbone,
        projection=ProjectionHead(backbone.output_dim, hidden, config.projection_dim, num_layers=2),
        prototypes=Prototypes(config.projection_dim, _whole(options, "prototypes", 1)),
        views=views,
        eval_view=EvalView(mean=data.mean, std=data.std),
        objective=GatheredObjective(objective),
        queue=MemoryQueue(queue_size, NUM_GLOBAL * config.projection_dim) if queue_size else None,
        freeze_prototypes_steps=_whole(options, "freeze_prototypes_steps", 0),
    )
