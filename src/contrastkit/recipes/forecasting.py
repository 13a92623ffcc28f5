"""Forecasting with a contrastive term: a patch Transformer trained on MSE + lambda * InfoNCE.

Yan, Zhang, Meng and Sylvain, "What Constitutes Good Contrastive Learning in Time-Series
Forecasting?", IJCAI 2023 AI4TS workshop (https://arxiv.org/abs/2306.12086), compared
self-supervised contrastive learning (SSCL) algorithms, backbones and training strategies
for forecasting and found that training a *Transformer end to end* on the MSE loss plus an
SSCL term works best, better than the usual two-step recipe (contrastive pretraining, then a
regressor on frozen representations); the contrastive term made the model attend to scale and
periodic structure. This module implements that end-to-end recipe at small scale:

    loss = MSE(forecast(x), y) + contrastive_weight * InfoNCE(g(h(v_a(x))), g(h(v_b(x))))

with ``h`` the encoder's mean-pooled window representation, ``g`` a small projection head,
and ``v_a``, ``v_b`` two independent draws of jitter + per-window scaling
(:func:`contrastkit.modalities.timeseries.views.jitter` / :func:`~contrastkit.modalities.timeseries.views.scale`):
the two views of a window are positives, the other windows of the batch negatives. The
InfoNCE is the catalogue's :func:`contrastkit.objectives.infonce.ntxent_terms`; the whole loss is
the catalogue's ``forecast_contrastive`` (:func:`contrastkit.objectives.forecasting.forecast_contrastive_loss`).

Data handling is chronological and leak-free: :func:`prepare_forecast_data` cuts the series
into train / validation / test by time, standardises with statistics of the training part
only, and makes every training window (input *and* target) lie inside the training part.
Validation and test windows may read earlier observations as their input (they are the
past at forecast time) but their targets lie entirely inside their own part.

    data = prepare_forecast_data(series, input_length=96, horizon=24)
    model = fit_forecaster(data, ForecasterConfig(contrastive_weight=0.1, seed=0))
    scores = evaluate_forecaster(model, *data.test)      # {"mse": ..., "mae": ...}

Training runs on the engine (:func:`contrastkit.engine.train`, the objective in
:class:`ForecastingTraining`); ``fit_forecaster(..., out=DIR)`` keeps the run folder and
``resume=True`` continues a killed run to the weights of an uninterrupted one.

Processes: ``fit_forecaster(..., devices=N, strategy="ddp")`` trains data-parallel. Each process
takes its ``batch_size`` windows of every global batch of ``N x batch_size``
(:class:`~contrastkit.engine.EpochShuffleSampler` with Lightning's rank and world size); the loss
is the catalogue's ``forecast_contrastive`` on the gathered global batch
(:class:`~contrastkit.nn.distributed.GatheredObjective`: the InfoNCE's negatives are the views of
every process's windows, and the MSE is the global batch's). Everything random in a step -- the
views' jitter and scaling and the model's dropout (:class:`RowwiseDropout`, and the attention
weights' dropout of :class:`RowwiseSelfAttention`) -- is drawn for the whole global batch on every
process from torch's generator seeded by (seed, step) alone, and each process keeps its rows: N
processes of ``b`` windows train exactly like one process of ``N x b``
(tests/recipes/test_recipes_ddp.py). Lightning starts the other processes by running the script
again, so call ``fit_forecaster`` with ``devices > 1`` from a script.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

import torch.nn.functional as F

from contrastkit.engine import TrainSettings, train
from contrastkit.engine.run_folder import estimator_run_dir, resolve_run_dir, write_estimator_run
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.nn.distributed import GatheredObjective, gather_no_grad
from contrastkit.objectives.forecasting import ForecastContrastive, forecast_contrastive_loss
from contrastkit.core.seeding import seeded
from contrastkit.modalities.timeseries.views import jitter, scale
from contrastkit.engine.processes import GlobalDrawsModule, ShareBatches, check_devices, lightning_strategy

# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ChronologicalSplit:
    """Time indices ``[0, train_end)`` train, ``[train_end, validation_end)`` validation,
    ``[validation_end, length)`` the held-out test tail."""

    train_end: int
    validation_end: int
    length: int


def chronological_split(
    length: int, validation_fraction: float = 0.2, test_fraction: float = 0.2
) -> ChronologicalSplit:
    """Cut ``length`` time steps by time: the last ``test_fraction`` is the test tail, the
    ``validation_fraction`` before it the validation part, the rest the training part."""
    if not (
        0 < validation_fraction < 1
        and 0 < test_fraction < 1
        and validation_fraction + test_fraction < 1
    ):
        raise ConfigError(
            f"validation_fraction ({validation_fraction}) and test_fraction ({test_fraction}) must each be in "
            "(0, 1) and sum to less than 1 so that a training part remains."
        )
    validation_end = length - round(length * test_fraction)
    train_end = validation_end - round(length * validation_fraction)
    return ChronologicalSplit(train_end, validation_end, length)


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / std`` with ``mean`` and ``std`` of the training part only."""

    mean: float
    std: float

    @classmethod
    def fit(cls, train_values: np.ndarray) -> Standardizer:
        std = float(np.std(train_values))
        return cls(float(np.mean(train_values)), std if std > 0 else 1.0)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std


