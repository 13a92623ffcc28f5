"""A first-in-first-out memory of embeddings: the extra negatives of MoCo-style training."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.nn.distributed import gather_no_grad
from contrastkit.core.errors import ConfigError, DataError


class MemoryQueue(nn.Module):
    """A ring buffer of the ``size`` most recent keys, identical on every process.

    ``enqueue(keys)`` first all-gathers the keys of every process (without gradient, in rank
    order), then writes them after the newest stored row, overwriting the oldest rows once the
    queue is full. The rows and the write pointer are buffers, so the queue is saved in
    checkpoints (``state_dict``) and moves with ``.to(device)``.

    Args:
        size: number of keys kept (MoCo: 65536; must exceed the global batch to be useful).
        dim: embedding dimension.

    Example::

        queue = MemoryQueue(4096, 128)
        loss = objectives.get("infonce")(q, k, keys=queue.keys())
        queue.enqueue(k)        # after the loss: this batch is not its own negative

    References:
        - He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
          CVPR 2020. https://arxiv.org/abs/1911.05722
    """

    rows: Tensor
    pointer: Tensor
    filled: Tensor

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ConfigError(f"MemoryQueue needs a positive size and dim, got size={size}, dim={dim}.")
        self.size = int(size)
        self.dim = int(dim)
        self.register_buffer("rows", torch.zeros(self.size, self.dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # rows written so far, <= size

    @property
    def full(self) -> bool:
        """True once ``size`` keys have been stored (from then on each enqueue drops the oldest)."""
        return int(self.filled) == self.size

    def __len__(self) -> int:
        return int(self.filled)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Store the (B, dim) ``keys`` of every process (gathered first), oldest rows dropped first."""
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise DataError(f"MemoryQueue.enqueue: keys must have shape (batch, {self.dim}), got {tuple(keys.shape)}.")
        keys = gather_no_grad(keys).to(self.rows)
        count = keys.shape[0]
        # Only the last `size` keys survive a batch larger than the queue; write them where a
        # row-by-row FIFO would have left them.
        kept = keys[-self.size :]
        start = (int(self.pointer) + count - kept.shape[0]) % self.size
        positions = (start + torch.arange(kept.shape[0], device=self.rows.device)) % self.size
        self.rows[positions] = kept
        self.pointer.fill_((int(self.pointer) + count) % self.size)
        self.filled.fill_(min(int(self.filled) + count, self.size))

    def keys(self, in_order: bool = False) -> Tensor:
        """The stored keys (``len(self)`` rows), detached.

        The rows come in storage order (a view, no copy), which is all a loss needs; with
        ``in_order=True`` they come oldest first (a copy).
        """
        stored = self.rows[: int(self.filled)]
        if in_order and self.full:
            stored = torch.roll(stored, -int(self.pointer), dims=0)
        return stored.detach()

    def reset(self) -> None:
        """Forget every key."""
        self.rows.zero_()
        self.pointer.zero_()
        self.filled.zero_()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
