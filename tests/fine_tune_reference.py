"""The second derivation every fine-tuning test compares against: a frozen encoder's features computed
once, and a linear head trained on them by hand with the same loop (``fit_auxiliary``) and seed that
``evaluation.fine_tune`` uses. Fine-tuning at encoder rate 0 must give exactly this head's figures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from contrastkit.core.seeding import seeded
from contrastkit.engine.auxiliary import fit_auxiliary


def hand_trained_head(frozen: torch.Tensor, labels: torch.Tensor, train: Sequence[int], dev: Sequence[int],
                      classes: int, *, epochs: int, lr: float, batch_size: int, seed: int = 0
                      ) -> tuple[list[float], list[torch.Tensor]]:
    """(dev top-1 after each epoch, the head's weight after each epoch) of a linear head on
    ``frozen[train]``, built and trained under ``seed``."""
    train, dev = torch.as_tensor(train), torch.as_tensor(dev)
    dev_top1: list[float] = []
    weights: list[torch.Tensor] = []

    def after_epoch(epoch: int) -> None:
        weights.append(head.weight.detach().clone())
        with torch.no_grad():
            dev_top1.append(float((head(frozen[dev]).argmax(1) == labels[dev]).float().mean()))

    with seeded(seed):
        head = nn.Linear(frozen.shape[1], classes)
        fit_auxiliary(head.parameters(),
                      lambda rows: nn.functional.cross_entropy(head(frozen[train[rows]]), labels[train[rows]]),
                      len(train), epochs=epochs, lr=lr, batch_size=batch_size, after_epoch=after_epoch)
    return dev_top1, weights