def sliding_windows(
    series: np.ndarray, input_length: int, horizon: int, target_starts: range
) -> tuple[Tensor, Tensor]:
    """Inputs ``series[t - L : t]`` (N, L) and targets ``series[t : t + H]`` (N, H), float32,
    for every target start ``t`` in ``target_starts`` (L = ``input_length``, H = ``horizon``)."""
    starts = np.asarray(target_starts, dtype=np.int64)
    if len(starts) == 0:
        raise DataError(
            f"No forecasting window fits: input_length={input_length} + horizon={horizon} is longer than the "
            "part of the series it is cut from; use shorter windows or a longer series."
        )
    if starts[0] < input_length or starts[-1] + horizon > len(series):
        raise DataError(
            f"Window target starts {starts[0]}..{starts[-1]} do not fit a series of {len(series)} steps."
        )
    inputs = np.stack([series[t - input_length : t] for t in starts])
    targets = np.stack([series[t : t + horizon] for t in starts])
    return torch.as_tensor(inputs, dtype=torch.float32), torch.as_tensor(
        targets, dtype=torch.float32
    )


@dataclass(frozen=True)
class ForecastData:
    """Standardised windows of the three chronological parts; each is ``(inputs, targets)``."""

    train: tuple[Tensor, Tensor]
    validation: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    split: ChronologicalSplit
    standardizer: Standardizer


