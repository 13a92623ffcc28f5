"""A support set: a queue of past embeddings that answers nearest-neighbour queries (NNCLR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.core.errors import DataError
from contrastkit.nn.queue import MemoryQueue


class SupportSet(MemoryQueue):
    """A :class:`~contrastkit.nn.queue.MemoryQueue` of embeddings with a nearest-neighbour lookup.

    ``nearest(z)`` returns, for each row of ``z``, the stored key of highest cosine similarity::

        NN(z_i, Q) = q_j*,   j* = argmax_j  (z_i / ||z_i||) . (q_j / ||q_j||)

    detached (no gradient flows into the support set). Keys are stored as given and returned as
    stored; their norm does not affect the choice. ``enqueue`` gathers the keys of every process
    first, so the support set, and therefore every lookup, is the same on every process as in
    one process on the whole batch. The keys and the write pointer are buffers: checkpoints hold
    the support set.

    Until a first key is stored (the first step of a run) each embedding is its own neighbour,
    ``nearest(z) = z.detach()``, so NNCLR's first step is SimCLR's with a predictor. (LightlySSL
    fills its bank with random unit vectors instead, which makes the first ``size / batch`` steps'
    positives random.)

    Args:
        size: number of keys kept (NNCLR: 98,304 in the paper, 4096 in LightlySSL's CIFAR-10
            benchmark).
        dim: embedding dimension.

    Example::

        support = SupportSet(4096, 256)
        positives = support.nearest(z_a)     # (B, 256), detached
        support.enqueue(z_a)                 # after the lookups of this step

    References:
        - Dwibedi, Aytar, Tompson, Sermanet & Zisserman, "With a Little Help from My Friends:
          Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021.
          https://arxiv.org/abs/2104.14548
    """

    @torch.no_grad()
    def nearest(self, z: Tensor) -> Tensor:
        """The stored key nearest to each row of the (B, dim) ``z`` by cosine similarity (detached)."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise DataError(f"SupportSet.nearest: queries must have shape (batch, {self.dim}), got {tuple(z.shape)}.")
        keys = self.keys()
        if keys.shape[0] == 0:
            return z.detach().clone()
        # Similarities in float32 at least, autocast off: in bf16 near neighbours would tie.
        dtype = torch.promote_types(keys.dtype, torch.float32)
        with torch.autocast(device_type=z.device.type, enabled=False):
            similarity = F.normalize(z.detach().to(dtype), dim=1) @ F.normalize(keys.to(dtype), dim=1).T
        return keys[similarity.argmax(dim=1)].to(z.dtype)
