"""Gathering across processes, so that objectives never do it themselves.

Contrastive objectives compare every anchor with every key of the *global* batch. Under data
parallelism each process holds only its local batch, so the embeddings are all-gathered first.
This module holds the collectives and :class:`GatheredObjective`, the one wrapper that makes any
objective of :mod:`contrastkit.objectives` distributed. Without an initialised process group every
function here is the identity (world size 1, rank 0), so single-process code needs no branches.

Gradients through the gather
----------------------------
:func:`gather_with_grad` is an autograd all-gather. Its backward all-reduces (sums) the gradient of
the gathered tensor over the ranks and returns this rank's rows -- the semantics of LightlySSL's
``GatherLayer`` and of open_clip's ``gather_with_grad=True``. Local batches may differ in size
between ranks (the sizes are exchanged first, then padded to the largest and trimmed).

The objective protocol
----------------------
An objective is an ``nn.Module`` called as ``objective(z_a, z_b, **extra)`` that returns a scalar,
row ``i`` of ``z_a`` and ``z_b`` being two views (or two modalities) of sample ``i``. To be
distributed it may declare two things:

``per_sample_inputs: tuple[str, ...]`` (class attribute, default ``()``)
    Names of keyword arguments holding one entry per sample along dimension 0 (``labels``,
    ``indices``, ``weights``). The wrapper gathers them like the embeddings, so that row ``i`` of
    every per-sample input still belongs to row ``i`` of ``z_a``. Floating tensors that require
    grad are gathered with gradient, the others without. Keyword arguments that are not listed
    (a queue's ``keys``, a scalar) are passed unchanged: they must already be the same on every
    rank (:class:`contrastkit.nn.queue.MemoryQueue` gathers before it stores, so its keys are).

``loss_terms(z_a, z_b, *, anchor_rows: slice | None = None, **extra) -> (total, count)``
    Needed only for ``local_loss=True``. Given the *full* gathered batch, return the **sum** of
    the loss terms that belong to the samples ``anchor_rows`` (``None``: all samples) and the
    **normaliser of the full batch**, so that::

        objective(z_a, z_b, **extra) == total(all rows) / count

    and, for any partition of ``range(N)`` into slices ``S_r``,
    ``sum_r total(S_r) == total(all rows)`` with ``count`` the same for every slice. What "the
    terms of sample i" are is up to the objective -- for NT-Xent they are the losses of the two
    anchors ``z_a[i]`` and ``z_b[i]``; for CLIP the image-to-text row ``i`` and the text-to-image
    row ``i``; for SigLIP the pairs ``(i, j)`` for all ``j``. ``count`` may be a tensor computed
    from the full batch (SupCon counts only anchors that have a positive). ``total`` must be
    a 0-d tensor; ``count`` a number or 0-d tensor that carries no gradient.

An objective without ``loss_terms`` can still be wrapped with ``local_loss=False``.

Stateful objectives (per-sample moving averages indexed by sample id, running statistics) stay
identical on every rank only if they update their state from the *full* gathered batch, not from
``anchor_rows``; then the distributed loss equals the single-process one. An objective that
cannot keep that promise must say so in its docstring (see ``tests/objective_cases.py``).

Scaling: why the wrapper's loss gives the single-process gradient
-----------------------------------------------------------------
Let ``L`` be the objective on the concatenated global batch, ``W`` the world size, and ``z_r``
this rank's inputs. DDP (and Lightning) *average* parameter gradients over the ranks.

* ``local_loss=False``: every rank computes the same ``L`` on the gathered batch. The gather's
  backward sums the ``W`` identical gradients, so ``d(loss)/d(z_r) = W * dL/dz_r``; DDP's
  average over ranks then divides by ``W`` and yields exactly ``dL/dθ``.
* ``local_loss=True``: rank ``r`` computes ``L_r = total(S_r) / count`` over its own anchors only
  (memory linear in the local batch: ``n_local x N`` similarities instead of ``N x N``), so
  ``L = sum_r L_r``. The wrapper back-propagates ``W * L_r``: the gather's sum over ranks gives
  ``d/dz_r = W * sum_r' dL_r'/dz_r = W * dL/dz_r``, and DDP's average again yields ``dL/dθ``.
  Parameters of the objective itself (CLIP's logit scale) get ``W * dL_r/dθ`` on rank ``r``,
  whose average over ranks is ``dL/dθ`` as well.

In both modes the *value* returned on every rank is the global ``L`` (in local mode the ranks'
``L_r`` are all-reduced, detached, so logs show the single-process loss); the gradient with
respect to this rank's inputs is ``W`` times the single-process gradient, and the gradient of
the objective's own parameters is ``W`` times this rank's share. So: use the wrapper under DDP
with its default gradient averaging, and do not rescale the loss by the world size yourself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 when torch.distributed is not initialised)."""
    return dist.get_rank() if is_distributed() else 0


