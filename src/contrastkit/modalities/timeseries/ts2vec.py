"""``TS2Vec``: universal time-series representations in three lines.

    model = TS2Vec(input_dims=train.shape[1], seed=0)
    model.fit(train)                      # train: (N, C, T) or (N, T), NaN = missing
    embeddings = model.encode(test)       # (N, 320), one vector per series

Yue et al., "TS2Vec: Towards Universal Representation of Time Series", AAAI 2022; this follows
the official implementation (github.com/zhihanyue/ts2vec) in its training details: AdamW
(torch's default weight decay 0.01 on every parameter, a constant rate), two overlapping random
crops per batch, binomial timestamp masking, the hierarchical contrastive loss, an SWA running
average of the weights used for encoding, and the handling of missing values and variable
lengths (NaN padding). Series are channels-first (N, C, T), the layout of
:mod:`contrastkit.modalities.timeseries.sources` and aeon; official TS2Vec takes (N, T, C).

Training runs on the engine (:mod:`contrastkit.engine`) with the training step and the batches
of :mod:`contrastkit.modalities.timeseries.method`; ``fit(x, out=...)`` keeps the run folder
(checkpoints, metrics.csv) and ``fit(x, out=..., resume=True)`` continues it exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.optim.swa_utils import AveragedModel

from contrastkit.modalities.timeseries.encoders import DilatedConvEncoder
from contrastkit.engine import TrainSettings, train
from contrastkit.engine.module import CHECKPOINT_KEY
from contrastkit.engine.run_folder import CHECKPOINT, open_run_dir, resolve_run_dir, write_summary
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.core.safe_loading import START_AGAIN, read_torch_file
from contrastkit.core.seeding import seeded
from contrastkit.modalities.timeseries.sources import TimeSeriesSource
from contrastkit.modalities.timeseries.method import EpochLosses, StopAfterSteps, TrainingSeriesData, TS2VecMethod

# Official default: 200 iterations when the training array has at most 100,000 values, else 600.
SMALL_DATASET_VALUES = 100_000
SMALL_DATASET_ITERS = 200
LARGE_DATASET_ITERS = 600
# torch's AdamW default, which the official code keeps, on every parameter (biases included).
ADAMW_WEIGHT_DECAY = 0.01


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
            random state); None draws the initial weights and each fit's seed from torch's
            global random state, like the official code.
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
        with seeded(None if seed is None else self._next_seed(), self.device):
            self.encoder = DilatedConvEncoder(input_dims, output_dims, hidden_dims, depth).to(self.device)
        # Encoding uses the running (SWA) average of the weights seen after every step; it is
        # updated in place, never by the optimiser.
        self.averaged_encoder = AveragedModel(self.encoder).requires_grad_(False)
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
        out: str | Path | None = None,
        resume: bool = False,
        checkpoint_every_steps: int | None = None,
        *,
        devices: int = 1,
        strategy: str = "auto",
        run_config: dict | None = None,
    ) -> list[float]:
        """Train on ``x`` (N, C, T) or (N, T); NaN marks missing values and padding.

        Stops after ``n_epochs`` passes or ``n_iters`` optimiser steps of this call, whichever
        comes first; with neither, ``n_iters`` is 200 (600 if ``x`` has more than 100,000
        values), the official default. Returns the mean loss of each epoch (the last one
        partial if ``n_iters`` ended it). ``verbose``: a progress bar (on a terminal) and a
        line per epoch.

        Training runs on the engine (:mod:`contrastkit.engine`). With ``out=None`` it runs in a
        temporary folder that is removed afterwards; with ``out`` that folder is kept as a run
        folder (config.yaml, checkpoints/last.ckpt written every epoch and every
        ``checkpoint_every_steps`` steps, metrics.csv, model.pt, summary.json), and
        ``resume=True`` continues a run stopped there (a crash, a kill) from its checkpoint,
        with the ``n_epochs``/``n_iters`` it was started with: weights, weight average,
        optimiser state, data order and random draws as the uninterrupted run would have them
        (``n_iters`` and ``n_epochs`` then count the whole run). ``devices`` and ``strategy``
        are Lightning's (``devices=2, strategy="ddp"``: two processes, each training on its
        own batch of ``batch_size`` series). ``run_config`` is recorded in config.yaml beside
        the model's configuration (the command line that called ``fit``).
        """
        if n_epochs is not None and n_epochs < 0 or n_iters is not None and n_iters < 0:
            raise ConfigError(f"TS2Vec.fit: n_epochs and n_iters must be >= 0, got {n_epochs}, {n_iters}.")
        if resume and out is None:
            raise ConfigError("TS2Vec.fit: resume=True continues the run in `out`; pass out=<its folder>.")
        if self._seeds is None and devices != 1:
            raise ConfigError("TS2Vec.fit on several devices needs TS2Vec(seed=...): every process must draw "
                              "the same data order.")
        series = self._as_series(x, "fit")
        if n_epochs is None and n_iters is None:
            n_iters = default_n_iters(series.size)
        if n_epochs == 0 or n_iters == 0:
            return []
        data = torch.from_numpy(prepare_training_series(series, self.max_train_length))
        run_dir = None if out is None else resolve_run_dir(out, resume, "ts2vec")
        # One seed per fit() call, drawn from the model's seed stream (or, without a seed, from
        # torch's global generator); a resumed run takes the seed it was started with.
        run_seed = self._resumed_seed(run_dir) if resume else self._next_seed()
        fit_options = dict(n_epochs=n_epochs, n_iters=n_iters, seed=run_seed, devices=devices, strategy=strategy,
                           checkpoint_every_steps=checkpoint_every_steps)
        batch_size = min(self.batch_size, data.shape[0])
        steps_per_epoch = max(1, data.shape[0] // (batch_size * devices))
        settings = self._train_settings(batch_size, steps_per_epoch, **fit_options)
        config = {"ts2vec": self.config, "fit": fit_options, **({"command": run_config} if run_config else {})}
        epoch_losses = EpochLosses(verbose)
        with contextlib.ExitStack() as stack:
            if run_dir is None:
                run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ts2vec-")))
            else:
                open_run_dir(run_dir, yaml.safe_dump(config, sort_keys=False))
            stack.enter_context(seeded(run_seed, self.device))  # the caller's random state is left as it was
            if not verbose:
                stack.enter_context(_quiet_lightning())
            method = TS2VecMethod(self.encoder, self.averaged_encoder, self.max_train_length, self.temporal_unit)
            result = train(method, TrainingSeriesData(data, settings.batch_size, run_seed), settings, run_dir,
                           resume=resume, description=config,
                           callbacks=[epoch_losses] + ([StopAfterSteps(n_iters)] if n_iters else []),
                           progress_bar=None if verbose else False)
        self.encoder.to(self.device)  # Lightning hands the module back on the CPU
        self.averaged_encoder.to(self.device)
        self.n_iters += result.trainer.global_step
        self.n_epochs += len(epoch_losses.history)
        if out is not None and result.is_global_zero:
            self.save(run_dir / "model.pt")
            write_summary(run_dir, {
                "method": "ts2vec", "n_iters": result.trainer.global_step, "n_epochs": len(epoch_losses.history),
                "final_loss": epoch_losses.history[-1] if epoch_losses.history else None,
                "world_size": result.trainer.world_size, "train_seconds": round(result.throughput.seconds, 2),
                "samples_per_second": round(result.throughput.samples_per_second, 2),
                "epoch_losses": epoch_losses.history})
        return list(epoch_losses.history)

    def _train_settings(self, batch_size: int, steps_per_epoch: int, n_epochs: int | None, n_iters: int | None,
                        seed: int, devices: int, strategy: str, checkpoint_every_steps: int | None) -> TrainSettings:
        """The official optimisation (AdamW at a constant rate, weight decay on every parameter)
        for the engine, on the model's device.

        ``n_iters`` is not the engine's ``max_steps``: the run is bounded by the epochs that hold
        ``n_iters`` steps, and :class:`StopAfterSteps` ends it at the step. (This was written when
        Lightning resumed a run bounded by steps one batch off from an end-of-epoch checkpoint;
        the engine now restores such a checkpoint as the next epoch's start, and the bound by
        epochs is kept because it gives the same run.)"""
        max_epochs = n_epochs
        if n_iters is not None:
            max_epochs = min(n_epochs or n_iters, math.ceil(n_iters / steps_per_epoch))
        return TrainSettings(
            optimizer="adamw", lr=self.lr, weight_decay=ADAMW_WEIGHT_DECAY, decay_everything=True,
            schedule="constant", max_epochs=max_epochs, seed=seed, batch_size=batch_size,
            checkpoint_every_steps=checkpoint_every_steps, strategy=strategy,
            **_lightning_devices(self.device, devices))

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
        state = read_torch_file(path, map_location=torch.device(device), alternative=(
            "TS2Vec.save writes only tensors and plain values, so this file was not written by it or was altered."))
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

    def _resumed_seed(self, run_dir: Path) -> int:
        """The seed the run in ``run_dir`` was started with, once its model is known to be this one."""
        checkpoint = read_torch_file(run_dir / CHECKPOINT, alternative=START_AGAIN)
        description = (checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None) or {}
        if "fit" not in description:
            raise DataError(f"'{run_dir / CHECKPOINT}' was not written by TS2Vec.fit; it cannot be resumed here.")
        changed = {k: (v, self.config.get(k)) for k, v in description["ts2vec"].items() if self.config.get(k) != v}
        if changed:
            listed = ", ".join(f"{k}={was!r} (now {now!r})" for k, (was, now) in changed.items())
            raise ConfigError(f"The run in '{run_dir}' was started with {listed}; resume it with the same TS2Vec "
                              f"settings, or start a new run in another folder.")
        return int(description["fit"]["seed"])

    def _next_seed(self) -> int:
        """The next seed of this model's stream; without a seed, one drawn from torch's global generator."""
        if self._seeds is None:
            return int(torch.randint(2**62, ()))
        return int(self._seeds.integers(2**62))


def _lightning_devices(device: torch.device, devices: int) -> dict[str, Any]:
    """Lightning's accelerator and devices for the model's torch ``device``."""
    accelerator = {"cuda": "gpu"}.get(device.type, device.type)
    if device.index is not None and devices == 1:
        return {"accelerator": accelerator, "devices": [device.index]}
    return {"accelerator": accelerator, "devices": devices}


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up lines and data-loader hints, hidden for a quiet ``fit``."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs torch
            yield
    finally:
        logger.setLevel(level)


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
