"""Heads: layer structure per flags, the papers' sizes, a forward pass recomputed by hand from
the weights, and the SyncBatchNorm conversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.nn.heads import (
    PredictionHead,
    ProjectionHead,
    byol_prediction,
    byol_projection,
    simclr_projection,
)


def layer_types(head: nn.Module) -> list[type]:
    return [type(layer) for layer in head.layers]


def linear_shapes(head: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)]


def test_projection_head_with_batch_norm() -> None:
    head = ProjectionHead(32, 64, 16, num_layers=3)
    assert layer_types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert linear_shapes(head) == [(32, 64), (64, 64), (64, 16)]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    # A Linear followed by BN has no bias (BN's shift replaces it); the output Linear has one.
    assert [m.bias is not None for m in linears] == [False, False, True]
    assert head(torch.randn(5, 32)).shape == (5, 16)


def test_projection_head_without_batch_norm() -> None:
    head = ProjectionHead(32, 64, 16, num_layers=2, batch_norm=False)
    assert layer_types(head) == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.bias is not None for m in head.modules() if isinstance(m, nn.Linear))


def test_projection_head_last_batch_norm() -> None:
    head = ProjectionHead(32, 64, 16, num_layers=2, last_batch_norm=True)
    assert layer_types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    last = head.layers[-1]
    assert last.num_features == 16 and not last.affine
    out = head.train()(torch.randn(64, 32))
    # A non-affine BN in training mode standardises every output dimension over the batch.
    torch.testing.assert_close(out.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)


def test_single_layer_head_is_linear() -> None:
    head = ProjectionHead(32, 64, 16, num_layers=1)
    assert layer_types(head) == [nn.Linear]
    assert linear_shapes(head) == [(32, 16)]


def test_projection_head_forward_matches_hand_computation() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(6, 5, 3, num_layers=2)
    head.train()
    head(torch.randn(16, 6))  # move the BN running statistics away from (0, 1)
    head.eval()
    with torch.no_grad():
        head.layers[1].weight.uniform_(0.5, 1.5)
        head.layers[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 6)
    linear1, norm, _, linear2 = head.layers
    hidden = x @ linear1.weight.T
    hidden = (hidden - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    hidden = hidden * norm.weight + norm.bias
    expected = hidden.clamp_min(0) @ linear2.weight.T + linear2.bias
    torch.testing.assert_close(head(x), expected)


def test_prediction_head_structure() -> None:
    head = PredictionHead(16, 32, 16)
    assert layer_types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert linear_shapes(head) == [(16, 32), (32, 16)]
    assert head(torch.randn(4, 16)).shape == (4, 16)


def test_paper_sizes_for_resnet50_features() -> None:
    # SimCLR: 2048 -> 2048 -> 128; BYOL: 2048 -> 4096 -> 256, predictor 256 -> 4096 -> 256.
    assert linear_shapes(simclr_projection(2048)) == [(2048, 2048), (2048, 128)]
    assert linear_shapes(byol_projection(2048)) == [(2048, 4096), (4096, 256)]
    assert linear_shapes(byol_prediction(2048)) == [(256, 4096), (4096, 256)]
    simclr = simclr_projection(2048)
    expected = 2048 * 2048 + 2 * 2048 + 2048 * 128 + 128
    assert sum(p.numel() for p in simclr.parameters()) == expected


def test_hidden_size_scales_with_backbone() -> None:
    assert linear_shapes(simclr_projection(64)) == [(64, 64), (64, 128)]
    assert linear_shapes(byol_projection(64)) == [(64, 128), (128, 256)]
    assert linear_shapes(simclr_projection(64, hidden_dim=32, out_dim=8)) == [(64, 32), (32, 8)]


def test_invalid_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="num_layers"):
        ProjectionHead(8, 8, 8, num_layers=0)
    with pytest.raises(ConfigError, match="positive"):
        ProjectionHead(8, 0, 8)