def batch_sizes(local_batch: int, device: torch.device | str = "cpu") -> list[int]:
    """The local batch size of every rank, in rank order (a collective: call it on every rank)."""
    if not is_distributed():
        return [local_batch]
    mine = torch.tensor([local_batch], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


def rank_offset(local_batch: int, sizes: list[int] | None = None) -> int:
    """Index of this rank's first row in the gathered batch (a collective unless ``sizes`` given)."""
    sizes = batch_sizes(local_batch) if sizes is None else sizes
    return sum(sizes[: rank()])


def _all_gather_rows(x: Tensor, sizes: list[int]) -> Tensor:
    # all_gather needs equal shapes: pad every rank's rows to the largest batch, then trim.
    largest = max(sizes)
    x = x.contiguous()
    if x.shape[0] < largest:
        pad = x.new_zeros((largest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    chunks = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(chunks, x)
    return torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        ctx.sizes = sizes
        return _all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: rank()])
        return grad[start : start + ctx.sizes[rank()]], None


def gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``x`` (rows = samples) of all ranks in rank order, keeping the gradient.

    Backward: the incoming gradient is summed over ranks and this rank's rows are returned, so a
    loss that every rank computes identically gets ``world_size`` times its gradient (see the
    module docstring for why that is what DDP's averaging needs). ``sizes`` (every rank's number
    of rows, from :func:`batch_sizes`) saves one collective when it is already known.
    """
    if not is_distributed():
        return x
    sizes = batch_sizes(x.shape[0], x.device) if sizes is None else sizes
    return _GatherWithGrad.apply(x, sizes)


@torch.no_grad()
def gather_no_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``x`` of all ranks in rank order, without gradient (labels, queue keys)."""
    if not is_distributed():
        return x.detach()
    sizes = batch_sizes(x.shape[0], x.device) if sizes is None else sizes
    return _all_gather_rows(x.detach(), sizes)


def _gather_any(x: Tensor, sizes: list[int]) -> Tensor:
    if x.requires_grad:
        return gather_with_grad(x, sizes)
    return gather_no_grad(x, sizes)


class GatheredObjective(nn.Module):
    """Make any objective distributed: gather the global batch, then compute the loss.

    Args:
        objective: an objective module (see the protocol in the module docstring).
        local_loss: if True (default) each rank computes only the loss terms of its own samples
            against all keys of the global batch (open_clip's ``local_loss``): memory
            ``O(n_local x N)``. Needs ``objective.loss_terms``. If False every rank computes the
            whole ``N x N`` loss (simpler, ``W`` times the compute).

    Call it exactly like the objective: ``loss = wrapped(z_a, z_b, **extra)``. With one process
    it calls the objective directly. The returned value is the global loss on every rank; its
    gradients, averaged over ranks by DDP, equal the single-process gradients (module docstring).

    Example::

        objective = GatheredObjective(objectives.get("ntxent", temperature=0.2))
        loss = objective(z_a, z_b)            # z_a, z_b: this rank's (n_local, d) embeddings
    """

    def __init__(self, objective: nn.Module, local_loss: bool = True):
        super().__init__()
        if local_loss and not hasattr(objective, "loss_terms"):
            raise ConfigError(
                f"Objective {type(objective).__name__} has no loss_terms(...), so it cannot compute "
                "a local loss per rank. Wrap it with GatheredObjective(objective, local_loss=False), "
                "or implement loss_terms as described in contrastkit.nn.distributed."
            )
        self.objective = objective
        self.local_loss = local_loss

    def forward(self, z_a: Tensor, z_b: Tensor | None = None, **extra: Any) -> Tensor:
        if not is_distributed():
            return self.objective(z_a, z_b, **extra)
        n_local = z_a.shape[0]
        sizes = batch_sizes(n_local, z_a.device)
        z_a_all = gather_with_grad(z_a, sizes)
        z_b_all = None if z_b is None else gather_with_grad(z_b, sizes)
        per_sample = getattr(self.objective, "per_sample_inputs", ())
        extra_all = {}
        for name, value in extra.items():
            if name in per_sample and isinstance(value, Tensor):
                if value.shape[0] != n_local:
                    raise ConfigError(
                        f"Per-sample input '{name}' has {value.shape[0]} rows but the local batch "
                        f"has {n_local}; pass one entry per sample of this rank's batch."
                    )
                value = _gather_any(value, sizes)
            extra_all[name] = value
        if not self.local_loss:
            return self.objective(z_a_all, z_b_all, **extra_all)

        start = sum(sizes[: rank()])
        total, count = self.objective.loss_terms(
            z_a_all, z_b_all, anchor_rows=slice(start, start + n_local), **extra_all
        )
        local = total / count
        global_value = local.detach().clone()
        dist.all_reduce(global_value, op=dist.ReduceOp.SUM)
        scaled = local * world_size()
        # Value: the global loss (for logging); gradient: that of W * L_r (see module docstring).
        return scaled + (global_value - scaled).detach()
