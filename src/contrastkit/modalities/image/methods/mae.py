"""MAE (He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022).

Each image (one random resized crop of area (0.2, 1) and a horizontal flip, MAE's only
augmentations; no flip for non-RGB images, as the other methods) is cut into the ViT's patches.
A random ``mask_ratio`` of them (0.75, the paper's) is masked per image; the encoder (the
project's ViT, :mod:`contrastkit.modalities.image.encoders.vit`) sees the visible patches only. A
light decoder (:class:`contrastkit.nn.patch_transformer.MaskedTokenPredictor`: the encoded visible
tokens mapped to ``decoder_dim``, one learned mask token per masked patch, fixed 2-D sine-cosine
positions, ``decoder_depth`` blocks, LayerNorm, a linear map to the patch's pixel values) predicts
the masked patches. The loss is the catalogue's
:func:`~contrastkit.objectives.masked_pixels.masked_pixel_regression`: the mean squared error on
the masked patches only, each target patch normalised by its own mean and standard deviation
(``norm_pix_loss``, on by default). Targets are the view's normalised pixels, as MAE's code
(patches of the input batch after its Normalize).

``embed`` is the encoder's pooled features of the whole image, no masking (the mean of the patch
tokens by default; MAE's linear probe reads [CLS], its fine-tuning the mean: ``pooling`` is the
ViT's option).

Deviations: the decoder's sequence is [visible tokens; mask tokens] rather than unshuffled to
raster order (the same function: attention is permutation-equivariant and every token carries its
position) and has no [CLS]; the decoder defaults to 2 blocks of half the encoder's width (MAE's
ViT-L decoder is 8 blocks of 512; its ablation, Table 1a-b, finds 1 block enough for fine-tuning).

Backbone: ``--backbone vit-micro | vit-tiny | vit-small`` (scaled by ``--width``); left at
``auto``, a ViT sized by ``dim`` (default ``96 * --width``), ``depth`` (4) and ``heads`` (3) as
JEPA's. Options (YAML ``extra: {mae: {...}}``): ``mask_ratio`` (0.75), ``decoder_dim`` (half the
encoder's width, rounded to a multiple of 4 x heads), ``decoder_depth`` (2), ``norm_pix_loss``
(true), ``patch_size`` (the ViT's default: 2 px at 8, 4 px at 28-32, 16 px at 224), ``dim``,
``depth``, ``heads``. Transformers want ``--optimizer adamw`` (MAE: AdamW, base lr 1.5e-4 x
batch / 256, weight decay 0.05).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.encoders.vit import VisionTransformer, scaled_dim
from contrastkit.modalities.image.methods.parts import DataInfo, build_vit_backbone, method_options, require_flags
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews, defaults_for
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.patch_transformer import MaskedTokenPredictor
from contrastkit.objectives.masked_pixels import MaskedPixelRegression

DEFAULTS = {"mask_ratio": 0.75, "decoder_dim": None, "decoder_depth": 2, "norm_pix_loss": True, "patch_size": None,
            "dim": None, "depth": 4, "heads": 3}
CROP_SCALE = (0.2, 1.0)  # MAE's RandomResizedCrop


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, P, patch_size^2 * C): patches in raster order, each patch's values row by
    row, the channels of a pixel together (MAE's ``patchify``)."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    grid = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch_size * patch_size * channels)


def random_masking(batch: int, num_patches: int, num_visible: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(visible (B, num_visible), masked (B, P - num_visible))``: a uniformly random split of each
    image's patch indices (MAE's per-sample shuffle of uniform noise)."""
    order = torch.rand(batch, num_patches, device=device).argsort(dim=1)
    return order[:, :num_visible], order[:, num_visible:]


class MAE(nn.Module):
    """ViT encoder on the visible patches + light decoder predicting the masked patches' pixels."""

    def __init__(self, backbone: VisionTransformer, decoder: MaskedTokenPredictor, views: nn.Module,
                 eval_view: nn.Module, objective: nn.Module, mask_ratio: float):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.num_visible = max(1, round((1.0 - mask_ratio) * backbone.num_patches))
        if self.num_visible >= backbone.num_patches:
            raise ConfigError(f"extra.mae.mask_ratio {mask_ratio} masks no patch of {backbone.num_patches}; "
                              f"raise it (MAE: 0.75).")

    def reconstruct(self, images: Tensor, visible: Tensor, masked: Tensor) -> Tensor:
        """The decoder's pixel predictions (B, M, V) of the ``masked`` patches, from the ``visible`` alone."""
        return self.decoder(self.backbone.tokens(images, keep_index=visible), visible, masked)

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        images = self.views(batch["image"])
        visible, masked = random_masking(len(images), self.backbone.num_patches, self.num_visible, images.device)
        predictions = self.reconstruct(images, visible, masked)
        loss = self.objective(predictions, patchify(images, self.backbone.patch_size), masked_index=masked)
        return loss, {"visible_patches": float(self.num_visible)}

    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: Tensor) -> Tensor:
        return embedding  # no projection head: the pooled encoding is where the diagnostics look


def build(config, data: DataInfo) -> MAE:
    options = method_options(config, "mae", DEFAULTS)
    mask_ratio = options["mask_ratio"]
    if not isinstance(mask_ratio, int | float) or isinstance(mask_ratio, bool) or not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"extra.mae.mask_ratio must be a number in (0, 1) (MAE: 0.75), got {mask_ratio!r}.")
    depth = options["decoder_depth"]
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigError(f"extra.mae.decoder_depth must be a positive whole number (here 2), got {depth!r}.")
    require_flags(options, "mae", "norm_pix_loss")
    backbone = build_vit_backbone(config, data, options, "mae")
    values = backbone.patch_size**2 * data.channels
    if options["norm_pix_loss"] and values < 2:
        raise ConfigError(f"norm_pix_loss normalises each patch by its own statistics, and a {backbone.patch_size}"
                          f"-pixel patch of {data.channels} channel(s) has one value; set extra.mae.patch_size "
                          f"to 2 or more, or norm_pix_loss: false.")
    heads = backbone.heads
    decoder_dim = options["decoder_dim"] or scaled_dim(backbone.output_dim, heads, 0.5)
    if not isinstance(decoder_dim, int) or decoder_dim % 4 or decoder_dim % heads:
        raise ConfigError(f"extra.mae.decoder_dim must be a multiple of 4 (2-D sine-cosine positions) and of the "
                          f"{heads} heads, got {decoder_dim!r}.")
    flip = defaults_for(data.image_size, data.channels)["hflip_p"]
    return MAE(
        backbone=backbone,
        decoder=MaskedTokenPredictor(backbone.output_dim, backbone.grid, decoder_dim, depth, heads,
                                     output_dim=values),
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          crop_scale=CROP_SCALE, hflip_p=flip, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0),
        eval_view=EvalView(mean=data.mean, std=data.std),
        objective=GatheredObjective(MaskedPixelRegression(norm_pix_loss=options["norm_pix_loss"])),
        mask_ratio=float(mask_ratio),
    )
