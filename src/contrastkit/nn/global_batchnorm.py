"""BatchNorm over the global batch of a data-parallel run, on any device.

SimCLR normalises with statistics of the whole global batch ("global BN", Chen et al. 2020, Sec. B.1),
because per-device statistics let the model find the positive pair through batch-level cues.
``torch.nn.SyncBatchNorm`` does this on GPUs only (DDP refuses it on CPU modules); this module does
it with two differentiable all-reduces, so it runs under gloo on CPU as well as under NCCL.

For an input x of shape (B, C, ...) on rank r, with N the global number of values per channel:
    mean_c = (1/N) sum_{ranks, batch, spatial} x
    var_c  = (1/N) sum (x - mean_c)^2                (biased, used to normalise)
    y      = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c
Running statistics use the unbiased variance var_c * N / (N - 1), as BatchNorm does.

Gradients: each all-reduce's backward sums the incoming gradients over the ranks. With the
convention of :mod:`contrastkit.nn.distributed` (every rank back-propagates the global loss, DDP
averages parameter gradients), this gives every rank's inputs W times their single-process gradient,
which DDP's average turns into the exact single-process gradient. In one process it is BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from contrastkit.nn.distributed import is_distributed


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: Tensor) -> Tensor:
    return _AllReduceSum.apply(x) if is_distributed() else x


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Drop-in for BatchNorm1d/2d/3d whose training statistics cover every process's batch."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (B, C, ...) inputs, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training and self.track_running_stats:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)
        reduce_dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = all_reduce_sum(x.sum(reduce_dims)) / count
        centred = x - mean.reshape(shape)
        var = all_reduce_sum(centred.pow(2).sum(reduce_dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked += 1
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm of ``module`` (recursively) by a GlobalBatchNorm with the same
    parameters and running statistics; returns the module (converted in place where possible)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted.to(next(module.buffers(), torch.empty(0)).device)
    for name, child in module.named_children():
        setattr(module, name, convert_to_global_batchnorm(child))
    return module
