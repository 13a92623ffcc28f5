"""``TS2Vec``: universal time-series representations in three lines.

    model = TS2Vec(input_dims=train.shape[1], seed=0)
    model.fit(train)                      # train: (N, C, T) or (N, T), NaN = missing
    embeddings = model.encode(test)       # (N, 320), one vector per series

Yue et al., "TS2Vec: Towards Universal Representation of Time Series", AAAI 2022; this follows
the official implementation (github.com/zhihanyue/ts2vec) in its training details: AdamW,
two overlapping random crops per batch, binomial timestamp masking, the hierarchical
contrastive loss, an SWA running average of the weights used for encoding, and the handling
of missing values and variable lengths (NaN padding). Series are channels-first (N, C, T), the
layout of :mod:`contrastkit.sources.timeseries` and aeon; official TS2Vec takes (N, T, C).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from contrastkit.encoders.dilated_conv import DilatedConvEncoder
from contrastkit.errors import ConfigError, DataError
from contrastkit.objectives.hierarchical import hierarchical_contrastive_loss
from contrastkit.seeding import seeded
from contrastkit.sources.timeseries import TimeSeriesSource
from contrastkit.views.timeseries import sample_overlapping_crops, take_crops

# Official default: 200 iterations when the training array has at most 100,000 values, else 600.
SMALL_DATASET_VALUES = 100_000
SMALL_DATASET_ITERS = 200
LARGE_DATASET_ITERS = 600


class TS2Vec:
    """Train a TS2Vec encoder on unlabeled series and encode series into vectors.

    Args:
        input_dims: C, channels per time step (1 for univariate series).
        output_dims: representation size D (paper: 320).
        hidden_dims: width of the dilated convolution blocks (paper: 64).
        depth: number of hidden residual blocks (paper: 10).
        lr: AdamW learning rate (paper: 0.001).
        batch_size: series per training step (official class default 16; its UCR script uses 8).
        max_train_length: longer series are split into NaN-padded sections of at most about
            this length for training, and a random window of this length is taken per batch.
            None keeps whole series.
        temporal_unit: pyramid scales below this get no temporal contrast (saves memory on
            very long series); the overlap of the two crops is at least 2^(temporal_unit+1).
        device: torch device for training and encoding.
        seed: makes initialisation and training reproducible (without changing the global
            random state); None uses the global torch random state, like the official code.
    """

    def __init__(
        self,
        input_dims: int,
        output_dims: int = 320,
        hidden_dims: int = 64,
        depth: int = 10,
        lr: float = 0.001,
        batch_size: int = 16,
        max_train_length: int | None = 3000,
        temporal_unit: int = 0,
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"TS2Vec: batch_size must be >= 1, got {batch_size}.")
        if not lr > 0:
            raise ConfigError(f"TS2Vec: lr must be positive, got {lr}.")
        if max_train_length is not None and max_train_length < 2 ** (temporal_unit + 1):
            raise ConfigError(
                f"TS2Vec: max_train_length={max_train_length} is shorter than the minimum crop "
                f"overlap 2^(temporal_unit+1) = {2 ** (temporal_unit + 1)}."
            )
        self.config: dict[str, Any] = dict(
            input_dims=input_dims,
            output_dims=output_dims,
            hidden_dims=hidden_dims,
            depth=depth,
            lr=lr,
            batch_size=batch_size,
            max_train_length=max_train_length,
            temporal_unit=temporal_unit,
            seed=seed,
        )
        self.input_dims = input_dims
        self.lr = lr
        self.batch_size = batch_size
        self.max_train_length = max_train_length
        self.temporal_unit = temporal_unit
        self.device = torch.device(device)
        # One stream of seeds: initialisation, then one per fit() call.
        self._seeds = np.random.default_rng(seed) if seed is not None else None
        with self._random_state():
            self.encoder = DilatedConvEncoder(input_dims, output_dims, hidden_dims, depth).to(self.device)
        # Encoding uses the running (SWA) average of the weights seen after every step.
        self.averaged_encoder = AveragedModel(self.encoder)
        self.averaged_encoder.update_parameters(self.encoder)
        self.n_epochs = 0
        self.n_iters = 0

    # ------------------------------------------------------------------ training

    def fit(
        self,
        x: np.ndarray | TimeSeriesSource,
        n_epochs: int | None = None,
        n_iters: int | None = None,
        verbose: bool = False,
    ) -> list[float]:
        """Train on ``x`` (N, C, T) or (N, T); NaN marks missing values and padding.

        Stops after ``n_epochs`` passes or ``n_iters`` optimiser steps of this call, whichever
        comes first; with neither, ``n_iters`` is 200 (600 if ``x`` has more than 100,000
        values), the official default. Returns the mean loss of each epoch (the last one
        partial if ``n_iters`` ended it).
        """
        if n_epochs is not None and n_epochs < 0 or n_iters is not None and n_iters < 0:
            raise ConfigError(f"TS2Vec.fit: n_epochs and n_iters must be >= 0, got {n_epochs}, {n_iters}.")
        series = self._as_series(x, "fit")
        if n_epochs is None and n_iters is None:
            n_iters = default_n_iters(series.size)
        series = prepare_training_series(series, self.max_train_length)
        data = torch.from_numpy(series)
        batch_size = min(self.batch_size, data.shape[0])
        optimizer = torch.optim.AdamW(self.encoder.parameters(), lr=self.lr)
        self.encoder.train()
        loss_log: list[float] = []
        steps = 0
        with self._random_state():
            for epoch in range(n_epochs if n_epochs is not None else 2**62):
                epoch_losses = []
                for batch in _shuffled_batches(data, batch_size):
                    if n_iters is not None and steps >= n_iters:
                        break
                    loss = self._training_step(batch.to(self.device), optimizer)
                    epoch_losses.append(loss)
                    steps += 1
                    self.n_iters += 1
                if epoch_losses:
                    loss_log.append(float(np.mean(epoch_losses)))
                    self.n_epochs += 1
                    if verbose:
                        print(f"Epoch #{self.n_epochs - 1}: loss={loss_log[-1]:.6f}")
                if n_iters is not None and steps >= n_iters:
                    break
        return loss_log

    def _training_step(self, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        if self.max_train_length is not None and x.shape[2] > self.max_train_length:
            start = int(torch.randint(x.shape[2] - self.max_train_length + 1, ()))
            x = x[:, :, start : start + self.max_train_length]
        crops = sample_overlapping_crops(x.shape[0], x.shape[2], min_overlap=2 ** (self.temporal_unit + 1))
        first, second = take_crops(x, crops)
        optimizer.zero_grad()
        z1 = crops.overlap_of_first(self.encoder(first))
        z2 = crops.overlap_of_second(self.encoder(second))
        loss = hierarchical_contrastive_loss(z1, z2, temporal_unit=self.temporal_unit)
        loss.backward()
        optimizer.step()
        self.averaged_encoder.update_parameters(self.encoder)
        return float(loss.detach())

    # ------------------------------------------------------------------ encoding

    @torch.no_grad()
    def encode(
        self,
        x: np.ndarray | TimeSeriesSource,
        encoding_window: str | int | None = "full_series",
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Representations of ``x`` (N, C, T) or (N, T) from the weight-averaged encoder.

        ``encoding_window``:
            ``"full_series"``: max over all time steps -> (N, D), one vector per series (the
            instance representation used for classification).
            ``None``: one vector per time step -> (N, T, D).
            an int w: max over a sliding window of w steps centred on each step -> (N, T, D).
        """
        series = self._as_series(x, "encode")
        batch_size = batch_size or self.batch_size
        network = self.averaged_encoder.module
        was_training = network.training
        network.eval()
        outputs = []
        for start in range(0, series.shape[0], batch_size):
            batch = torch.from_numpy(series[start : start + batch_size]).to(self.device)
            out = network(batch, mask="none")  # (B, T, D)
            outputs.append(_pool_over_time(out, encoding_window).cpu())
        network.train(was_training)
        return torch.cat(outputs).numpy()

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Write the configuration and both weight sets (trained and averaged) to ``path``."""
        torch.save(
            {
                "config": self.config,
                "encoder": self.encoder.state_dict(),
                "averaged_encoder": self.averaged_encoder.state_dict(),
                "n_epochs": self.n_epochs,
                "n_iters": self.n_iters,
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> TS2Vec:
        """A TS2Vec rebuilt from :meth:`save`'s file, on ``device``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"TS2Vec checkpoint '{path}' does not exist.")
        state = torch.load(path, map_location=torch.device(device), weights_only=True)
        if not isinstance(state, dict) or "config" not in state or "averaged_encoder" not in state:
            raise DataError(f"'{path}' is not a file written by TS2Vec.save().")
        model = cls(**state["config"], device=device)
        model.encoder.load_state_dict(state["encoder"])
        model.averaged_encoder.load_state_dict(state["averaged_encoder"])
        model.n_epochs, model.n_iters = state["n_epochs"], state["n_iters"]
        return model

    # ------------------------------------------------------------------ helpers

    def _as_series(self, x: np.ndarray | TimeSeriesSource, method: str) -> np.ndarray:
        if isinstance(x, TimeSeriesSource):
            x = x.x
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.ndim == 2 and self.input_dims == 1:
            x = x[:, None, :]
        if x.ndim != 3 or x.shape[1] != self.input_dims:
            hint = (
                " It looks like (N, T, C); transpose it with x.transpose(0, 2, 1)."
                if x.ndim == 3 and x.shape[2] == self.input_dims
                else ""
            )
            raise DataError(
                f"TS2Vec.{method} expects series of shape (N, {self.input_dims}, T) (channels "
                f"first, input_dims={self.input_dims}), got {x.shape}.{hint}"
            )
        if x.shape[0] == 0 or x.shape[2] == 0:
            raise DataError(f"TS2Vec.{method} got no series (shape {x.shape}).")
        return np.ascontiguousarray(x, dtype=np.float32)

    @contextlib.contextmanager
    def _random_state(self) -> Iterator[None]:
        """With a seed: a private torch random state seeded from this model's seed stream."""
        seed = None if self._seeds is None else int(self._seeds.integers(2**62))
        with seeded(seed, self.device):
            yield


