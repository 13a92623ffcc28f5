"""The one small loop for auxiliary fits: probes and autoencoders that serve a method or a baseline.

Pretraining runs through :func:`contrastkit.engine.train` (checkpoints, resume, DDP). The fits
here are a few seconds to minutes long, on one process, and are redone rather than resumed: a
linear probe on frozen embeddings, the denoising autoencoder behind G-SimCLR's pseudo-labels, the
autoencoder anomaly baseline, SCGC's reconstruction start. They share this loop instead of each
keeping its own:

    for each epoch: order = torch.randperm(N) (or all rows at once when batch_size is None)
                    for each batch of rows: loss = loss_of(rows); Adam step

Randomness comes from torch's global generator (run it inside :func:`contrastkit.core.seeding.seeded`
for a reproducible fit that leaves the caller's state alone): one ``randperm`` per epoch, then
whatever ``loss_of`` draws (noise of a denoising autoencoder), in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError


def fit_auxiliary(parameters: Iterable[nn.Parameter], loss_of: Callable[[Tensor], Tensor], num_rows: int, *,
                  epochs: int, lr: float, batch_size: int | None = None, weight_decay: float = 0.0,
                  after_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Minimise ``loss_of(rows)`` (the mean loss of the rows whose positions are given) with Adam.

    Args:
        parameters: what Adam updates (L2 ``weight_decay`` on all of them, as torch's Adam adds it).
        loss_of: maps a LongTensor of row positions to a scalar mean loss over those rows.
        num_rows: N, the rows there are.
        epochs: passes over the rows.
        lr: Adam's rate.
        batch_size: rows per step, in a new random order every epoch; None: one full-batch step
            per epoch, rows in order (no random number drawn).
        after_epoch: called with the 0-based epoch after its last step (model selection on a
            validation split, logging).

    Returns:
        The mean loss of every epoch, weighted by the rows of each step.
    """
    if epochs < 1 or num_rows < 1 or (batch_size is not None and batch_size < 1):
        raise ConfigError(f"An auxiliary fit needs epochs, rows and batch_size >= 1; got {epochs}, {num_rows}, "
                          f"{batch_size}.")
    optimizer = torch.optim.Adam(list(parameters), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        if batch_size is None:
            batches = [torch.arange(num_rows)]
        else:
            batches = torch.randperm(num_rows).split(batch_size)
        total = 0.0
        for rows in batches:
            loss = loss_of(rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        history.append(total / num_rows)
        if after_epoch is not None:
            after_epoch(epoch)
    return history
