"""SparK (Tian, Jiang, Yuan, Wang & Wang, "Designing BERT for Convolutional Networks: Sparse and
Hierarchical Masked Modeling", ICLR 2023): masked image modelling for a ResNet.

An image's grid of patches, one patch per cell of the ResNet's total stride (8 x 8 pixels with the
CIFAR stem, 32 x 32 with the ImageNet stem), is masked at random: ``round(L (1 - mask_ratio))`` of
its ``L`` patches stay visible in every image (the paper's mask ratio: 0.6). The encoder is the
ResNet itself run sparsely (:func:`contrastkit.nn.sparse_conv.visible_only`): the masked pixels are
zero, every convolution's and pooling's output is zeroed again at masked positions and BatchNorm
normalises the visible positions only, so nothing of a masked patch reaches any layer.

The hierarchical decoder (:class:`HierarchicalDecoder`, SparK's "light decoder", a U-Net without
the encoder's skip concatenation) reads every stage's map, coarsest first. Each map is densified
(Sec. 3.2): its visible positions are normalised by a sparse BatchNorm, its masked ones filled with
a learned mask token of that level, and a convolution (1x1 at the coarsest level, 3x3 below)
projects it to the decoder's width at that level. From the coarsest map up, each block upsamples
x2 (a 4x4 transposed convolution) and refines (two 3x3 convolutions with BatchNorm and ReLU6),
halving the width, and the next level's densified map is added; a 1x1 convolution gives the pixels.

The loss (:func:`masked_patch_loss`) is the mean squared error between the reconstruction and the
image, each target patch normalised by its own mean and standard deviation, averaged over the
masked patches only::

    t_p = (x_p - mean(x_p)) / sqrt(var(x_p) + 1e-6)
    loss = 1 / |M| sum_{p in M} 1 / D sum_k (r_{p,k} - t_{p,k})^2

over the masked patches ``M`` of the batch, ``D`` values per patch (the catalogue's
``masked_token_regression`` on the masked rows). Views: SparK's random resized crop (scale 0.67-1)
and horizontal flip, nothing else. ``embed`` is the dense ResNet's pooled features of the whole
image: the sparse encoder is the dense one with hooks (no copy of its weights), so the encoder that
training updates is the one a run folder keeps and exports. SparK pretrains with LAMB; here any
``--optimizer`` (AdamW is the closest). Under data parallelism BatchNorm is global, as SparK's
``sbn=True`` (``parts.GLOBAL_BATCHNORM_RECIPES``): the sparse BatchNorm then normalises over the
visible positions of every process.

Backbones: ``resnet18`` (default) and ``resnet50``, at any ``--width``; the image side must be a
multiple of the total stride and give at least 2 patches. Options (YAML ``extra: {spark: {...}}``):
``mask_ratio`` (0.6), ``decoder_width`` (the coarsest stage's channels; the paper: 768 for every
ResNet), ``crop_scale`` ([0.67, 1.0]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.image.methods.parts import DataInfo, build_backbone, method_options
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.sparse_conv import mask_at, random_active_mask, sparse_batch_norm, visible_only, zero_masked
from contrastkit.modalities.image.methods.mae import patchify
from contrastkit.objectives.masked_pixels import normalize_patches
from contrastkit.objectives.masked_prediction import masked_token_regression

DEFAULTS = {"mask_ratio": 0.6, "decoder_width": None, "crop_scale": (0.67, 1.0)}
SPARSE_BACKBONES = ("resnet18", "resnet50")
PROBE_SIZE = 64


def masked_patch_rows(reconstruction: Tensor, images: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
    """``(predictions, targets)``: the masked patches of the reconstruction and their normalised
    targets, as rows (masked patches of the batch, values per patch)."""
    patch_size = images.shape[2] // active.shape[2]
    if reconstruction.shape != images.shape or images.shape[2] != patch_size * active.shape[2]:
        raise DataError(f"The reconstruction {tuple(reconstruction.shape)} and images {tuple(images.shape)} must "
                        f"have one shape, a whole number of the mask's {tuple(active.shape[2:])} patches.")
    masked = ~active.flatten(1)  # (B, L), raster order as patchify's
    return patchify(reconstruction, patch_size)[masked], normalize_patches(patchify(images, patch_size))[masked]


def masked_patch_loss(reconstruction: Tensor, images: Tensor, active: Tensor) -> Tensor:
    """SparK's loss (the module docstring's formula): the mean over masked patches of the mean
    squared error to the patch-normalised image; ``active`` (B, 1, h, w) is True where visible."""
    predictions, targets = masked_patch_rows(reconstruction, images, active)
    return masked_token_regression(predictions, targets)


class UpBlock(nn.Sequential):
    """x2 upsampling (4x4 transposed convolution) then conv3x3-BN-ReLU6, conv3x3-BN: SparK's UNetBlock."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.ConvTranspose2d(in_channels, in_channels, kernel_size=4, stride=2, padding=1),
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False), nn.BatchNorm2d(in_channels),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        )


