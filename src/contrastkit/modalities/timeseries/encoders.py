"""TS2Vec's encoder: a stack of residual blocks of dilated 1-D convolutions.

Yue et al., "TS2Vec: Towards Universal Representation of Time Series", AAAI 2022, Sec. 3.1:

    h_t   = W_in x_t + b_in                        input projection, per time step (C -> hidden)
    h_t   = 0   where the step is masked or missing (timestamp masking, Sec. 3.2)
    r     = dropout_0.1(Block_depth ∘ ... ∘ Block_0(h))
    Block_i(h) = P(h) + Conv_i,2(GELU(Conv_i,1(GELU(h))))

where Conv_i,k has kernel 3 and dilation 2^i with "same" padding, P is the identity, or a 1x1
convolution when the width changes and in the last block. As in the official code, ``depth``
blocks keep the hidden width and one more block maps it to ``output_dims``: with the defaults
(depth 10, hidden 64, output 320) that is 11 blocks and a receptive field of
1 + 2 * 2 * (2^11 - 1) = 8189 steps, longer than most series, so every time step sees its
whole series.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.timeseries.views import binomial_timestamp_mask


class DilatedResidualBlock(nn.Module):
    """Two GELU-activated dilated convolutions with a residual connection (pre-activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, final: bool):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd for 'same' padding, got {kernel_size}.")
        padding = dilation * (kernel_size - 1) // 2
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=padding, dilation=dilation)
        # The last block always gets a projection, as in the official code (its output is the
        # representation, so the residual path should be learned too).
        needs_projection = in_channels != out_channels or final
        self.projection = nn.Conv1d(in_channels, out_channels, 1) if needs_projection else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T)
        residual = h if self.projection is None else self.projection(h)
        h = self.conv1(F.gelu(h))
        h = self.conv2(F.gelu(h))
        return h + residual


class DilatedConvEncoder(nn.Module):
    """TS2Vec encoder: (B, C, T) series -> (B, T, output_dims) per-time-step representations.

    Missing time steps (NaN in any channel) are set to zero before the projection and masked
    after it, so they never contribute; their output rows are still computed (from context).

    Args:
        input_dims: C, channels of the input series.
        output_dims: D, the representation size (paper: 320).
        hidden_dims: width of the residual blocks (paper: 64).
        depth: number of hidden-width blocks; one output block follows (paper: 10).
        kernel_size: odd convolution kernel (paper: 3).
        mask_probability: p of the binomial timestamp mask used in training (paper: 0.5).
        dropout: dropout on the representation (official code: 0.1).

    ``forward(x, mask=None)``: ``mask`` is None (binomial mask in training, none in eval),
    ``"binomial"``, ``"none"``, or a bool keep-mask (B, T) with True = keep.
    """

    def __init__(
        self,
        input_dims: int,
        output_dims: int = 320,
        hidden_dims: int = 64,
        depth: int = 10,
        kernel_size: int = 3,
        mask_probability: float = 0.5,
        dropout: float = 0.1,
    ):
        super().__init__()
        for name, value in (("input_dims", input_dims), ("output_dims", output_dims), ("hidden_dims", hidden_dims)):
            if value < 1:
                raise ConfigError(f"DilatedConvEncoder: {name} must be >= 1, got {value}.")
        if depth < 0:
            raise ConfigError(f"DilatedConvEncoder: depth must be >= 0, got {depth}.")
        self.input_dims = input_dims
        self.output_dim = output_dims
        self.mask_probability = mask_probability
        self.input_projection = nn.Linear(input_dims, hidden_dims)
        widths = [hidden_dims] * depth + [output_dims]
        self.blocks = nn.Sequential(
            *(
                DilatedResidualBlock(
                    hidden_dims if i == 0 else widths[i - 1],
                    width,
                    kernel_size,
                    dilation=2**i,
                    final=i == len(widths) - 1,
                )
                for i, width in enumerate(widths)
            )
        )
        self.representation_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: str | torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.input_dims:
            raise DataError(
                f"DilatedConvEncoder expects series of shape (B, {self.input_dims}, T), got "
                f"{tuple(x.shape)}. Series are channels-first (N, C, T); transpose (N, T, C) data."
            )
        steps = x.transpose(1, 2)  # (B, T, C): the projection acts on each time step
        present = ~torch.isnan(steps).any(dim=-1)  # (B, T)
        steps = torch.where(present[..., None], steps, torch.zeros((), dtype=steps.dtype, device=steps.device))
        h = self.input_projection(steps)  # (B, T, hidden)
        keep = present & self._keep_mask(mask, h)
        h = h * keep[..., None].to(h.dtype)
        h = self.blocks(h.transpose(1, 2))  # (B, D, T)
        return self.representation_dropout(h).transpose(1, 2)  # (B, T, D)

    def _keep_mask(self, mask: str | torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        batch, length = h.shape[0], h.shape[1]
        if mask is None:
            mask = "binomial" if self.training else "none"
        if isinstance(mask, torch.Tensor):
            if mask.shape != (batch, length) or mask.dtype != torch.bool:
                raise DataError(
                    f"A timestamp keep-mask must be bool of shape ({batch}, {length}), got "
                    f"{mask.dtype} of shape {tuple(mask.shape)}."
                )
            return mask.to(h.device)
        if mask == "binomial":
            return binomial_timestamp_mask(batch, length, self.mask_probability, device=h.device)
        if mask == "none":
            return torch.ones(batch, length, dtype=torch.bool, device=h.device)
        raise ConfigError(f"Unknown timestamp mask '{mask}'; use None, 'binomial', 'none' or a bool tensor.")
