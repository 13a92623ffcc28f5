"""Sparse (masked) convolution and normalisation: a dense CNN run on the visible positions of a
masked image only, with its own weights.

Tian, Jiang, Yuan, Wang & Wang, "Designing BERT for Convolutional Networks: Sparse and Hierarchical
Masked Modeling" (SparK), ICLR 2023, Sec. 3.1. A masked image is a set of visible patches; a dense
convolution would fill the masked holes from their borders and, layer after layer, shrink them, so
that the network would see a distribution of inputs it never meets again. SparK makes every layer
treat the masked positions as empty:

* The mask ``active`` is drawn on a coarse grid whose cells are the network's total stride (32 x 32
  pixels for an ImageNet ResNet, 8 x 8 for the CIFAR-stem ResNet), shape (B, 1, h, w), True where
  visible. At a feature map of size (H, W) a position is visible when the coarse cell above it is:
  the mask is repeated ``H / h`` times down and ``W / w`` times across (:func:`mask_at`).
* The input is zero at masked pixels (:func:`zero_masked`), and the output of every convolution and
  max-pooling is set to zero at masked positions again. A masked position therefore holds 0 at the
  input of every layer: a kernel centred on a visible position that overlaps masked ones reads
  zeros, never what was there, and no information flows out of a masked patch.
* BatchNorm normalises the visible positions only (a sparse BatchNorm): with ``V`` the set of
  visible (b, y, x) positions and ``|V|`` its size, for each channel c::

      mean_c = 1/|V| sum_{(b,y,x) in V} x_{b,c,y,x}
      var_c  = 1/|V| sum_{(b,y,x) in V} (x_{b,c,y,x} - mean_c)^2
      y_{b,c,y,x} = (x_{b,c,y,x} - mean_c) / sqrt(var_c + eps) * gamma_c + beta_c   on V, 0 elsewhere

  and the running statistics follow ``mean_c`` and ``var_c * |V| / (|V| - 1)`` as BatchNorm's do.
  It is the BatchNorm module itself applied to the visible positions as a batch of |V| 1x1 maps,
  so ``SyncBatchNorm`` and :class:`~contrastkit.nn.global_batchnorm.GlobalBatchNorm` gather the
  visible positions of every process.
* Global average pooling averages the visible positions only.

Everything else in the network must act position by position (activations such as ReLU with
``f(0) = 0``, residual sums of two masked maps); :func:`visible_only` refuses a network holding
another kind of layer, naming it.

The sparse network is the dense one: :func:`visible_only` adds hooks to the network's own modules
for the duration of a ``with`` block and removes them after, so no weight is copied, the running
statistics that sparse training updates are the dense network's, and outside the block the network
is the ordinary dense encoder that users keep (SparK's code copies the weights into a sparse twin
and back; sharing them leaves nothing to copy). Example::

    active = random_active_mask(batch, grid_h, grid_w, keep=6)
    with visible_only(resnet, active):
        maps = resnet.stage_features(zero_masked(images, active))   # zero wherever masked
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.nn.global_batchnorm import GlobalBatchNorm

# Layers whose output is zeroed at masked positions: they mix neighbouring positions.
MASKED_OUTPUT = (nn.Conv2d, nn.MaxPool2d)
NORMALISATIONS = (nn.BatchNorm2d, nn.SyncBatchNorm, GlobalBatchNorm)
# Layers that act position by position and map 0 to 0: a masked position stays 0 through them.
POSITIONWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity, nn.Dropout)
CONTAINERS = (nn.Sequential, nn.ModuleList)


def mask_at(active: Tensor, height: int, width: int) -> Tensor:
    """The coarse mask ``active`` (B, 1, h, w) at a map of ``height x width``: (B, 1, height, width),
    each coarse cell repeated over the ``height / h x width / w`` positions below it."""
    grid_h, grid_w = active.shape[-2:]
    if height % grid_h or width % grid_w:
        raise DataError(
            f"A {height}x{width} feature map does not split into the mask's {grid_h}x{grid_w} cells: every "
            f"map of a sparse network must be a whole multiple of the mask grid (image side divisible by the "
            f"network's total stride)."
        )
    return active.repeat_interleave(height // grid_h, dim=2).repeat_interleave(width // grid_w, dim=3)


def zero_masked(x: Tensor, active: Tensor) -> Tensor:
    """``x`` (B, C, H, W) with every masked position set to 0."""
    return x * mask_at(active, x.shape[2], x.shape[3]).to(x.dtype)


def random_active_mask(batch: int, grid_h: int, grid_w: int, keep: int, device: torch.device | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """(batch, 1, grid_h, grid_w) booleans with exactly ``keep`` visible cells per image, drawn
    uniformly without replacement (SparK masks the same number of patches in every image)."""
    cells = grid_h * grid_w
    if not 1 <= keep < cells:
        raise ConfigError(f"A mask on {grid_h}x{grid_w} cells must keep between 1 and {cells - 1} of them visible, "
                          f"got {keep}; change the mask ratio or the image size.")
    scores = torch.rand(batch, cells, generator=generator, device=None if generator is not None else device)
    kept = scores.argsort(dim=1)[:, :keep].to(device)
    active = torch.zeros(batch, cells, dtype=torch.bool, device=device).scatter_(1, kept, True)
    return active.reshape(batch, 1, grid_h, grid_w)


def visible_rows(x: Tensor, visible: Tensor) -> Tensor:
    """The visible positions of ``x`` (B, C, H, W) as rows (|V|, C); ``visible`` is (B, 1, H, W) booleans."""
    return x.permute(0, 2, 3, 1)[visible[:, 0]]


def scatter_rows(rows: Tensor, visible: Tensor, channels: int) -> Tensor:
    """The inverse of :func:`visible_rows`: a (B, C, H, W) map holding ``rows`` at the visible
    positions and 0 elsewhere."""
    batch, _, height, width = visible.shape
    out = rows.new_zeros(batch, height, width, channels)
    out[visible[:, 0]] = rows
    return out.permute(0, 3, 1, 2)


def sparse_batch_norm(norm: nn.Module, x: Tensor, visible: Tensor) -> Tensor:
    """``norm`` (a BatchNorm2d, SyncBatchNorm or GlobalBatchNorm) over the visible positions of
    ``x`` only, 0 at the masked ones: the formula of the module docstring, running statistics
    updated by the module itself in training mode."""
    rows = visible_rows(x, visible)
    return scatter_rows(norm(rows[:, :, None, None])[:, :, 0, 0], visible, x.shape[1])


def _zero_masked_output(active: Tensor):
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return zero_masked(output, active)
    return hook


def _normalise_visible(active: Tensor):
    # The pre-hook hands the BatchNorm the visible rows as 1x1 maps; the hook puts its output back.
    shapes: list[tuple[Tensor, int]] = []

    def before(module: nn.Module, inputs: tuple) -> tuple:
        (x,) = inputs
        visible = mask_at(active, x.shape[2], x.shape[3])
        shapes.append((visible, x.shape[1]))
        return (visible_rows(x, visible)[:, :, None, None],)

    def after(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        visible, channels = shapes.pop()
        return scatter_rows(output[:, :, 0, 0], visible, channels)
    return before, after


def _pool_visible(active: Tensor):
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        (x,) = inputs  # zero at masked positions
        visible = mask_at(active, x.shape[2], x.shape[3]).to(x.dtype)
        return x.sum(dim=(2, 3), keepdim=True) / visible.sum(dim=(2, 3), keepdim=True)
    return hook


def _is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


@contextmanager
def visible_only(network: nn.Module, active: Tensor) -> Iterator[nn.Module]:
    """Within the block, ``network`` computes on the visible positions of ``active`` only (see the
    module docstring); its inputs must be zero at masked pixels (:func:`zero_masked`).

    Args:
        network: a CNN of Conv2d, MaxPool2d, BatchNorm2d (or SyncBatchNorm / GlobalBatchNorm),
            global average pooling and position-wise layers, in any containers.
        active: (B, 1, h, w) booleans, True where visible, on the coarsest grid of the network.
    """
    if active.dim() != 4 or active.shape[1] != 1 or active.dtype != torch.bool:
        raise DataError(f"The visible mask must be booleans of shape (B, 1, h, w), got {active.dtype} "
                        f"{tuple(active.shape)}.")
    handles = []
    try:
        for name, module in network.named_modules():
            if isinstance(module, MASKED_OUTPUT):
                handles.append(module.register_forward_hook(_zero_masked_output(active)))
            elif isinstance(module, NORMALISATIONS):
                before, after = _normalise_visible(active)
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after))
            elif _is_global_pool(module):
                handles.append(module.register_forward_hook(_pool_visible(active)))
            elif not isinstance(module, POSITIONWISE + CONTAINERS) and not list(module.children()):
                raise ConfigError(
                    f"Sparse convolution cannot run layer '{name}' ({type(module).__name__}) on visible "
                    f"positions only: it handles Conv2d, MaxPool2d, BatchNorm2d, global average pooling and "
                    f"position-wise activations. Use a ResNet backbone."
                )
        yield network
    finally:
        for handle in handles:
            handle.remove()
