"""Transformer parts of the masked-token methods: pre-norm blocks, 2-D sine-cosine positions, token
gathering, and the masked-token predictor. The image encoder they feed is the ViT of
:mod:`contrastkit.modalities.image.encoders.vit`.

- :class:`MaskedTokenPredictor`: I-JEPA's narrow predictor (Assran et al. 2023, Sec. 3) and MAE's
  light decoder (He et al. 2022, Sec. 3): encoder tokens are mapped to a smaller width, one
  learned mask token per target position is added with that position's embedding, the
  transformer runs over [context tokens; mask tokens], and the outputs at the mask tokens are
  mapped to ``output_dim`` (the encoder's width for I-JEPA's latent targets, a patch's pixel
  values for MAE). The order of the sequence does not matter (attention is permutation
  equivariant and each token carries its position), so this is MAE's decoder over
  [visible; mask tokens] unshuffled.

Positions follow MAE / I-JEPA: for a ``grid x grid`` layout, half the channels encode the row and
half the column, each as ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim/4))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError


def sincos_positions_2d(grid: int, dim: int, columns: int | None = None) -> Tensor:
    """(grid * columns, dim) fixed position embeddings of a ``grid`` x ``columns`` layout (square
    when ``columns`` is None), raster order (row-major); ``dim % 4 == 0``."""
    if dim % 4:
        raise ConfigError(f"2-D sine-cosine positions need a width divisible by 4, got {dim}.")
    frequencies = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid if columns is None else columns, dtype=torch.float64), indexing="ij")

    def encode(position: Tensor) -> Tensor:
        angles = position.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def transformer_blocks(dim: int, depth: int, heads: int) -> nn.TransformerEncoder:
    """``depth`` pre-norm blocks (attention + 4x GELU MLP), no dropout."""
    if dim % heads:
        raise ConfigError(f"The transformer width {dim} must be divisible by its number of heads {heads}.")
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, K) of ``tokens`` (B, P, D) -> (B, K, D)."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class MaskedTokenPredictor(nn.Module):
    """Predicts encoder tokens at ``target`` positions from the context tokens and their positions."""

    positions: Tensor

    def __init__(self, encoder_dim: int, grid: int, dim: int, depth: int, heads: int, output_dim: int | None = None):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("positions", sincos_positions_2d(grid, dim)[None], persistent=False)
        self.blocks = transformer_blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, output_dim or encoder_dim)

    def forward(self, context: Tensor, context_index: Tensor, target_index: Tensor) -> Tensor:
        """context (B, Nc, D) at positions context_index (B, Nc); target_index (B, Nt) -> (B, Nt, output_dim)."""
        positions = self.positions.expand(context.shape[0], -1, -1)
        context = self.embed(context) + gather_tokens(positions, context_index)
        queries = self.mask_token + gather_tokens(positions, target_index)
        tokens = self.norm(self.blocks(torch.cat([context, queries], dim=1)))
        return self.out(tokens[:, context.shape[1]:])
