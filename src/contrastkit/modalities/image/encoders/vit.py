"""A vision transformer of our own (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale", ICLR 2021), with the token API that masked methods need.

Images (B, C, H, W) are cut into non-overlapping ``patch_size`` squares, each embedded linearly (a
strided convolution), plus a position embedding; ``depth`` pre-norm blocks (attention + 4x GELU
MLP, :func:`contrastkit.nn.patch_transformer.transformer_blocks`) and a final LayerNorm follow.
The image embedding (``forward``, ``(B, output_dim)``) is the mean of the patch tokens
(``pooling="mean"``, MAE's "global pool") or a learned [CLS] token prepended to them
(``pooling="cls"``, ViT's).

Masked methods (MAE, I-JEPA, MSN) run the encoder on the visible patches only:
``tokens(images, keep_index)`` embeds every patch, keeps the rows ``keep_index`` (B, K) (raster
order) and runs the blocks on those K tokens (plus [CLS]), so a masked patch's pixels never reach
the output, and the cost is that of K tokens.

Position embeddings are a table for the ``grid x grid`` layout of the training size: fixed 2-D
sine-cosine (``positions="sincos"``, MAE's) or learned (``"learned"``, ViT's). Images of another
size get the table resized bicubically on its 2-D grid (ViT's fine-tuning at a higher resolution,
Sec. 3.2), so a model trained on 32 px embeds 48 px images, and multi-crop's small local crops
(SwAV, DINO) go through the same encoder; pixels beyond the last whole patch (a side that is not
a multiple of the patch size) are left out, as the strided patch convolution leaves them.
``feature_map`` lays the patch tokens out on their grid, (B, dim, rows, cols).

Sizes (``--backbone``): ``vit-micro`` (128 wide, 4 blocks, 4 heads: CPU-small), ``vit-tiny``
(192, 12, 3: DeiT-Ti) and ``vit-small`` (384, 12, 6: DeiT-S); ``width`` scales the embedding
width (rounded to a multiple of 4 x heads, as the sine-cosine table and the heads need).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.nn.patch_transformer import gather_tokens, sincos_positions_2d, transformer_blocks

SIZES = {"vit-micro": (128, 4, 4), "vit-tiny": (192, 12, 3), "vit-small": (384, 12, 6)}  # (dim, depth, heads)
POOLINGS = ("mean", "cls")
POSITIONS = ("sincos", "learned")


def default_patch_size(image_size: int, max_grid: int | None = None, min_patch: int = 2) -> int:
    """The smallest divisor ``p >= min_patch`` of ``image_size`` that gives at most ``max_grid``
    patches per side; ``max_grid`` defaults to 8 up to 64 px (short sequences on a CPU: 4 px at 32,
    8 px at 64) and to 14 beyond (ViT's 16 px patches at 224)."""
    if max_grid is None:
        max_grid = 8 if image_size <= 64 else 14
    low = min(min_patch, image_size)
    return next(p for p in range(low, image_size + 1) if image_size % p == 0 and image_size // p <= max_grid)


def resize_positions(table: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """A position table (1, rows * cols, D) of a ``grid`` layout, raster order, resized to ``new_grid``
    by bicubic interpolation on the 2-D grid; the table itself when the grid is the same."""
    if tuple(grid) == tuple(new_grid):
        return table
    rows, cols = grid
    image = table.reshape(1, rows, cols, -1).permute(0, 3, 1, 2)  # (1, D, rows, cols)
    resized = F.interpolate(image.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    return resized.to(table.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)


class VisionTransformer(nn.Module):
    """Images (B, C, H, W) -> (B, dim): patch embedding + positions -> pre-norm blocks -> LayerNorm ->
    mean of the patch tokens or the [CLS] token. See the module docstring."""

    def __init__(self, in_channels: int, image_size: int, dim: int, depth: int, heads: int,
                 patch_size: int | None = None, pooling: str = "mean", positions: str = "sincos"):
        super().__init__()
        patch_size = patch_size or default_patch_size(image_size)
        if patch_size < 1 or image_size % patch_size:
            raise ConfigError(f"The ViT's patch size {patch_size} must divide the image size {image_size}; "
                              f"choose a divisor of {image_size} (or leave it unset).")
        if pooling not in POOLINGS or positions not in POSITIONS:
            raise ConfigError(f"ViT pooling must be one of {POOLINGS} and positions one of {POSITIONS}, got "
                              f"pooling={pooling!r}, positions={positions!r}.")
        if dim % 4 or dim % heads:
            raise ConfigError(f"The ViT width {dim} must be a multiple of 4 (2-D positions) and of its "
                              f"{heads} heads.")
        self.patch_size, self.heads, self.pooling = patch_size, heads, pooling
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.output_dim = dim
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        table = sincos_positions_2d(self.grid, dim)[None]
        if positions == "learned":
            self.position_table = nn.Parameter(torch.zeros_like(table))
            nn.init.trunc_normal_(self.position_table, std=0.02)
        else:
            self.register_buffer("position_table", table, persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = transformer_blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)

    def size_options(self) -> dict:
        """Its explicit size (``dim``, ``depth``, ``heads``): what :func:`vit_sized` needs, with
        :meth:`architecture_options`, to build a ViT that no registered size names (``--backbone auto``)."""
        return {"dim": self.output_dim, "depth": len(self.blocks.layers), "heads": self.heads}

    def architecture_options(self) -> dict:
        """What :func:`vit` needs besides the size and width to build this ViT again (an export's config)."""
        positions = "learned" if isinstance(self.position_table, nn.Parameter) else "sincos"
        return {"patch_size": self.patch_size, "pooling": self.pooling, "positions": positions}

    def patch_grid(self, images: Tensor) -> tuple[int, int]:
        """(rows, cols) of whole patches of ``images``; a remainder of fewer than ``patch_size`` pixels
        at the bottom and right is left out, as the strided patch convolution leaves it."""
        height, width = images.shape[-2:]
        if height < self.patch_size or width < self.patch_size:
            raise DataError(f"The ViT cuts images into {self.patch_size}-pixel patches; got images of "
                            f"{height}x{width}, smaller than one patch. Resize them.")
        return height // self.patch_size, width // self.patch_size

    def positions(self, grid: tuple[int, int]) -> Tensor:
        """The position table (1, rows * cols, dim) for a ``grid`` of patches (resized if not the trained one)."""
        return resize_positions(self.position_table, (self.grid, self.grid), grid)

    def embed_patches(self, images: Tensor) -> Tensor:
        """Every patch's embedding plus its position, before the blocks: (B, P, dim), raster order."""
        grid = self.patch_grid(images)
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        return tokens + self.positions(grid).to(tokens.dtype)

    def encode(self, images: Tensor, keep_index: Tensor | None = None) -> Tensor:
        """The blocks' normalised outputs (B, [1 +] K, dim) for the kept patches ([CLS] first if any)."""
        tokens = self.embed_patches(images)
        if keep_index is not None:
            tokens = gather_tokens(tokens, keep_index)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1).to(tokens.dtype), tokens], dim=1)
        return self.norm(self.blocks(tokens))

    def tokens(self, images: Tensor, keep_index: Tensor | None = None) -> Tensor:
        """Patch tokens (B, K, dim) of the patches ``keep_index`` (B, K), encoded from those alone; all
        P patches when None."""
        encoded = self.encode(images, keep_index)
        return encoded if self.cls_token is None else encoded[:, 1:]

    def feature_map(self, images: Tensor) -> Tensor:
        """Every patch token laid out on the patch grid, (B, dim, rows, cols): the map before pooling
        that methods with a local branch (VICRegL) read."""
        rows, cols = self.patch_grid(images)
        return self.tokens(images).transpose(1, 2).reshape(len(images), -1, rows, cols)

    def forward(self, images: Tensor, keep_index: Tensor | None = None) -> Tensor:
        encoded = self.encode(images, keep_index)
        return encoded[:, 0] if self.cls_token is not None else encoded.mean(dim=1)


def scaled_dim(dim: int, heads: int, width: float) -> int:
    """``dim * width`` rounded to a multiple of ``4 * heads`` (at least one)."""
    step = 4 * heads
    return max(step, round(dim * width / step) * step)


def vit(name: str, in_channels: int, image_size: int, width: float = 1.0, patch_size: int | None = None,
        pooling: str = "mean", positions: str = "sincos") -> VisionTransformer:
    """The ViT size ``name`` (a key of :data:`SIZES`) with its width scaled by ``width``."""
    if not width > 0:
        raise ConfigError(f"Backbone '{name}' needs a positive width multiplier, got width={width}.")
    dim, depth, heads = SIZES[name]
    return VisionTransformer(in_channels, image_size, scaled_dim(dim, heads, width), depth, heads,
                             patch_size=patch_size, pooling=pooling, positions=positions)


def _size(name: str):
    def factory(in_channels: int, image_size: int, width: float = 1.0, patch_size: int | None = None,
                pooling: str = "mean", positions: str = "sincos") -> VisionTransformer:
        return vit(name, in_channels, image_size, width, patch_size, pooling, positions)

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = f"``{name}``: {SIZES[name][0]} wide, {SIZES[name][1]} blocks, {SIZES[name][2]} heads."
    return factory


vit_micro, vit_tiny, vit_small = (_size(name) for name in SIZES)


def vit_sized(in_channels: int, image_size: int, width: float = 1.0, *, dim: int | None = None,
              depth: int | None = None, heads: int | None = None, patch_size: int | None = None,
              pooling: str = "mean", positions: str = "sincos") -> VisionTransformer:
    """``vit``: a ViT of an explicit size (an export of a ViT that a masked method sized itself).
    ``width`` must be 1: ``dim`` is the width."""
    if dim is None or depth is None or heads is None:
        raise ConfigError(f"Backbone 'vit' is the explicitly sized ViT of an export (dim, depth and heads in its "
                          f"config.json); to train one, name a size ({', '.join(SIZES)}) or leave --backbone out "
                          f"for mae, jepa and msn.")
    if width != 1.0:
        raise ConfigError(f"Backbone 'vit' takes its width as dim={dim}; width must be 1, got {width}.")
    return VisionTransformer(in_channels, image_size, dim, depth, heads, patch_size=patch_size, pooling=pooling,
                             positions=positions)
