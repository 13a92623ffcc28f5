"""``SCARF`` and ``CLAN``: contrastive representations of tabular rows in three lines.

    model = SCARF(input_dims=x_train.shape[1], seed=0)
    model.fit(x_train)                       # x: (N, D) float, e.g. TabularEncoder output
    embeddings = model.encode(x_test)        # (N, hidden_dims)

    detector = CLAN(input_dims=x_benign.shape[1], seed=0)
    detector.fit(x_benign)                   # benign rows only
    scores = detector.score(x_test)          # larger = more anomalous

Both use an MLP encoder on rows already encoded to numbers (:class:`contrastkit.sources.tabular.
TabularEncoder`) and SCARF corruption (:mod:`contrastkit.views.tabular`) as the augmentation.

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
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from contrastkit import objectives
from contrastkit.errors import ConfigError, DataError
from contrastkit.heads import ProjectionHead
from contrastkit.objectives.augmented_negatives import benign_distance_score
from contrastkit.seeding import seeded
from contrastkit.views.tabular import SCARFCorruption


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


class TabularContrastive(abc.ABC):
    """Shared training loop, encoding, scoring and few-label head of :class:`SCARF` and :class:`CLAN`.

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
        self.corruption_rate = corruption_rate
        self.lr = lr
        self.batch_size = batch_size
        self.feature_groups = feature_groups
        self.device = torch.device(device)
        self._seeds = np.random.default_rng(seed) if seed is not None else None
        with self._random_state():
            self.encoder = mlp_encoder(input_dims, hidden_dims, depth).to(self.device)
            self.projector: nn.Module | None = self._build_projector(hidden_dims)
        self.reference: torch.Tensor | None = None  # training rows: marginals and benign set
        self.classifier: LogisticRegression | None = None
        self.n_epochs = 0

    def _build_projector(self, hidden_dims: int) -> nn.Module | None:
        return None

    @abc.abstractmethod
    def _loss(self, batch: torch.Tensor, corrupt: SCARFCorruption) -> torch.Tensor:
        """The method's training loss on one batch of encoded rows."""

    # ------------------------------------------------------------------ training

    def fit(self, x: Any, n_epochs: int = 20, verbose: bool = False) -> list[float]:
        """Train on rows ``x`` (N, D) for ``n_epochs`` passes; returns the mean loss per epoch.

        The rows are also kept as the corruption marginals and (for scoring) the reference set.
        """
        if n_epochs < 0:
            raise ConfigError(f"{type(self).__name__}.fit: n_epochs must be >= 0, got {n_epochs}.")
        data = self._as_rows(x, "fit")
        if data.shape[0] < 2:
            raise DataError(f"{type(self).__name__}.fit needs at least 2 rows, got {data.shape[0]}.")
        self.reference = data
        corrupt = SCARFCorruption(data, self.corruption_rate, self.feature_groups).to(self.device)
        parameters = list(self.encoder.parameters()) + (list(self.projector.parameters()) if self.projector else [])
        optimizer = torch.optim.Adam(parameters, lr=self.lr)
        batch_size = min(self.batch_size, data.shape[0])
        self._train_mode(True)
        losses: list[float] = []
        with self._random_state():
            for _ in range(n_epochs):
                epoch = []
                order = torch.randperm(data.shape[0])
                # Drop the incomplete last batch: a batch of 1 has no contrastive pair.
                for start in range(0, data.shape[0] - batch_size + 1, batch_size):
                    loss = self._loss(data[order[start : start + batch_size]].to(self.device), corrupt)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    epoch.append(float(loss.detach()))
                losses.append(float(np.mean(epoch)))
                self.n_epochs += 1
                if verbose:
                    print(f"{type(self).__name__} epoch {self.n_epochs - 1}: loss={losses[-1]:.5f}")
        self._train_mode(False)
        return losses

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode(self, x: Any, batch_size: int = 4096) -> np.ndarray:
        """Encoder output (N, hidden_dims) of rows ``x`` (N, D)."""
        data = self._as_rows(x, "encode")
        self._train_mode(False)
        out = [self.encoder(data[i : i + batch_size].to(self.device)).cpu() for i in range(0, data.shape[0], batch_size)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def score(self, x: Any, k: int = 1, reference: Any | None = None) -> np.ndarray:
        """Anomaly score (N,): mean cosine distance ``1 - cos`` of each row's embedding to its
        ``k`` nearest embeddings of ``reference`` (default: the rows given to :meth:`fit`)."""
        if reference is None:
            if self.reference is None:
                raise ConfigError(f"{type(self).__name__}.score needs fit() first, or a reference set.")
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

    @contextlib.contextmanager
    def _random_state(self) -> Iterator[None]:
        seed = None if self._seeds is None else int(self._seeds.integers(2**62))
        with seeded(seed, self.device):
            yield


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
        super().__init__(input_dims, **kwargs)
        self.objective = objectives.get("infonce", temperature=temperature)

    def _build_projector(self, hidden_dims: int) -> nn.Module:
        return ProjectionHead(hidden_dims, hidden_dims, self.output_dims, num_layers=2, batch_norm=False).to(self.device)

    def _loss(self, batch: torch.Tensor, corrupt: SCARFCorruption) -> torch.Tensor:
        first = corrupt(batch) if self.corrupt_both else batch
        second = corrupt(batch)
        return self.objective(self.projector(self.encoder(first)), self.projector(self.encoder(second)))


class CLAN(TabularContrastive):
    """Contrastive Learning using Augmented Negatives (Wilkie et al., IEEE CSR 2025), benign rows only.

    ``loss = augmented_negatives(f(x), f(corrupt(x)))``: benign embeddings of a batch attract each
    other, their SCARF-corrupted copies are the negatives. :meth:`score` is the distance to the
    benign training embeddings. Args beyond :class:`TabularContrastive`'s: ``temperature``,
    ``form`` (``"likelihood"`` or the authors' ``"margin"``), passed to the objective.
    """

    def __init__(self, input_dims: int, *, temperature: float = 0.1, form: str = "likelihood", **kwargs: Any):
        super().__init__(input_dims, **kwargs)
        self.objective = objectives.get("augmented_negatives", temperature=temperature, form=form)

    def _loss(self, batch: torch.Tensor, corrupt: SCARFCorruption) -> torch.Tensor:
        return self.objective(self.encoder(batch), self.encoder(corrupt(batch)))


__all__ = ["CLAN", "SCARF", "TabularContrastive", "mlp_encoder"]
