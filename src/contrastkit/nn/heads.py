"""Projection and prediction heads: small MLPs on top of the backbone's features.

A head is declared as a list of blocks ``(in_dim, out_dim, norm, activation)``; each block is
``Linear(in_dim, out_dim)`` followed by the optional norm and activation. The Linear has no bias
when a BatchNorm follows it (the BN shift makes the bias redundant). Example::

    backbone = build_encoder("resnet18", in_channels=3, image_size=32, width=0.5)
    projector = simclr_projection(backbone.output_dim)  # 256 -> 256 -> 128
    z = projector(backbone(images))

Default sizes follow the papers, which used a ResNet-50 (2048 features). Hidden sizes are scaled
to the backbone instead of being fixed, so a small backbone does not get a head with many times
its own parameters: SimCLR's hidden layer is ``in_dim`` (= 2048 in the paper), BYOL's is
``2 * in_dim`` (= 4096 in the paper). Output sizes are the papers' (SimCLR 128, BYOL 256).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from contrastkit.core.errors import ConfigError

HeadBlock = tuple[int, int, nn.Module | None, nn.Module | None]
"""``(in_dim, out_dim, norm, activation)``: one ``Linear`` and what follows it."""


class MLPHead(nn.Module):
    """An MLP declared as a list of blocks ``(in_dim, out_dim, norm, activation)``."""

    def __init__(self, blocks: Sequence[HeadBlock]):
        super().__init__()
        if not blocks:
            raise ConfigError("A head needs at least one layer; got an empty list of blocks.")
        layers: list[nn.Module] = []
        for in_dim, out_dim, norm, activation in blocks:
            if in_dim < 1 or out_dim < 1:
                raise ConfigError(
                    f"Head layer sizes must be positive, got Linear({in_dim}, {out_dim}); check "
                    "the hidden and output dimensions."
                )
            layers.append(nn.Linear(in_dim, out_dim, bias=norm is None))
            layers += [module for module in (norm, activation) if module is not None]
        self.layers = nn.Sequential(*layers)
        self.in_dim = blocks[0][0]
        self.out_dim = blocks[-1][1]

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ProjectionHead(MLPHead):
    """``num_layers`` Linear layers: ``in_dim -> hidden_dim -> ... -> hidden_dim -> out_dim``.

    Every hidden layer is ``Linear [-> BatchNorm1d] -> ReLU``; the last is a plain Linear,
    optionally followed by a BatchNorm1d without affine parameters (``last_batch_norm``, as in
    SimCLR v2 and MoCo v3, whose output BN only standardises). ``num_layers=1`` is a single
    linear map ``in_dim -> out_dim``.

    Args:
        in_dim: backbone feature size.
        hidden_dim: width of the hidden layers.
        out_dim: embedding size given to the objective.
        num_layers: number of Linear layers (>= 1).
        batch_norm: BatchNorm1d after each hidden Linear.
        last_batch_norm: BatchNorm1d (affine=False) after the output Linear.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ):
        if num_layers < 1:
            raise ConfigError(f"ProjectionHead num_layers must be >= 1, got {num_layers}.")
        blocks: list[HeadBlock] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            norm = nn.BatchNorm1d(hidden_dim) if batch_norm else None
            blocks.append((dim, hidden_dim, norm, nn.ReLU(inplace=True)))
            dim = hidden_dim
        last_norm = nn.BatchNorm1d(out_dim, affine=False) if last_batch_norm else None
        blocks.append((dim, out_dim, last_norm, None))
        super().__init__(blocks)


class PredictionHead(MLPHead):
    """The predictor of BYOL / SimSiam: ``Linear -> BatchNorm1d -> ReLU -> Linear``.

    Grill et al. 2020 (BYOL) use 256 -> 4096 -> 256; Chen & He 2021 (SimSiam) use the
    bottleneck 2048 -> 512 -> 2048.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(
            [
                (in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
                (hidden_dim, out_dim, None, None),
            ]
        )


def simclr_projection(
    in_dim: int, hidden_dim: int | None = None, out_dim: int = 128
) -> ProjectionHead:
    """SimCLR's projection head (Chen et al. 2020): ``in_dim -> hidden_dim -> out_dim`` with
    BN + ReLU in between. ``hidden_dim`` defaults to ``in_dim`` (2048 for the paper's ResNet-50)."""
    return ProjectionHead(in_dim, hidden_dim or in_dim, out_dim, num_layers=2, batch_norm=True)


def byol_projection(
    in_dim: int, hidden_dim: int | None = None, out_dim: int = 256
) -> ProjectionHead:
    """BYOL's projector (Grill et al. 2020): ``in_dim -> hidden_dim -> out_dim`` with BN + ReLU
    in between. ``hidden_dim`` defaults to ``2 * in_dim`` (4096 for the paper's ResNet-50)."""
    return ProjectionHead(in_dim, hidden_dim or 2 * in_dim, out_dim, num_layers=2, batch_norm=True)


def byol_prediction(
    backbone_dim: int, out_dim: int = 256, hidden_dim: int | None = None
) -> PredictionHead:
    """BYOL's predictor: ``out_dim -> hidden_dim -> out_dim``; ``hidden_dim`` defaults to
    ``2 * backbone_dim``, the projector's hidden size (4096 for ResNet-50, as in the paper)."""
    return PredictionHead(out_dim, hidden_dim or 2 * backbone_dim, out_dim)
