"""Where negatives come from beyond the current batch: queues of past keys."""

from __future__ import annotations

from contrastkit.sampling.queue import MemoryQueue

__all__ = ["MemoryQueue"]
