"""DINO (Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021).

Self-distillation without labels: a student (backbone f, head h) and a teacher (an EMA copy of f and
h, no gradient) see multi-crop views of each image (:class:`MultiCropViews`): the teacher the two
global crops, the student every crop. The student's softmax over K outputs predicts the teacher's
centred and sharpened softmax for every pair of crops but the same crop twice
(:class:`contrastkit.objectives.dino.DINOLoss`, which keeps the centre). The teacher's temperature
warms up linearly from ``warmup_teacher_temperature`` to ``teacher_temperature`` over the first
``warmup_fraction`` of the steps; the teacher follows the student after every optimiser step.

The head is DINO's: an MLP to a bottleneck, an L2 normalisation, and a weight-normalised linear layer
to K outputs whose rows are kept at unit norm (the paper's ``norm_last_layer``: weight norm with the
gain fixed at 1), :class:`NormalizedLinear`.

Defaults follow LightlySSL's CIFAR-10 benchmark (``DINOModel``; ResNet-18, batch 128, 200 epochs):

- views: two 32-pixel global crops at area (0.4, 1) (``DINOTransform``'s, scaled to the image size
  as :func:`~contrastkit.modalities.image.views.multicrop.multicrop_recipe`), jitter (0.4, 0.4,
  0.2, 0.1) with p 0.8, grayscale 0.2, the second global crop solarised with p 0.2, no blur, and
  no local crops; ``local_crops: 6`` adds local crops (area (0.05, 0.4), side 96/224 of the image);
- head ``backbone -> 4 x backbone (BN, GELU) -> --projection-dim`` then the normalised layer to
  2048 outputs (the benchmark: 512 -> 2048 -> 256 -> 2048);
- student temperature 0.1, teacher temperature 0.04 with a warm-up from 0.04 over the first 30 of
  200 epochs (0.15 of the run; LightlySSL's ``DINOLoss`` defaults, so a constant 0.04), centre
  momentum 0.9;
- teacher momentum 0.99, constant (the paper: a cosine from 0.996 to 1, ``momentum_schedule:
  cosine``); SGD lr 0.06 x batch / 128, momentum 0.9, weight decay 5e-4, cosine schedule, as
  ``contrastkit fit``'s SGD defaults but for its warm-up epoch.

The paper's freezing of the last layer in the first epoch is not applied (the benchmark does not).

Options (YAML ``extra: {dino: {...}}``):
    local_crops, local_crop_size: as SwAV (default 0, scaled size).
    output_dim: K (default 2048).
    student_temperature (0.1), teacher_temperature (0.04), warmup_teacher_temperature (0.04),
    warmup_fraction (0.15).
    center_momentum: m of the centre (0.9); 1 keeps the centre at zero (no centring: collapses).
    momentum: the teacher's EMA rate (0.99); momentum_schedule: constant or cosine (to 1).

Collapse diagnostics look at the head's output (``project_embedding``) and at the loss's targets,
the teacher's centred and sharpened softmax (``objective_distributions``; flagged when it carries no
information about the image: measured 5e-8 nats without centring, 1.28 for DINO after 30 epochs on
512 digits). The effective-rank floor of the logits is 2 % of the bottleneck's width
(``projection_max_rank``), the most rank they can have, not of K: with the floor taken of K, a
CIFAR-10 run of the ranking protocol (25 epochs), within a point of LightlySSL's DINO in kNN (33.2
against 34.15 on seed 0) and with targets of 1.26 nats, was flagged at RankMe 18.8 against a floor
of 41. A 1-epoch run on digits (5 steps at batch 256) looks collapsed in eval mode only because
BatchNorm's running statistics have not caught up (mean pairwise cosine of the head's outputs 0.99;
0.73 with the statistics recomputed over the data): while the running statistics are that young the
verdict needs collapse with batch statistics too
(:func:`~contrastkit.modalities.image.training.callbacks.objective_space_report`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options
from contrastkit.modalities.image.views.image import BYOL_JITTER, EvalView
from contrastkit.modalities.image.views.multicrop import MultiCropViews, multicrop_recipe
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.heads import MLPHead
from contrastkit.nn.momentum import check_momentum, momentum_copy, step_momentum_targets
from contrastkit.objectives.dino import (
    PAPER_CENTER_MOMENTUM,
    PAPER_STUDENT_TEMPERATURE,
    PAPER_TEACHER_TEMPERATURE,
    DINOLoss,
)

DEFAULTS = {"local_crops": 0, "local_crop_size": None, "output_dim": 2048,
            "student_temperature": PAPER_STUDENT_TEMPERATURE, "teacher_temperature": PAPER_TEACHER_TEMPERATURE,
            "warmup_teacher_temperature": PAPER_TEACHER_TEMPERATURE, "warmup_fraction": 30 / 200,
            "center_momentum": PAPER_CENTER_MOMENTUM, "momentum": 0.99, "momentum_schedule": "constant"}
GLOBAL_SCALE_LOW = 0.4  # DINOTransform's global crops (LightlySSL's CIFAR-10 benchmark), the paper's code


class NormalizedLinear(nn.Module):
    """``x W^T`` with each row of W scaled to unit norm in the forward pass: weight normalisation
    with its gain fixed at 1 (DINO's last layer); the gradient flows through the normalisation."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    """MLP to a bottleneck, L2 normalisation, then :class:`NormalizedLinear` to K outputs."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, output_dim: int):
        super().__init__()
        self.mlp = MLPHead([(in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.GELU()),
                            (hidden_dim, bottleneck_dim, None, None)])
        self.last_layer = NormalizedLinear(bottleneck_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def teacher_temperature(progress: float, start: float, end: float, warmup_fraction: float) -> float:
    """Linear from ``start`` to ``end`` over the first ``warmup_fraction`` of the run, then ``end``."""
    if warmup_fraction <= 0 or progress >= warmup_fraction:
        return end
    return start + (end - start) * progress / warmup_fraction


class DINO(nn.Module):
    """Student backbone + head, EMA teacher backbone + head, multi-crop views, the DINO loss and centre."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, views: MultiCropViews, eval_view: nn.Module,
                 objective: nn.Module, base_momentum: float, cosine_schedule: bool,
                 teacher_temperatures: tuple[float, float], warmup_fraction: float):
        super().__init__()
        self.backbone = backbone
        self.projection = projection  # DINO's head (named as the other methods' projector)
        self.target_backbone = momentum_copy(backbone)
        self.target_projection = momentum_copy(projection)
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.base_momentum = base_momentum
        self.cosine_schedule = cosine_schedule
        self.teacher_temperatures = teacher_temperatures  # (start of the warm-up, end)
        self.warmup_fraction = warmup_fraction
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))  # steps done / planned

    def current_teacher_temperature(self) -> float:
        return teacher_temperature(float(self.progress), *self.teacher_temperatures, self.warmup_fraction)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        crops = self.views.multi_crop(batch["image"])
        # The backbone once per crop size, the head on every crop at once (the paper's MultiCropWrapper).
        features = crops.map(self.backbone)
        student = self.projection(features.flatten(0, 1)).view(crops.num_crops, crops.batch_size, -1)
        with torch.no_grad():
            teacher_features = crops.map(self.target_backbone, global_only=True)
            teacher = self.target_projection(teacher_features.flatten(0, 1)).view(
                crops.num_global, crops.batch_size, -1)
        tau_t = self.current_teacher_temperature()
        loss = self.objective(student.transpose(0, 1), teacher.transpose(0, 1), teacher_temperature=tau_t)
        return loss, {"teacher_temperature": tau_t}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.progress.fill_(step / max(1, total_steps))
        step_momentum_targets([(self.target_backbone, self.backbone), (self.target_projection, self.projection)],
                              step, total_steps, self.base_momentum, cosine=self.cosine_schedule)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)

    @property
    def projection_max_rank(self) -> int:
        """The K logits are a linear map of the unit bottleneck: their rank is at most its width."""
        return self.projection.last_layer.weight.shape[1]

    @torch.no_grad()
    def objective_distributions(self, images: torch.Tensor) -> dict[str, Tensor]:
        """The loss's targets for the eval view of ``images``: the teacher's centred and sharpened
        softmax at the current teacher temperature, (B, K). Uniform or one-output targets for every
        image, the two collapses of the paper's Sec. 5.3, carry no information about the image."""
        teacher = self.target_projection(self.target_backbone(self.eval_view(images)))
        center = self.objective.objective.center
        centred = teacher - center if center.numel() else teacher
        return {"teacher_targets": torch.softmax(centred / self.current_teacher_temperature(), dim=-1)}


def _positive(options: dict, name: str) -> float:
    value = options[name]
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"extra.dino.{name} must be a positive number, got {value!r}.")
    return float(value)


def build(config, data: DataInfo) -> DINO:
    options = method_options(config, "dino", DEFAULTS)
    if options["momentum_schedule"] not in ("constant", "cosine"):
        raise ConfigError(f"extra.dino.momentum_schedule must be constant or cosine, got "
                          f"{options['momentum_schedule']!r}.")
    if not 0.0 <= options["warmup_fraction"] <= 1.0:
        raise ConfigError(f"extra.dino.warmup_fraction must be in [0, 1], got {options['warmup_fraction']!r}.")
    output_dim = options["output_dim"]
    if not isinstance(output_dim, int) or isinstance(output_dim, bool) or output_dim < 1:
        raise ConfigError(f"extra.dino.output_dim must be a positive integer, got {output_dim!r}.")
    recipe = multicrop_recipe(data.image_size, GLOBAL_SCALE_LOW)
    colour = {"jitter": BYOL_JITTER} if data.channels == 3 else {}
    views_options = {"crop_scale": recipe["global_crop_scale"], "global_solarize_p": (0.0, 0.2), **colour,
                     **(config.extra.get("views") or {})}
    views = MultiCropViews(data.image_size, data.channels, data.mean, data.std, local_crops=options["local_crops"],
                           local_crop_size=options["local_crop_size"] or recipe["local_crop_size"], **views_options)
    backbone = build_backbone(config.backbone, data, config.width, config)
    hidden = config.projection_hidden_dim or 4 * backbone.output_dim
    objective = DINOLoss(output_dim=output_dim, student_temperature=_positive(options, "student_temperature"),
                         teacher_temperature=_positive(options, "teacher_temperature"),
                         center_momentum=options["center_momentum"])
    return DINO(
        backbone=backbone,
        projection=DINOHead(backbone.output_dim, hidden, config.projection_dim, output_dim),
        views=views,
        eval_view=EvalView(mean=data.mean, std=data.std),
        objective=GatheredObjective(objective),
        base_momentum=check_momentum(options["momentum"], "extra.dino.momentum"),
        cosine_schedule=options["momentum_schedule"] == "cosine",
        teacher_temperatures=(_positive(options, "warmup_teacher_temperature"),
                              _positive(options, "teacher_temperature")),
        warmup_fraction=float(options["warmup_fraction"]),
    )