class HierarchicalDecoder(nn.Module):
    """Densifies the encoder's sparse maps level by level and decodes them to pixels.

    Args:
        level_channels: channels of the encoder's maps, coarsest first.
        level_strides: their strides (total downsampling), coarsest first; powers of 2.
        width: the decoder's width at the coarsest level; it halves at each upsampling.
        out_channels: channels of the reconstructed image.
    """

    def __init__(self, level_channels: list[int], level_strides: list[int], width: int, out_channels: int):
        super().__init__()
        total = level_strides[0]
        self.blocks_count = round(math.log2(total))
        if 2**self.blocks_count != total or any(total % s or (total // s) & (total // s - 1) for s in level_strides):
            raise ConfigError(f"SparK's decoder upsamples x2 per block: the encoder's strides {level_strides} must be "
                              f"powers of 2.")
        widths = [max(1, width // 2**i) for i in range(self.blocks_count + 1)]
        # Level k enters before block log2(total / stride_k) (after the last block at stride 1).
        self.positions = [round(math.log2(total // s)) for s in level_strides]
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in level_channels)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in level_channels)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        self.projections = nn.ModuleList(
            nn.Conv2d(c, widths[p], kernel_size=1 if k == 0 else 3, padding=0 if k == 0 else 1)
            for k, (c, p) in enumerate(zip(level_channels, self.positions, strict=True)))
        self.blocks = nn.ModuleList(UpBlock(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.head = nn.Conv2d(widths[-1], out_channels, 1)
        # SparK's decoder initialisation: convolutions truncated-normal (std 0.02), transposed ones
        # Kaiming (fan-out), biases 0; the densifying projections keep PyTorch's default.
        for module in [*self.blocks.modules(), self.head]:
            if isinstance(module, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.02)
            if isinstance(module, nn.ConvTranspose2d | nn.Conv2d) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def densify(self, level: int, features: Tensor, active: Tensor) -> Tensor:
        """Sparse BatchNorm on the visible positions, the level's mask token on the masked ones, projection."""
        visible = mask_at(active, features.shape[2], features.shape[3])
        normalised = sparse_batch_norm(self.norms[level], features, visible)
        filled = torch.where(visible, normalised, self.mask_tokens[level].to(normalised.dtype))
        return self.projections[level](filled)

    def forward(self, maps: list[Tensor], active: Tensor) -> Tensor:
        """``maps``: the sparse encoder's maps, coarsest first; ``active``: the coarse visible mask."""
        entering = {p: self.densify(k, m, active) for k, (p, m) in enumerate(zip(self.positions, maps, strict=True))}
        x = entering[0]
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index + 1 in entering:
                x = x + entering[index + 1]
        return self.head(x)


class SparK(nn.Module):
    def __init__(self, backbone: nn.Module, decoder: HierarchicalDecoder, views: nn.Module, eval_view: nn.Module,
                 grid: int, mask_ratio: float):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.views = views
        self.eval_view = eval_view
        self.grid = grid
        self.visible_patches = round(grid * grid * (1 - mask_ratio))  # SparK's len_keep
        self.objective = GatheredObjective(objectives.get("masked_token_regression"))

    def sparse_features(self, images: Tensor, active: Tensor) -> list[Tensor]:
        """Every stage's map of the masked images, coarsest first, computed on visible positions only."""
        with visible_only(self.backbone, active):
            return self.backbone.stage_features(zero_masked(images, active))[::-1]

    def reconstruct(self, images: Tensor, active: Tensor) -> Tensor:
        """The decoder's image (B, C, H, W) from the visible patches of ``images``."""
        return self.decoder(self.sparse_features(images, active), active)

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        images = self.views(batch["image"])
        active = random_active_mask(len(images), self.grid, self.grid, self.visible_patches, images.device)
        predictions, targets = masked_patch_rows(self.reconstruct(images, active), images, active)
        return self.objective(predictions.float(), targets.float()), {}

    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: Tensor) -> Tensor:
        return embedding  # no projection head: the loss acts on pixels


def stage_strides(backbone: nn.Module, channels: int) -> list[int]:
    """Each stage's total stride, finest first, from one pass of a blank 64-pixel image (a multiple
    of every ResNet's stride), BatchNorm in eval mode."""
    training = backbone.training
    with torch.no_grad():
        maps = backbone.eval().stage_features(torch.zeros(1, channels, PROBE_SIZE, PROBE_SIZE))
    backbone.train(training)
    return [PROBE_SIZE // m.shape[-1] for m in maps]


def build(config, data: DataInfo) -> SparK:
    options = method_options(config, "spark", DEFAULTS)
    name = "resnet18" if config.backbone == "auto" else config.backbone
    if name not in SPARSE_BACKBONES:
        raise ConfigError(f"spark runs a ResNet sparsely (masked convolution and BatchNorm): --backbone "
                          f"{' or '.join(SPARSE_BACKBONES)}, not {config.backbone}.")
    ratio = options["mask_ratio"]
    if not isinstance(ratio, int | float) or not 0 < ratio < 1:
        raise ConfigError(f"extra.spark.mask_ratio must be a number in (0, 1) (the paper: 0.6), got {ratio!r}.")
    backbone = build_backbone(name, data, config.width, config)
    strides = stage_strides(backbone, data.channels)
    if data.image_size % strides[-1]:
        raise ConfigError(f"SparK masks patches of the ResNet's total stride, {strides[-1]} pixels here: the image "
                          f"side {data.image_size} must be a multiple of {strides[-1]}; set --image-size.")
    grid = data.image_size // strides[-1]
    visible = round(grid * grid * (1 - ratio))
    if not 1 <= visible < grid * grid:
        raise ConfigError(
            f"SparK masks {data.image_size}-pixel images in a {grid}x{grid} grid of {strides[-1]}-pixel patches; "
            f"mask_ratio {ratio} keeps {visible} of {grid * grid} visible. It needs at least one visible and one "
            f"masked patch: raise --image-size (e.g. {4 * strides[-1]}) or change extra.spark.mask_ratio.")
    channels = backbone.stage_channels[::-1]
    width = options["decoder_width"] or channels[0]
    if not isinstance(width, int) or width < 1:
        raise ConfigError(f"extra.spark.decoder_width must be a positive integer, got {width!r}.")
    crop = options["crop_scale"]
    if not isinstance(crop, list | tuple) or len(crop) != 2 or not all(isinstance(v, int | float) for v in crop):
        raise ConfigError(f"extra.spark.crop_scale must be a pair [min, max] of area fractions, got {crop!r}.")
    return SparK(
        backbone=backbone,
        decoder=HierarchicalDecoder(channels, strides[::-1], width, data.channels),
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          crop_scale=(float(crop[0]), float(crop[1])), hflip_p=0.5, jitter_p=0.0, grayscale_p=0.0,
                          blur_p=0.0),
        eval_view=EvalView(mean=data.mean, std=data.std),
        grid=grid,
        mask_ratio=float(ratio),
    )
