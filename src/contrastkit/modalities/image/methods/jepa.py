"""JEPA on image patches (Assran et al., "Self-Supervised Learning from Images with a
Joint-Embedding Predictive Architecture", CVPR 2023 -- I-JEPA; the same idea as AD-L-JEPA for
LiDAR): predict, in latent space, what a target encoder says about masked regions from what a
context encoder sees of the rest.

For an image cut into a ``g x g`` grid of patches (multi-block masking, I-JEPA Sec. 3):

- M target blocks ``B_1 .. B_M``: rectangles of ``s * g^2`` patches, ``s ~ U(target_scale)``,
  aspect ratio ``r ~ U(target_aspect)``; one size per batch, one position per image and block.
- the context: a block of scale ``~ U(context_scale)`` (aspect 1) minus every target block; all
  images of a batch keep the same number of context patches (a random subset of each image's).
- ``s_y = LayerNorm(target_encoder(x))`` (EMA of the context encoder, no gradient), all patches;
  ``s_x = context_encoder(x restricted to the context)`` (the ViT's ``tokens`` on the context
  patches alone); for each block ``i`` the predictor gets
  ``s_x`` and one mask token per position of ``B_i`` and predicts ``s_hat_i``. The loss (Eq. 1) is::

      loss = 1 / M * sum_i mean_{j in B_i} || s_hat_{i,j} - s_y_j ||^2 / D      (``loss: l2``)

  (divided by the token width D -- the reference code's mean over elements -- so that the loss
  does not grow with the width), or the reference code's smooth-L1 (``loss: smooth_l1``): the
  catalogue's :func:`contrastkit.objectives.masked_prediction.masked_token_regression`.

The target follows the context encoder with a rate rising linearly from m_0 to 1 (I-JEPA: 0.996;
here 0.99 for short runs). The only augmentation is a random resized crop (scale 0.3-1, as the
paper's). ``embed`` mean-pools the target encoder's tokens (the paper evaluates the target
encoder), and ``project`` is the same (the objective acts per token; the pooled token is where the
collapse diagnostics look).

The encoder is the project's ViT (:mod:`contrastkit.modalities.image.encoders.vit`, mean-pooled):
``--backbone vit-micro | vit-tiny | vit-small`` (scaled by ``--width``), or, left at ``auto``, one
sized by the options below.

Options (YAML ``extra: {jepa: {...}}``): ``dim`` (default ``96 * --width``, rounded to a multiple
of 4 * heads), ``depth`` (4), ``heads`` (3) (these three only without ``--backbone``),
``patch_size`` (default: the smallest divisor of the image side giving at most 8 patches per
side: 4 for 32 and 28 px, 1 for 8 px), ``predictor_dim``
(dim / 2), ``predictor_depth`` (2), ``num_targets`` (4), ``target_scale`` ([0.15, 0.2]),
``target_aspect`` ([0.75, 1.5]), ``context_scale`` ([0.85, 1.0]), ``momentum`` (0.99), ``loss``
(``l2``). Transformers want ``--optimizer adamw`` (I-JEPA uses AdamW, lr 1e-3 scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.nn.momentum import (
    check_momentum,
    ema_update_,
    linear_momentum,
    momentum_copy,
)
from contrastkit.modalities.image.encoders.vit import VisionTransformer, scaled_dim
from contrastkit.modalities.image.encoders.vit import default_patch_size as vit_patch_size
from contrastkit.modalities.image.methods.parts import DataInfo, build_vit_backbone, method_options
from contrastkit.nn.patch_transformer import MaskedTokenPredictor, gather_tokens
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews
from contrastkit.objectives.masked_prediction import masked_token_regression

DEFAULTS = {
    "dim": None, "depth": 4, "heads": 3, "patch_size": None, "predictor_dim": None, "predictor_depth": 2,
    "num_targets": 4, "target_scale": (0.15, 0.2), "target_aspect": (0.75, 1.5), "context_scale": (0.85, 1.0),
    "momentum": 0.99, "loss": "l2",
}
MAX_GRID = 8
MASK_ATTEMPTS = 20


@dataclass(frozen=True)
class MaskSpec:
    """Multi-block masking on a ``grid x grid`` patch layout (I-JEPA's defaults)."""

    grid: int
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_context: int = 1


def block_size(grid: int, scale: tuple[float, float], aspect: tuple[float, float],
               generator: torch.Generator | None = None) -> tuple[int, int]:
    """(height, width) in patches of a block covering ``s * grid^2`` patches with aspect ``r = h / w``,
    ``s ~ U(scale)``, ``r ~ U(aspect)``; each side at least 1 and at most ``grid``."""
    s, r = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
    area = (scale[0] + s * (scale[1] - scale[0])) * grid * grid
    ratio = aspect[0] + r * (aspect[1] - aspect[0])
    height = min(grid, max(1, round(math.sqrt(area * ratio))))
    width = min(grid, max(1, round(math.sqrt(area / ratio))))
    return height, width


def block_masks(batch: int, count: int, grid: int, height: int, width: int,
                generator: torch.Generator | None = None) -> Tensor:
    """(batch, count, grid, grid) booleans: ``count`` blocks of ``height x width`` per image, each at
    a uniformly drawn position."""
    top = torch.randint(grid - height + 1, (batch, count, 1), generator=generator)
    left = torch.randint(grid - width + 1, (batch, count, 1), generator=generator)
    cells = torch.arange(grid)
    in_rows = (cells >= top) & (cells < top + height)  # (batch, count, grid)
    in_cols = (cells >= left) & (cells < left + width)
    return in_rows[..., :, None] & in_cols[..., None, :]


def true_positions(masks: Tensor, count: int) -> Tensor:
    """Indices (..., count) of the ``count`` True entries of each row of ``masks`` (..., P), ascending."""
    return torch.sort(masks.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :count]


def sample_masks(batch: int, spec: MaskSpec, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(context_index (B, Nc), target_index (B, M, Nt))`` of patch indices (raster order).

    Target blocks share one size per batch (so Nt is the same for all); the context is its block
    minus every target block, cut to the smallest count in the batch by keeping a random subset.
    Masks are redrawn (up to 20 times) while some image keeps fewer than ``min_context`` patches.
    """
    grid, patches = spec.grid, spec.grid**2
    for _ in range(MASK_ATTEMPTS):
        height, width = block_size(grid, spec.target_scale, spec.target_aspect, generator)
        targets = block_masks(batch, spec.num_targets, grid, height, width, generator).flatten(2)
        side_h, side_w = block_size(grid, spec.context_scale, (1.0, 1.0), generator)
        context = block_masks(batch, 1, grid, side_h, side_w, generator).flatten(2)[:, 0]
        context &= ~targets.any(dim=1)
        keep = int(context.sum(dim=1).min())
        if keep >= spec.min_context:
            break
    else:
        raise ConfigError(
            f"JEPA masking left fewer than {spec.min_context} context patches in {MASK_ATTEMPTS} draws on a "
            f"{grid}x{grid} grid; lower extra.jepa.num_targets or target_scale, or raise context_scale."
        )
    # Random subset of `keep` context patches per image: random scores on the context, -1 elsewhere.
    scores = torch.where(context, torch.rand(batch, patches, generator=generator), -1.0)
    context_index = torch.sort(torch.topk(scores, keep, dim=1).indices, dim=1).values
    return context_index, true_positions(targets, height * width)


class JEPA(nn.Module):
    """Context encoder, EMA target encoder and masked-token predictor on image patches."""

    def __init__(self, encoder: VisionTransformer, predictor: MaskedTokenPredictor, views: nn.Module,
                 eval_view: nn.Module, masks: MaskSpec, base_momentum: float, loss: str = "l2"):
        super().__init__()
        if loss not in ("l2", "smooth_l1"):
            raise ConfigError(f"extra.jepa.loss must be 'l2' or 'smooth_l1', got {loss!r}.")
        self.encoder = encoder
        self.target_encoder = momentum_copy(encoder)
        self.predictor = predictor
        self.views = views
        self.eval_view = eval_view
        self.masks = masks
        self.base_momentum = base_momentum
        self.loss = loss

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images = self.views(batch["image"])
        context_index, target_index = (m.to(images.device) for m in sample_masks(len(images), self.masks))
        batch_size, num_targets, block = target_index.shape
        with torch.no_grad():
            targets = F.layer_norm(self.target_encoder.tokens(images), (self.encoder.output_dim,))
            targets = gather_tokens(targets, target_index.flatten(1)).reshape(batch_size * num_targets, block, -1)
        context = self.encoder.tokens(images, keep_index=context_index)
        # Each target block is predicted separately from the whole context: repeat it per block.
        predictions = self.predictor(context.repeat_interleave(num_targets, dim=0),
                                     context_index.repeat_interleave(num_targets, dim=0),
                                     target_index.flatten(0, 1))
        loss = masked_token_regression(predictions.float(), targets.float(), self.loss)
        return loss, {"context_patches": float(context_index.shape[1])}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        ema_update_(self.target_encoder, self.encoder, linear_momentum(step - 1, total_steps, self.base_momentum))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.target_encoder(self.eval_view(images))  # the ViT's pooled tokens (mean unless [CLS])

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding  # the predictor works on tokens; the pooled target encoding is the space


def default_patch_size(image_size: int) -> int:
    """The smallest divisor of ``image_size`` that gives at most 8 patches per side (1-pixel patches
    allowed: JEPA's targets are latent, not pixels)."""
    return vit_patch_size(image_size, max_grid=MAX_GRID, min_patch=1)


def build_patch_encoder(config, data: DataInfo, options: dict, method: str) -> VisionTransformer:
    """The ViT of a latent masked-token method (``jepa``, ``msn``): :func:`build_vit_backbone` with
    the patch size defaulting to :func:`default_patch_size`."""
    patch_size = options["patch_size"] or default_patch_size(data.image_size)
    return build_vit_backbone(config, data, {**options, "patch_size": patch_size}, method)


def _range(options: dict, name: str, low: float, high: float) -> tuple[float, float]:
    value = options[name]
    if (not isinstance(value, list | tuple) or len(value) != 2 or not all(isinstance(v, int | float) for v in value)
            or not low <= value[0] <= value[1] <= high):
        raise ConfigError(f"extra.jepa.{name} must be a pair [min, max] with {low} <= min <= max <= {high}, "
                          f"got {value!r}.")
    return float(value[0]), float(value[1])


def build(config, data: DataInfo) -> JEPA:
    options = method_options(config, "jepa", DEFAULTS)
    encoder = build_patch_encoder(config, data, options, "jepa")
    heads, dim = encoder.heads, encoder.output_dim
    predictor_dim = options["predictor_dim"] or scaled_dim(dim, heads, 0.5)
    masks = MaskSpec(
        grid=encoder.grid, num_targets=options["num_targets"],
        target_scale=_range(options, "target_scale", 0.0, 1.0), target_aspect=_range(options, "target_aspect", 0.0, 10.0),
        context_scale=_range(options, "context_scale", 0.0, 1.0), min_context=max(1, encoder.num_patches // 16),
    )
    if not isinstance(masks.num_targets, int) or masks.num_targets < 1:
        raise ConfigError(f"extra.jepa.num_targets must be a positive integer, got {masks.num_targets!r}.")
    return JEPA(
        encoder=encoder,
        predictor=MaskedTokenPredictor(dim, encoder.grid, predictor_dim, options["predictor_depth"], heads),
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          crop_scale=(0.3, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0),
        eval_view=EvalView(mean=data.mean, std=data.std),
        masks=masks,
        base_momentum=check_momentum(options["momentum"], "extra.jepa.momentum"),
        loss=options["loss"],
    )
