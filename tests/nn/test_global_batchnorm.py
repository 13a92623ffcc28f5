"""GlobalBatchNorm: BatchNorm in one process; over 2 processes (gloo) it equals BatchNorm on the
concatenated batch, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.nn.global_batchnorm import GlobalBatchNorm, convert_to_global_batchnorm
from tests.ddp import run_distributed


def _pair(num_features: int, seed: int = 0) -> tuple[nn.BatchNorm2d, GlobalBatchNorm]:
    torch.manual_seed(seed)
    reference = nn.BatchNorm2d(num_features)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    ours = convert_to_global_batchnorm(nn.Sequential(reference)).get_submodule("0")
    reference = nn.BatchNorm2d(num_features)
    reference.load_state_dict(ours.state_dict())
    return reference, ours


def test_single_process_equals_batchnorm_forward_backward_and_running_stats():
    reference, ours = _pair(3)
    x = torch.randn(6, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    reference.double(), ours.double()
    y_ref, y = reference(x), ours(x)
    torch.testing.assert_close(y, y_ref)
    g_ref, = torch.autograd.grad((y_ref * torch.arange(y.numel()).reshape(y.shape)).sum(), x)
    g, = torch.autograd.grad((y * torch.arange(y.numel()).reshape(y.shape)).sum(), x)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    reference.eval(), ours.eval()
    torch.testing.assert_close(ours(x), reference(x))


def test_conversion_keeps_parameters_and_covers_nested_modules():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(8)))
    model[1].weight.data.fill_(3.0)
    convert_to_global_batchnorm(model)
    assert isinstance(model[1], GlobalBatchNorm) and isinstance(model[2][1], GlobalBatchNorm)
    assert torch.all(model[1].weight == 3.0)


def _two_process_batchnorm(rank, world_size, x, weights):
    _, ours = _pair(3)
    ours.double()
    local = x.chunk(world_size)[rank].clone().requires_grad_(True)
    y = ours(local)
    # each rank back-propagates the terms of the global loss that its own rows produce
    (y * weights.chunk(world_size)[rank]).sum().backward()
    return {"y": y.detach(), "grad": local.grad, "running_mean": ours.running_mean,
            "weight_grad": ours.weight.grad}


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_concatenated_batch():
    torch.manual_seed(1)
    x = torch.randn(8, 3, 2, 2, dtype=torch.float64)
    weights = torch.randn(8, 3, 2, 2, dtype=torch.float64)
    reference, _ = _pair(3)
    reference.double()
    xr = x.clone().requires_grad_(True)
    y = reference(xr)
    (y * weights).sum().backward()
    results = run_distributed(_two_process_batchnorm, x, weights)
    torch.testing.assert_close(torch.cat([r["y"] for r in results]), y.detach())
    torch.testing.assert_close(results[0]["running_mean"], reference.running_mean)
    # Each rank back-propagated only its own rows' terms of the global loss; the all-reduce in the
    # backward adds the other rank's contribution through the shared statistics, so the input
    # gradient is exactly the single-process one, and the parameter gradients sum to it.
    torch.testing.assert_close(torch.cat([r["grad"] for r in results]), xr.grad)
    torch.testing.assert_close(results[0]["weight_grad"] + results[1]["weight_grad"], reference.weight.grad)
