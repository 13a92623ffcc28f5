"""``SCARF`` and ``CLAN``: contrastive representations of tabular rows in three lines.

    model = SCARF(input_dims=x_train.shape[1], seed=0)
    model.fit(x_train)                       # x: (N, D) float, e.g. TabularEncoder output
    embeddings = model.encode(x_test)        # (N, hidden_dims)

    detector = CLAN(input_dims=x_benign.shape[1], seed=0)
    detector.fit(x_benign)                   # benign rows only
    scores = detector.score(x_test)          # larger = more anomalous

Both use an MLP encoder on rows already encoded to numbers (:class:`contrastkit.modalities.tabular.sources.
TabularEncoder`) and SCARF corruption (:mod:`contrastkit.modalities.tabular.views`) as the augmentation.

- SCARF (Bahri et al., ICLR 2022): SimCLR over corrupted views. Two views of each row go through
  the encoder ``f`` and a projection head ``g``; the loss is the catalogue's ``infonce``
  (NT-Xent). The paper corrupts only the second view (the anchor is the clean row); the default
  here, ``corrupt_both=True``, corrupts both independently, as SimCLR does with its two views.
- CLAN (Wilkie et al., IEEE CSR 2025): trained on benign rows only; the other benign rows of the
  batch are positives and corrupted copies are negatives (catalogue ``augmented_negatives``,
  applied to the encoder output directly, so the space that the loss shapes is the space that
  is scored). Anomaly score: cosine distance to the nearest benign training embeddings
  (:func:`contrastkit.objectives.augmented_negatives.benign_distance_score`).

Few-label fine-tuning for multi-class detection (:meth:`TabularContrastive.fit_classifier`): a
linear (multinomial logistic) head on the frozen encoder, trained on a handful of labelled rows.

Training runs on the engine (:func:`contrastkit.engine.train`): the encoder, head and corruption
form a :class:`TabularTraining` module whose ``training_loss`` is the method's loss. ``fit(x,
out=DIR)`` keeps the run folder (config.yaml, checkpoints/last.ckpt, metrics.csv, summary.json,
model.safetensors, reference_rows.safetensors) and ``fit(x, out=DIR, resume=True)`` continues a
killed run to the weights an uninterrupted one reaches; without ``out`` the run trains in a
temporary folder.

Processes: ``fit(x, devices=N, strategy="ddp")`` (``contrastkit fit --devices N --strategy ddp``)
trains data-parallel. Each process takes its ``batch_size`` rows of every global batch of
``N x batch_size`` (:class:`~contrastkit.engine.EpochShuffleSampler` with Lightning's rank and
world size); the loss gathers the embeddings of all processes with gradient
(:class:`~contrastkit.nn.distributed.GatheredObjective`: SCARF's negatives, CLAN's benign positives
and corrupted negatives come from the whole global batch) and DDP averages the gradients. The
corruption's random draws (which features, which donor rows) are made for the whole global batch
on every process, from a generator seeded by (fit seed, step) alone, and each process keeps its
own rows: N processes of ``b`` rows train exactly like one process of ``N x b`` rows
(tests/modalities/tabular/test_tabular_ddp.py). Lightning starts the other processes by running
the command again, so call ``fit`` with ``devices > 1`` from a script (and with ``seed=``).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.engine import TrainSettings, train
from contrastkit.engine.module import CHECKPOINT_KEY
from contrastkit.engine.processes import GlobalDrawsModule, ShareBatches, lightning_strategy
from contrastkit.engine.run_folder import CHECKPOINT, estimator_run_dir, resolve_run_dir, write_estimator_run
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.core.safe_loading import START_AGAIN, read_torch_file
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.nn.heads import ProjectionHead
from contrastkit.objectives.augmented_negatives import benign_distance_score
from contrastkit.core.seeding import seeded
from contrastkit.modalities.tabular.run_folder import write_reference_rows
from contrastkit.modalities.tabular.sources import Table, TabularEncoder
from contrastkit.modalities.tabular.views import SCARFCorruption


def mlp_encoder(input_dims: int, hidden_dims: int = 256, depth: int = 4) -> nn.Sequential:
    """``depth`` layers ``Linear -> ReLU`` of width ``hidden_dims`` (SCARF's encoder: 4 x 256)."""
    if depth < 1 or hidden_dims < 1 or input_dims < 1:
        raise ConfigError(
            f"mlp_encoder: input_dims, hidden_dims and depth must be >= 1, got {input_dims}, {hidden_dims}, {depth}."
        )
    layers: list[nn.Module] = []
    for layer in range(depth):
        layers += [nn.Linear(input_dims if layer == 0 else hidden_dims, hidden_dims), nn.ReLU()]
    return nn.Sequential(*layers)


class Rows(torch.utils.data.Dataset):
    """Encoded rows (N, D); one ``__getitems__`` call returns a batch ``{"rows", "index"}``."""

    def __init__(self, rows: Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, positions: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(positions)
        return {"rows": self.rows[index], "index": index}


class TabularTraining(nn.Module):
    """What the engine trains for SCARF and CLAN: the estimator's encoder and projection head (the
    same modules, so training updates the estimator), the corruption view, and the method's loss
    ``loss(rows, corrupt)``, ``corrupt(rows)`` returning corrupted rows.

    Everything random in a step (which features, which donor rows) is drawn from one generator
    seeded by :meth:`begin_step` with the same seed on every process; the draws are made for the
    global batch (``world_size`` x this process's rows) and this process keeps its rows
    ``rank * rows`` onwards, so a row's corruption does not depend on how the global batch is
    split. Without :meth:`begin_step`, the draws come from torch's global generator."""

    def __init__(self, encoder: nn.Module, projector: nn.Module | None, corruption: SCARFCorruption,
                 loss: Callable[[Tensor, Callable[[Tensor], Tensor]], Tensor]):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.corruption = corruption
        self.loss = loss
        self.step_seed: int | None = None
        self.rank, self.world_size = 0, 1

    def begin_step(self, seed: int, rank: int, world_size: int) -> None:
        """The next step's draws: from ``seed`` (the same on every process), for ``world_size``
        processes' batches, of which this process (``rank``) holds one."""
        self.step_seed, self.rank, self.world_size = seed, rank, world_size

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        rows = batch["rows"]
        if self.step_seed is None:
            return self.loss(rows, self.corruption), {}
        generator = torch.Generator(rows.device).manual_seed(self.step_seed)
        # Every process holds as many rows (the sampler cuts equal shares of each global batch).
        share, world_size, rank = rows.shape[0], self.world_size, self.rank

        def corrupt(x: Tensor) -> Tensor:
            return self.corruption(x, generator, batch_rows=share * world_size, first_row=share * rank)

        return self.loss(rows, corrupt), {}


class EpochLosses(L.Callback):
    """The mean training loss of every epoch, what ``fit`` returns. Saved in each checkpoint (the
    epochs done and the current epoch's losses so far), so a resumed fit returns the whole run's."""

    def __init__(self, name: str, verbose: bool):
        self.name = name
        self.verbose = verbose
        self.means: list[float] = []
        self.current: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if outputs is not None:  # None: a batch skipped for a non-finite loss
            self.current.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, module) -> None:
        self.means.append(float(np.mean(self.current)) if self.current else float("nan"))
        self.current = []
        if self.verbose:
            print(f"{self.name} epoch {len(self.means) - 1}: loss={self.means[-1]:.5f}")

    def state_dict(self) -> dict[str, list[float]]:
        return {"means": list(self.means), "current": list(self.current)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.means, self.current = list(state["means"]), list(state["current"])


class TabularContrastive(abc.ABC):
    """Training on the engine, encoding, scoring and few-label head of :class:`SCARF` and :class:`CLAN`.

    Subclasses build ``self.objective`` and the optional ``self.projector`` and implement
    :meth:`_loss` (one batch of clean rows -> scalar loss).
    """

    def __init__(
        self,
        input_dims: int,
        hidden_dims: int = 256,
        depth: int = 4,
        corruption_rate: float = 0.6,
        lr: float = 1e-3,
        batch_size: int = 256,
        feature_groups: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ):
        if batch_size < 2:
            raise ConfigError(f"{type(self).__name__}: batch_size must be >= 2 (contrastive pairs), got {batch_size}.")
        if not lr > 0:
            raise ConfigError(f"{type(self).__name__}: lr must be positive, got {lr}.")
        self.input_dims = input_dims
        self.hidden_dims = hidden_dims
        self.depth = depth
        self.corruption_rate = corruption_rate
        self.lr = lr
        self.batch_size = batch_size
        self.feature_groups = feature_groups
        self.device = torch.device(device)
        self.seed = seed
        self._seeds = np.random.default_rng(seed) if seed is not None else None
        with seeded(self._next_seed(), self.device):
            self.encoder = mlp_encoder(input_dims, hidden_dims, depth).to(self.device)
            self.projector: nn.Module | None = self._build_projector(hidden_dims)
        self.reference: torch.Tensor | None = None  # training rows: marginals and benign set
        self.classifier: LogisticRegression | None = None
        # The table -> rows encoding of a run reloaded from its folder (contrastkit.load); None otherwise.
        self.feature_encoder: TabularEncoder | None = None
        self.n_epochs = 0

    def _build_projector(self, hidden_dims: int) -> nn.Module | None:
        return None

    @abc.abstractmethod
    def _loss(self, batch: torch.Tensor, corrupt: Callable[[Tensor], Tensor]) -> torch.Tensor:
        """The method's training loss on one batch of encoded rows (``corrupt(rows)``: corrupted
        copies); under several processes the loss of the global batch."""

    # ------------------------------------------------------------------ training

    def fit(self, x: Any, n_epochs: int = 20, verbose: bool = False, *, out: str | os.PathLike | None = None,
            resume: bool = False, checkpoint_every_steps: int | None = None,
            max_steps: int | None = None, devices: int = 1, strategy: str = "auto") -> list[float]:
        """Train on rows ``x`` (N, D) for ``n_epochs`` passes; returns the mean loss per epoch.

        Each epoch visits the rows in an order drawn from (the fit's seed, epoch) in batches of
        ``batch_size``; the incomplete last batch is dropped (a batch of 1 has no contrastive
        pair). Adam at ``lr``, constant. The rows are also kept as the corruption marginals and
        (for scoring) the reference set.

        ``out``: keep the run folder there (config.yaml, checkpoints/last.ckpt written every epoch
        and every ``checkpoint_every_steps`` optimiser steps, metrics.csv, summary.json, the
        trained weights in model.safetensors and the rows ``x`` in reference_rows.safetensors, which
        a reloaded estimator's :meth:`score` compares with); an existing run is never overwritten.
        ``resume=True`` continues the run in ``out`` from its last checkpoint (pass the same rows
        and options) to the state an uninterrupted run reaches, and returns the losses of all its
        epochs. ``max_steps`` stops the run after that many optimiser steps; the epoch it cuts
        short counts in the returned losses.

        ``devices``, ``strategy``: Lightning's (``devices=2, strategy="ddp"``: two processes, each
        training on ``batch_size`` rows of every global batch of ``2 x batch_size``, the loss
        computed on the global batch; the module docstring). Lightning starts the other processes
        by running the script again, so call it from a script, on an estimator built with
        ``seed=`` (every process must draw the same fit seed). The run folder, its summary and
        weights are written by the first process; every process returns the losses and holds the
        trained weights.
        """
        if n_epochs < 0:
            raise ConfigError(f"{type(self).__name__}.fit: n_epochs must be >= 0, got {n_epochs}.")
        if devices < 1:
            raise ConfigError(f"{type(self).__name__}.fit: devices must be >= 1, got {devices}.")
        if devices != 1 and self._seeds is None and not resume:
            raise ConfigError(f"{type(self).__name__}.fit on several devices needs {type(self).__name__}(seed=...): "
                              "every process must draw the same fit seed (the epochs' order and the corruption).")
        data = self._as_rows(x, "fit")
        if data.shape[0] < 2:
            raise DataError(f"{type(self).__name__}.fit needs at least 2 rows, got {data.shape[0]}.")
        self.reference = data
        if n_epochs == 0:
            return []
        name = type(self).__name__
        run_dir = resolve_run_dir(out, resume, name.lower()) if out is not None else None
        if resume and run_dir is None:
            raise ConfigError(f"{name}.fit: resume=True needs out=, the run folder to continue.")
        # A resumed run goes on with its own seed (the epochs' order and every step's draws).
        seed = _run_description(run_dir)["fit_seed"] if resume else self._next_seed()
        if seed is None:
            seed = int(torch.randint(2**62, ()))
        batch_size = min(self.batch_size, max(1, data.shape[0] // devices))  # per process
        corruption = SCARFCorruption(data, self.corruption_rate, self.feature_groups).to(self.device)
        method = TabularTraining(self.encoder, self.projector, corruption, self._loss)
        accelerator, lightning_devices = _accelerator(self.device, devices)
        settings = TrainSettings(optimizer="adam", lr=self.lr, schedule="constant", max_epochs=n_epochs,
                                 max_steps=max_steps, accelerator=accelerator, devices=lightning_devices,
                                 strategy=lightning_strategy(strategy), seed=seed, batch_size=batch_size,
                                 checkpoint_every_steps=checkpoint_every_steps)
        description = {"estimator": name, "options": self._options(), "rows": int(data.shape[0]),
                       "n_epochs": n_epochs, "max_steps": max_steps, "fit_seed": seed}
        losses = EpochLosses(name, verbose)
        with estimator_run_dir(run_dir, name.lower(), description) as (folder, kept):
            with seeded(seed, self.device):  # the engine reseeds torch per step; the caller's state is kept
                module = GlobalDrawsModule(method, settings, description)
                result = train(method, ShareBatches(Rows(data), batch_size, seed), settings, folder, resume=resume,
                               description=description, callbacks=[losses], module=module)
            self.encoder.to(self.device)  # Lightning hands the modules back on the CPU
            if self.projector is not None:
                self.projector.to(self.device)
            if kept and result.is_global_zero:
                world_size = result.trainer.world_size
                write_estimator_run(folder, result, {
                    "method": name, "rows": int(data.shape[0]), "epochs": len(losses.means),
                    "epoch_losses": losses.means, "world_size": world_size,
                    "global_batch_size": batch_size * world_size,
                }, self._state_dict())
                write_reference_rows(folder, data)  # score()'s default reference, for a reloaded estimator
        self.n_epochs += len(losses.means)
        self._train_mode(False)
        return losses.means

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode(self, x: Any, batch_size: int = 4096) -> np.ndarray:
        """Encoder output (N, hidden_dims) of rows ``x`` (N, D)."""
        data = self._as_rows(x, "encode")
        self._train_mode(False)
        out = [self.encoder(data[i : i + batch_size].to(self.device)).cpu() for i in range(0, data.shape[0], batch_size)]
        return torch.cat(out).numpy()

    def encode_table(self, table: Table, batch_size: int = 4096) -> np.ndarray:
        """:meth:`encode` of a table of raw columns, encoded to rows by :attr:`feature_encoder` (the
        scaling the run fitted on its training rows, which a run folder keeps)."""
        if self.feature_encoder is None:
            raise ConfigError(f"{type(self).__name__}.encode_table needs the run's feature encoder: load a run that "
                              f"'contrastkit fit' wrote (contrastkit.load(RUN)), or encode the table with your "
                              f"TabularEncoder and call encode(rows).")
        return self.encode(self.feature_encoder.transform(table), batch_size)

    @torch.no_grad()
    def score(self, x: Any, k: int = 1, reference: Any | None = None) -> np.ndarray:
        """Anomaly score (N,): mean cosine distance ``1 - cos`` of each row's embedding to its
        ``k`` nearest embeddings of ``reference`` (default: the rows given to :meth:`fit`)."""
        if reference is None:
            if self.reference is None:
                raise ConfigError(f"{type(self).__name__}.score compares rows with the rows it was fitted on, which "
                                  "this estimator does not hold (not fitted, or reloaded from a run folder written "
                                  "before runs kept reference_rows.safetensors): pass reference= (the benign "
                                  "training rows, encoded as the run encoded them, e.g. "
                                  "estimator.feature_encoder.transform(table)), or fit() first.")
            reference = self.reference
        train_embeddings = torch.from_numpy(self.encode(reference))
        return benign_distance_score(train_embeddings, torch.from_numpy(self.encode(x)), k=k).numpy()

    def fit_classifier(self, x: Any, y: Any, c: float = 1.0) -> TabularContrastive:
        """Few-label fine-tuning: a multinomial logistic-regression head on the frozen encoder's
        embeddings of the labelled rows ``x`` (n, D), ``y`` (n,) (any hashable labels)."""
        labels = np.asarray(y)
        if len(labels) != len(self._as_rows(x, "fit_classifier")) or len(np.unique(labels)) < 2:
            raise DataError("fit_classifier needs one label per row and at least two classes.")
        self.classifier = LogisticRegression(C=c, max_iter=2000).fit(self.encode(x), labels)
        return self

    def predict(self, x: Any) -> np.ndarray:
        """Class of each row from the head of :meth:`fit_classifier`."""
        if self.classifier is None:
            raise ConfigError(f"{type(self).__name__}.predict needs fit_classifier() first.")
        return self.classifier.predict(self.encode(x))

    # ------------------------------------------------------------------ helpers

    def _train_mode(self, training: bool) -> None:
        self.encoder.train(training)
        if self.projector is not None:
            self.projector.train(training)

    def _as_rows(self, x: Any, method: str) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dims:
            raise DataError(
                f"{type(self).__name__}.{method} expects rows of shape (N, {self.input_dims}), got {x.shape}; "
                "encode the table with the same TabularEncoder used for training."
            )
        if not np.isfinite(x).all():
            raise DataError(f"{type(self).__name__}.{method}: rows contain NaN or infinity.")
        return torch.from_numpy(np.ascontiguousarray(x))

    def _next_seed(self) -> int | None:
        """The next seed of this object's stream (the first initialises, each fit takes one)."""
        return None if self._seeds is None else int(self._seeds.integers(2**62))

    def _options(self) -> dict[str, Any]:
        """The constructor's arguments (config.yaml of a run folder)."""
        groups = None if self.feature_groups is None else np.asarray(self.feature_groups).tolist()
        return {"input_dims": self.input_dims, "hidden_dims": self.hidden_dims, "depth": self.depth,
                "corruption_rate": self.corruption_rate, "lr": self.lr, "batch_size": self.batch_size,
                "feature_groups": groups, "device": str(self.device), "seed": self.seed}

    def _state_dict(self) -> dict[str, Tensor]:
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        if self.projector is not None:
            state.update({f"projector.{k}": v for k, v in self.projector.state_dict().items()})
        return state


class SCARF(TabularContrastive):
    """SimCLR on tabular rows with SCARF corruption (Bahri et al., ICLR 2022).

    ``loss = infonce(g(f(v_1)), g(f(v_2)))`` with ``v_1, v_2`` corruptions of the same rows
    (``v_1`` the clean row when ``corrupt_both=False``, as in the paper). Paper defaults: encoder
    4 x 256 ReLU, 2-layer projection head, corruption rate 0.6, temperature 1.0, Adam 1e-3.

    Args (beyond :class:`TabularContrastive`'s): ``output_dims`` of the projection head,
    ``temperature`` of InfoNCE, ``corrupt_both``.
    """

    def __init__(self, input_dims: int, *, output_dims: int = 128, temperature: float = 1.0,
                 corrupt_both: bool = True, **kwargs: Any):
        self.output_dims = output_dims
        self.corrupt_both = corrupt_both
        self.temperature = temperature
        super().__init__(input_dims, **kwargs)
        self.objective = objectives.get("infonce", temperature=temperature)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "output_dims": self.output_dims, "temperature": self.temperature,
                "corrupt_both": self.corrupt_both}

    def _build_projector(self, hidden_dims: int) -> nn.Module:
        return ProjectionHead(hidden_dims, hidden_dims, self.output_dims, num_layers=2, batch_norm=False).to(self.device)

    def _loss(self, batch: torch.Tensor, corrupt: Callable[[Tensor], Tensor]) -> torch.Tensor:
        first = corrupt(batch) if self.corrupt_both else batch
        second = corrupt(batch)
        # One process: the objective itself; several: on the gathered global batch.
        return GatheredObjective(self.objective)(self.projector(self.encoder(first)),
                                                 self.projector(self.encoder(second)))


class CLAN(TabularContrastive):
    """Contrastive Learning using Augmented Negatives (Wilkie et al., IEEE CSR 2025), benign rows only.

    ``loss = augmented_negatives(f(x), f(corrupt(x)))``: benign embeddings of a batch attract each
    other, their SCARF-corrupted copies are the negatives. :meth:`score` is the distance to the
    benign training embeddings. Args beyond :class:`TabularContrastive`'s: ``temperature``,
    ``form`` (``"likelihood"`` or the authors' ``"margin"``), passed to the objective.
    """

    def __init__(self, input_dims: int, *, temperature: float = 0.1, form: str = "likelihood", **kwargs: Any):
        super().__init__(input_dims, **kwargs)
        self.temperature = temperature
        self.form = form
        self.objective = objectives.get("augmented_negatives", temperature=temperature, form=form)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "temperature": self.temperature, "form": self.form}

    def _loss(self, batch: torch.Tensor, corrupt: Callable[[Tensor], Tensor]) -> torch.Tensor:
        # One process: the objective itself; several: on the gathered global batch.
        return GatheredObjective(self.objective)(self.encoder(batch), self.encoder(corrupt(batch)))


def _run_description(run_dir: Path) -> dict[str, Any]:
    """The description a run folder's checkpoint carries (its fit seed, options and length)."""
    checkpoint = read_torch_file(run_dir / CHECKPOINT, alternative=START_AGAIN)
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise DataError(f"'{run_dir / CHECKPOINT}' was not written by a tabular fit; it cannot be resumed.")
    return checkpoint[CHECKPOINT_KEY]


def _accelerator(device: torch.device, devices: int = 1) -> tuple[str, int | list[int]]:
    """Lightning's (accelerator, devices) for the estimator's torch device and ``devices`` processes."""
    if device.type == "cuda":
        return "gpu", [device.index or 0] if devices == 1 else devices
    return device.type, devices


__all__ = ["CLAN", "SCARF", "TabularContrastive", "TabularTraining", "mlp_encoder"]