def prepare_forecast_data(
    series: np.ndarray,
    input_length: int,
    horizon: int,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> ForecastData:
    """Split ``series`` (T,) by time, standardise with training statistics, cut windows.

    Training windows: targets end at or before ``train_end`` (nothing after it is read).
    Validation windows: targets in ``[train_end, validation_end)``. Test windows: targets in
    ``[validation_end, T)``. All with stride 1.
    """
    values = np.asarray(series, dtype=np.float64)
    if values.ndim != 1 or not np.isfinite(values).all():
        raise DataError(
            f"prepare_forecast_data needs one finite univariate series of shape (T,), got shape {values.shape}"
            f"{' with NaN/inf values' if values.ndim == 1 else ''}; fill or drop missing values first."
        )
    if input_length < 1 or horizon < 1:
        raise ConfigError(
            f"input_length and horizon must be >= 1, got {input_length} and {horizon}."
        )
    split = chronological_split(len(values), validation_fraction, test_fraction)
    standardizer = Standardizer.fit(values[: split.train_end])
    scaled = standardizer.transform(values)
    window = (input_length, horizon)
    return ForecastData(
        train=sliding_windows(
            scaled[: split.train_end],
            *window,
            range(input_length, split.train_end - horizon + 1),
        ),
        validation=sliding_windows(
            scaled, *window, range(split.train_end, split.validation_end - horizon + 1)
        ),
        test=sliding_windows(
            scaled, *window, range(split.validation_end, split.length - horizon + 1)
        ),
        split=split,
        standardizer=standardizer,
    )


# --------------------------------------------------------------------------- model


class GlobalBatchShare:
    """Which rows of the global batch this process holds: ``rank`` x the local batch onwards, of
    ``world_size`` equal shares (one process: the whole batch)."""

    def __init__(self) -> None:
        self.rank, self.world_size = 0, 1

    def draw_rows(self, like: Tensor, draw) -> Tensor:
        """``draw(shape)`` for the global batch (``like``'s shape with ``world_size`` x its rows),
        then this process's rows: a row's draw does not depend on how the batch is split."""
        rows = like.shape[0]
        drawn = draw((rows * self.world_size, *like.shape[1:]))
        return drawn[rows * self.rank : rows * (self.rank + 1)]


def rowwise_dropout(x: Tensor, p: float, share: GlobalBatchShare) -> Tensor:
    """Inverted dropout of ``x`` (rows = samples) whose mask is drawn from torch's generator for
    the global batch (:class:`GlobalBatchShare`), this process keeping its rows."""
    if p == 0:
        return x
    keep = share.draw_rows(x, lambda shape: x.new_empty(shape).bernoulli_(1 - p))
    return x * keep / (1 - p)


class RowwiseDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose mask is drawn for the global batch (:func:`rowwise_dropout`)."""

    def __init__(self, p: float, share: GlobalBatchShare):
        super().__init__(p)
        self.share = share

    def forward(self, x: Tensor) -> Tensor:
        return rowwise_dropout(x, self.p, self.share) if self.training else x


class RowwiseSelfAttention(nn.MultiheadAttention):
    """Batch-first self-attention whose attention-weight dropout is drawn for the global batch
    (:func:`rowwise_dropout`) in training; the same parameters (and state-dict keys) as
    :class:`torch.nn.MultiheadAttention`, whose computation it uses otherwise."""

    def __init__(self, attention: nn.MultiheadAttention, share: GlobalBatchShare):
        with torch.random.fork_rng(devices=[]):  # the model's initialisation draws stay as they were
            super().__init__(attention.embed_dim, attention.num_heads, dropout=attention.dropout,
                             batch_first=attention.batch_first)
        self.load_state_dict(attention.state_dict())
        self.share = share

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not (self.training and self.dropout > 0) or key_padding_mask is not None or attn_mask is not None:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        batch, length, width = query.shape
        heads = self.num_heads

        def split(t: Tensor) -> Tensor:  # (B, P, d) -> (B, heads, P, d / heads)
            return t.unflatten(-1, (heads, width // heads)).transpose(1, 2)

        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(key, w_k, b_k)), split(F.linear(value, w_v, b_v))
        weights = torch.softmax(q @ k.transpose(-2, -1) / (width // heads) ** 0.5, dim=-1)
        weights = rowwise_dropout(weights, self.dropout, self.share)
        out = self.out_proj((weights @ v).transpose(1, 2).flatten(2))
        return out, (weights.mean(dim=1) if average_attn_weights else weights) if need_weights else None


class PatchTransformerForecaster(nn.Module):
    """A small PatchTST-style forecaster: patches -> Transformer encoder -> linear head.

    The input window (B, L) is cut into ``P = L // patch_length`` non-overlapping patches
    (Nie et al., ICLR 2023), each embedded linearly plus a learned position embedding, and
    passed through ``layers`` pre-norm Transformer encoder layers, giving tokens (B, P, d).
    ``forward`` flattens them into a linear map to the H-step forecast; ``represent`` is their
    mean over patches (B, d), the window representation the contrastive term acts on, and
    ``project`` the projection head's output on it (SimCLR-style, Chen et al. 2020).

    The Transformer's dropouts draw their masks for the global batch of the step
    (:class:`RowwiseDropout`, :class:`RowwiseSelfAttention`; ``share`` says which rows this process
    holds), so that a window's dropout does not depend on how a batch is split across processes.
    """

    def __init__(
        self,
        input_length: int,
        horizon: int,
        patch_length: int = 8,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
        projection_dim: int = 32,
    ):
        super().__init__()
        if input_length % patch_length:
            raise ConfigError(
                f"input_length ({input_length}) must be a multiple of patch_length ({patch_length}) so that the "
                "window splits into whole patches."
            )
        self.patch_length = patch_length
        patches = input_length // patch_length
        self.patch_embedding = nn.Linear(patch_length, d_model)
        self.position_embedding = nn.Parameter(torch.randn(1, patches, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=2 * d_model,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.share = GlobalBatchShare()
        for block in self.encoder.layers:
            block.self_attn = RowwiseSelfAttention(block.self_attn, self.share)
            for name in ("dropout", "dropout1", "dropout2"):
                setattr(block, name, RowwiseDropout(dropout, self.share))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(patches * d_model, horizon)
        self.projector = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, projection_dim)
        )

    def tokens(self, x: Tensor) -> Tensor:
        """(B, L) -> (B, P, d)."""
        patches = x.unflatten(1, (-1, self.patch_length))
        return self.norm(
            self.encoder(self.patch_embedding(patches) + self.position_embedding)
        )

    def represent(self, x: Tensor) -> Tensor:
        """(B, L) -> (B, d): the mean of the patch tokens."""
        return self.tokens(x).mean(dim=1)

    def project(self, x: Tensor) -> Tensor:
        """(B, L) -> (B, projection_dim): the space of the contrastive term."""
        return self.projector(self.represent(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, L) -> (B, H) forecast."""
        return self.head(self.tokens(x).flatten(1))


# --------------------------------------------------------------------------- loss


def two_augmented_views(
    x: Tensor,
    jitter_sigma: float,
    scale_sigma: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Two independent draws of ``scale(jitter(x))`` of windows (B, L) (TS-TCC's weak transforms)."""
    series = x[:, None, :]  # the views work on (B, C, T)

    def view() -> Tensor:
        return scale(jitter(series, jitter_sigma, generator), scale_sigma, generator)[
            :, 0
        ]

    return view(), view()


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class ForecasterConfig:
    """Everything that decides a training run; two runs with equal configs train identically.

    ``steps`` optimiser steps of ``batch_size`` windows (AdamW, ``lr``, weight decay on every
    parameter, cosine decay to 0), the same for every ``contrastive_weight`` so that variants get
    the same budget. Epochs visit the training windows in an order drawn from (``seed``, epoch);
    the incomplete last batch of an epoch is dropped.
    """

    patch_length: int = 8
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    projection_dim: int = 32
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    contrastive_weight: float = 0.0
    temperature: float = 0.2
    jitter_sigma: float = 0.1
    scale_sigma: float = 0.1
    seed: int = 0


class Windows(torch.utils.data.Dataset):
    """Training windows; one ``__getitems__`` call returns a batch ``{"inputs", "targets", "index"}``."""

    def __init__(self, inputs: Tensor, targets: Tensor):
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitems__(self, positions: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(positions)
        return {"inputs": self.inputs[index], "targets": self.targets[index], "index": index}


class ForecastingTraining(nn.Module):
    """The objective the engine trains: the catalogue's ``forecast_contrastive`` of ``model`` on a
    batch of windows (:class:`~contrastkit.objectives.forecasting.ForecastContrastive`, gathered
    across processes by :class:`~contrastkit.nn.distributed.GatheredObjective`), with the two
    augmented views when ``contrastive_weight > 0``.

    The views' noise and the dropout masks are drawn from torch's global generator, reseeded by
    :meth:`begin_step` with the same seed on every process; the draws are made for the global
    batch (``world_size`` x this process's windows) and this process keeps its rows ``rank *
    windows`` onwards, so a window's draws do not depend on how the global batch is split.
    Without :meth:`begin_step` the generator is the engine's, reseeded before every step."""

    def __init__(self, model: PatchTransformerForecaster, config: ForecasterConfig):
        super().__init__()
        self.model = model
        self.config = config
        self.objective = GatheredObjective(ForecastContrastive(config.contrastive_weight, config.temperature))
        self.step_seed: int | None = None

    def begin_step(self, seed: int, rank: int, world_size: int) -> None:
        """The next step's draws: from ``seed`` (the same on every process), for ``world_size``
        processes' batches, of which this process (``rank``) holds one."""
        self.step_seed = seed
        self.model.share.rank, self.model.share.world_size = rank, world_size

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        x, y = batch["inputs"], batch["targets"]
        if self.step_seed is not None:
            torch.manual_seed(self.step_seed)
        z_a = z_b = None
        if c.contrastive_weight > 0:
            # The views of the global batch (other processes' rows zero here), then this process's rows.
            share = self.model.share
            whole = x.new_zeros((x.shape[0] * share.world_size, *x.shape[1:]))
            mine = slice(x.shape[0] * share.rank, x.shape[0] * (share.rank + 1))
            whole[mine] = x
            view_a, view_b = two_augmented_views(whole, c.jitter_sigma, c.scale_sigma)
            z_a, z_b = self.model.project(view_a[mine]), self.model.project(view_b[mine])
        forecast = self.model(x)
        if z_a is None:  # no views: the objective (weight 0) reads none; any rows do
            z_a = z_b = forecast.detach()
        loss = self.objective(z_a, z_b, forecast=forecast, target=y)
        with torch.no_grad():  # the parts, of the global batch
            _, mse, contrastive = forecast_contrastive_loss(
                *(gather_no_grad(t) for t in (forecast, y, z_a, z_b)), c.contrastive_weight, c.temperature)
        return loss, {"mse": mse.item(), "contrastive": contrastive.item()}


def fit_forecaster(
    data: ForecastData,
    config: ForecasterConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every_steps: int | None = None,
    max_steps: int | None = None,
    devices: int = 1,
    strategy: str = "auto",
) -> PatchTransformerForecaster:
    """Train a :class:`PatchTransformerForecaster` on ``data.train`` only; returns it in eval mode.

    Nothing of ``data.validation`` or ``data.test`` is read, so the model depends only on the
    training part of the series (and the config).

    ``out``: keep the run folder there (config.yaml, checkpoints/last.ckpt written every epoch
    and every ``checkpoint_every_steps`` optimiser steps, metrics.csv with the loss and its MSE and
    contrastive parts, summary.json, model.safetensors); an existing run is never overwritten.
    ``resume=True`` continues the run in ``out`` (same data and config) to the weights an
    uninterrupted run reaches. ``max_steps`` shortens the run to at most that many steps (the
    cosine then decays over the shorter run).

    ``devices``, ``strategy``: Lightning's (``devices=2, strategy="ddp"``: two processes, each
    training on ``config.batch_size`` windows of every global batch of ``2 x batch_size``, the
    loss computed on the global batch and every draw made for it; the module docstring). Lightning
    starts the other processes by running the script again, so call it from a script. The run
    folder's summary and weights are written by the first process; every process returns the
    trained model.
    """
    check_devices("fit_forecaster", devices)
    inputs, targets = data.train
    if config.contrastive_weight < 0:
        raise ConfigError(
            f"contrastive_weight must be >= 0, got {config.contrastive_weight}."
        )
    if config.contrastive_weight > 0 and min(config.batch_size, len(inputs)) < 2:
        raise ConfigError(
            "The contrastive term needs batches of at least 2 windows; raise batch_size."
        )
    if resume and out is None:
        raise ConfigError("fit_forecaster: resume=True needs out=, the run folder to continue.")
    run_dir = resolve_run_dir(out, resume, "forecaster") if out is not None else None
    with seeded(config.seed):  # initialisation; the engine then reseeds per step, and the caller's state is kept
        model = PatchTransformerForecaster(
            inputs.shape[1],
            targets.shape[1],
            config.patch_length,
            config.d_model,
            config.heads,
            config.layers,
            config.dropout,
            config.projection_dim,
        )
        steps = config.steps if max_steps is None else min(config.steps, max_steps)
        if steps == 0:
            return model.eval()
        batch_size = min(config.batch_size, max(1, len(inputs) // devices))  # per process
        settings = TrainSettings(
            optimizer="adamw",
            lr=config.lr,
            weight_decay=config.weight_decay,
            decay_everything=True,  # torch's AdamW over model.parameters(), as before
            schedule="warmup-cosine",  # no warm-up: cosine from lr to 0 over the steps
            max_steps=steps,
            seed=config.seed,
            batch_size=batch_size,
            checkpoint_every_steps=checkpoint_every_steps,
            devices=devices,
            # weight 0: the projection head takes no part in the loss
            strategy=lightning_strategy(strategy, find_unused_parameters=config.contrastive_weight == 0),
        )
        description = {
            "estimator": "fit_forecaster",
            "config": dataclasses.asdict(config),
            "max_steps": max_steps,
            "train_windows": len(inputs),
            "input_length": int(inputs.shape[1]),
            "horizon": int(targets.shape[1]),
        }
        with estimator_run_dir(run_dir, "forecaster", description) as (folder, kept):
            method = ForecastingTraining(model, config)
            result = train(method, ShareBatches(Windows(inputs, targets), batch_size, config.seed), settings,
                           folder, resume=resume, description=description,
                           module=GlobalDrawsModule(method, settings, description))
            if kept and result.is_global_zero:
                world_size = result.trainer.world_size
                write_estimator_run(folder, result, {
                    "method": "fit_forecaster", "steps_per_epoch": len(inputs) // (batch_size * world_size),
                    "world_size": world_size, "global_batch_size": batch_size * world_size,
                    "final_loss": float(result.trainer.callback_metrics.get("train/loss", float("nan"))),
                }, model.state_dict())
    return model.eval()


@torch.no_grad()
def evaluate_forecaster(
    model: PatchTransformerForecaster,
    inputs: Tensor,
    targets: Tensor,
    batch_size: int = 1024,
) -> dict[str, float]:
    """MSE and MAE over every window and step (on the standardised scale, as is usual)."""
    model.eval()
    forecasts = torch.cat(
        [model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    )
    errors = forecasts - targets
    return {"mse": float(errors.pow(2).mean()), "mae": float(errors.abs().mean())}