def _shuffled_batches(data: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """One epoch of shuffled batches; the incomplete last batch is dropped (as the official code)."""
    order = torch.randperm(data.shape[0])
    for start in range(0, data.shape[0] - batch_size + 1, batch_size):
        yield data[order[start : start + batch_size]]


def _pool_over_time(out: torch.Tensor, encoding_window: str | int | None) -> torch.Tensor:
    if encoding_window is None:
        return out
    if encoding_window == "full_series":
        return out.amax(dim=1)
    if isinstance(encoding_window, int) and encoding_window >= 1:
        pooled = F.max_pool1d(
            out.transpose(1, 2), kernel_size=encoding_window, stride=1, padding=encoding_window // 2
        ).transpose(1, 2)
        return pooled[:, : out.shape[1]]  # an even window yields one extra step at the end
    raise ConfigError(
        f"encoding_window must be 'full_series', None or a positive int, got {encoding_window!r}."
    )


def prepare_training_series(x: np.ndarray, max_train_length: int | None) -> np.ndarray:
    """The official TS2Vec preprocessing of a training array (N, C, T), NaN = missing.

    1. Series longer than ``2 * max_train_length`` are split into ``T // max_train_length``
       consecutive sections (NaN-padded to equal length) that become separate series.
    2. If some series is missing its first or last step, every series is re-centred: its
       observed span is shifted so that the missing steps are split evenly between the two
       ends (a wrap-around roll), so that crops rarely fall entirely in padding.
    3. Series with no observed value at all are dropped.
    """
    if max_train_length is not None:
        sections = x.shape[2] // max_train_length
        if sections >= 2:
            x = np.concatenate(_split_with_nan(x, sections), axis=0)
    step_missing = np.isnan(x).all(axis=1)  # (N, T): no channel observed
    if step_missing[:, 0].any() or step_missing[:, -1].any():
        x = centre_observed_span(x)
    keep = ~np.isnan(x).all(axis=(1, 2))
    if not keep.any():
        raise DataError("TS2Vec.fit: every training series is entirely missing (NaN).")
    return np.ascontiguousarray(x[keep])


def _split_with_nan(x: np.ndarray, sections: int) -> list[np.ndarray]:
    parts = np.array_split(x, sections, axis=2)
    length = parts[0].shape[2]  # array_split makes the first parts the longest
    return [np.pad(p, ((0, 0), (0, 0), (0, length - p.shape[2])), constant_values=np.nan) for p in parts]


def centre_observed_span(x: np.ndarray) -> np.ndarray:
    """Roll each series (N, C, T) so that its leading and trailing missing steps are balanced.

    With ``lead`` missing steps before the first observed one and ``trail`` after the last,
    series i is rolled right by ``(lead + trail) // 2 - lead`` (official
    ``centerize_vary_length_series``). An entirely missing series is left as it is.
    """
    observed = ~np.isnan(x).all(axis=1)  # (N, T)
    lead = np.argmax(observed, axis=1)
    trail = np.argmax(observed[:, ::-1], axis=1)
    shift = (lead + trail) // 2 - lead
    shift[~observed.any(axis=1)] = 0
    length = x.shape[2]
    source_steps = (np.arange(length)[None, :] - shift[:, None]) % length  # out[t] = x[t - shift]
    return np.take_along_axis(x, source_steps[:, None, :].repeat(x.shape[1], axis=1), axis=2)


def default_n_iters(n_values: int) -> int:
    """The official default number of iterations for a training array of ``n_values`` values."""
    return SMALL_DATASET_ITERS if n_values <= SMALL_DATASET_VALUES else LARGE_DATASET_ITERS


__all__ = ["TS2Vec", "prepare_training_series", "centre_observed_span", "default_n_iters"]
