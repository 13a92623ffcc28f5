"""Two-tower retrieval with a self-supervised regulariser on the item tower (Yao et al. 2021).

Yao, Yi, Hong, Chen, Yang et al., "Self-supervised Learning for Large-scale Item
Recommendations", CIKM 2021 (https://arxiv.org/abs/2007.12865). A query tower ``q = f(x_u)``
and an item tower ``v = g(y_i)`` map categorical features to d-dim vectors; retrieval scores
are ``s(u, i) = <q, v> / temperature`` on L2-normalised vectors. Training minimises

    loss = L_main + ssl_weight * L_ssl

* ``L_main``, the in-batch softmax (Yi et al., RecSys 2019; the catalogue's ``in_batch_softmax``,
  :func:`contrastkit.objectives.query_key.in_batch_softmax_loss`): for a batch of B positive
  (query, item) pairs, ``L_main = -1/B sum_i log( exp(s_ii) / sum_j exp(s_ij) )`` where the
  other items of the batch are the negatives. Optional corrections (both used by the paper's
  production model): ``s_ij - log p_j`` with ``p_j`` the probability that item ``j`` appears in
  a batch (the logQ correction of popularity-biased negatives), and masking ``j`` out of row
  ``i`` when item ``j`` is the same item as ``i`` (a duplicate is not a negative).
* ``L_ssl``, on the item tower only: two views of each item of a separate batch drawn
  *uniformly* from the catalogue (the paper's Sec. 3.3: a different, less head-heavy
  distribution for the SSL batch is what makes it help long-tail items), made by masking
  complementary halves of its features — random feature masking (RFM), or correlated feature
  masking (CFM: a random seed feature and the features of highest mutual information with it
  are masked together, so that a masked feature cannot be read off a correlated one). A
  masked feature's embedding is replaced by zeros. ``L_ssl`` is the catalogue's InfoNCE
  (NT-Xent, :func:`contrastkit.objectives.infonce.ntxent_terms`) between the two views'
  embeddings. (The paper's Eq. 3 keeps only cross-view negatives and one direction; NT-Xent
  also uses the other items of the same view as negatives.)

The masks reuse :mod:`contrastkit.modalities.tabular.views` (``random_subset_mask``, the mutual
information and correlated groups); here a *feature* is one categorical input column.

Training runs on the engine (:func:`contrastkit.engine.train`, the objective in
:class:`TwoTowerTraining`); ``fit_two_tower(..., out=DIR)`` keeps the run folder and
``resume=True`` continues a killed run to the weights of an uninterrupted one.

Processes: ``fit_two_tower(..., devices=N, strategy="ddp")`` trains data-parallel. Each process
takes its ``batch_size`` pairs of every global batch of ``N x batch_size``
(:class:`~contrastkit.engine.EpochShuffleSampler` with Lightning's rank and world size) and its
``ssl_batch_size`` items of a global SSL batch of ``N x ssl_batch_size``. Both terms are computed
on the global batches (:class:`~contrastkit.nn.distributed.GatheredObjective`): ``L_main``'s
negatives are the items of every process's pairs (with their item ids and ``log p_j``, so
duplicates are masked and logQ corrected across processes), and ``L_ssl``'s the views of every
process's SSL items. The SSL items and their masks are drawn for the whole global SSL batch on
every process, from torch's generator seeded by (seed, step) alone, and each process keeps its
rows: N processes of ``b`` pairs (and ``s`` SSL items) train exactly like one process of ``N x b``
(and ``N x s``) (tests/recipes/test_recipes_ddp.py). Lightning starts the other processes by
running the script again, so call ``fit_two_tower`` with ``devices > 1`` from a script.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.engine import TrainSettings, train
from contrastkit.engine.run_folder import estimator_run_dir, resolve_run_dir, write_estimator_run
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.objectives.infonce import InfoNCE, ntxent_terms
from contrastkit.objectives.query_key import InBatchSoftmax
from contrastkit.core.seeding import seeded
from contrastkit.modalities.tabular.views import (
    correlated_feature_groups,
    correlated_feature_mask,
    mutual_information_matrix,
    random_subset_mask,
)
from contrastkit.engine.processes import GlobalDrawsModule, ShareBatches, check_devices, lightning_strategy

MASKINGS = ("random", "correlated")

# --------------------------------------------------------------------------- towers


class FeatureTower(nn.Module):
    """Categorical features (B, F) int64 -> (B, output_dim): one embedding table per feature,
    concatenated, then an MLP. ``masked`` (B, F) bool replaces those features' embeddings by 0."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        embedding_dim: int = 16,
        hidden_dim: int = 64,
        output_dim: int = 32,
    ):
        super().__init__()
        self.cardinalities = tuple(int(c) for c in cardinalities)
        self.embeddings = nn.ModuleList(
            nn.Embedding(c, embedding_dim) for c in self.cardinalities
        )
        self.mlp = nn.Sequential(
            nn.Linear(len(self.cardinalities) * embedding_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, features: Tensor, masked: Tensor | None = None) -> Tensor:
        if features.ndim != 2 or features.shape[1] != len(self.embeddings):
            raise DataError(
                f"FeatureTower expects integer features (B, {len(self.embeddings)}), got shape {tuple(features.shape)}."
            )
        columns = torch.stack(
            [table(features[:, f]) for f, table in enumerate(self.embeddings)], dim=1
        )  # (B, F, e)
        if masked is not None:
            columns = columns.masked_fill(masked[:, :, None], 0.0)
        return self.mlp(columns.flatten(1))


class TwoTowerModel(nn.Module):
    """A query tower and an item tower with the same output size."""

    def __init__(
        self,
        query_cardinalities: Sequence[int],
        item_cardinalities: Sequence[int],
        **tower: int,
    ):
        super().__init__()
        self.query_tower = FeatureTower(query_cardinalities, **tower)
        self.item_tower = FeatureTower(item_cardinalities, **tower)


# --------------------------------------------------------------------------- losses


def item_ssl_loss(
    item_tower: nn.Module,
    features: Tensor,
    masks: tuple[Tensor, Tensor],
    temperature: float,
) -> Tensor:
    """InfoNCE (the catalogue's NT-Xent) between the item tower's embeddings of two masked views."""
    first, second = masks
    return ntxent_terms(
        item_tower(features, first), item_tower(features, second), temperature
    ).mean()


# --------------------------------------------------------------------------- masks


def complementary_random_masks(
    batch: int,
    n_features: int,
    mask_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random feature masking (RFM): the first view masks exactly ``round(mask_fraction * F)``
    features of each row, a uniform subset; the second view masks the complement."""
    if not 0 < mask_fraction < 1:
        raise ConfigError(f"mask_fraction must be in (0, 1), got {mask_fraction}.")
    first = random_subset_mask(
        batch, n_features, round(mask_fraction * n_features), generator
    )
    return first, ~first


class CorrelatedMasks:
    """Correlated feature masking (CFM): per row, a uniformly random seed feature and the
    ``round(mask_fraction * F) - 1`` features most dependent on it (on the catalogue's item
    features) are masked in the first view; the complement in the second.

    Dependence is the mutual information ``MI(f_i, f_j)`` of Yao et al., by default normalised
    as ``MI(f_i, f_j) / sqrt(H(f_i) H(f_j))``: an item-id column determines every other feature,
    so its raw MI with each of them equals that feature's entropy ``H(f_j)`` — the maximum — and
    raw MI would pair every seed with the id instead of with its genuinely correlated partner
    (e.g. category with subcategory). ``normalize=False`` uses raw MI as in the paper.
    """

    def __init__(
        self,
        item_features: np.ndarray,
        mask_fraction: float = 0.5,
        normalize: bool = True,
    ):
        if not 0 < mask_fraction < 1:
            raise ConfigError(f"mask_fraction must be in (0, 1), got {mask_fraction}.")
        codes = np.asarray(item_features)
        # Categorical codes must stay codes: enough bins that no column is quantile-binned.
        mi = mutual_information_matrix(codes, n_bins=int(codes.max()) + 1)
        if normalize:
            entropy = np.sqrt(np.clip(np.diag(mi), 1e-12, None))  # MI(f, f) = H(f)
            mi = mi / np.outer(entropy, entropy)
        group_size = max(1, round(mask_fraction * codes.shape[1]))
        self.groups = torch.from_numpy(correlated_feature_groups(mi, group_size))
        self.dependence = mi

    def __call__(
        self, batch: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        first = correlated_feature_mask(self.groups, batch, generator)
        return first, ~first


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TwoTowerConfig:
    """One training run. Variants that differ only in ``ssl_weight`` get the same budget
    (steps, batch size, model). Each step trains on ``batch_size`` positive pairs (epochs over
    the pairs in an order drawn from (``seed``, epoch), the incomplete last batch dropped) and,
    for the SSL term, ``ssl_batch_size`` items drawn uniformly from the catalogue. Adam at
    ``lr``, constant."""

    embedding_dim: int = 16
    hidden_dim: int = 64
    output_dim: int = 32
    steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-3
    temperature: float = 0.1
    logq_correction: bool = True
    ssl_weight: float = 0.0
    ssl_temperature: float = 0.1
    ssl_batch_size: int = 256
    masking: str = "correlated"
    mask_fraction: float = 0.5
    seed: int = 0


class Pairs(torch.utils.data.Dataset):
    """Positive (query, item) pairs; one ``__getitems__`` call returns a batch ``{"pairs", "index"}``."""

    def __init__(self, pairs: Tensor):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitems__(self, positions: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(positions)
        return {"pairs": self.pairs[index], "index": index}


class TwoTowerTraining(nn.Module):
    """The objective the engine trains: ``L_main + ssl_weight * L_ssl`` (module docstring) on a
    batch of pairs, both terms on the global batches (gathered across processes by
    :class:`~contrastkit.nn.distributed.GatheredObjective`). The features and ``log p_j`` are
    buffers that move with the module but are not checkpointed (data, not state).

    The SSL items and masks are drawn from torch's global generator, reseeded by
    :meth:`begin_step` with the same seed on every process; they are drawn for the global SSL
    batch (``world_size`` x ``ssl_batch_size``) and this process keeps its rows ``rank *
    ssl_batch_size`` onwards, so an SSL row's draws do not depend on how the batch is split.
    Without :meth:`begin_step` the generator is the engine's, reseeded before every step."""

    def __init__(
        self,
        model: TwoTowerModel,
        query_features: Tensor,
        item_features: Tensor,
        log_item_probability: Tensor,
        correlated: CorrelatedMasks | None,
        config: TwoTowerConfig,
    ):
        super().__init__()
        self.model = model
        self.register_buffer("query_features", query_features, persistent=False)
        self.register_buffer("item_features", item_features, persistent=False)
        self.register_buffer("log_item_probability", log_item_probability, persistent=False)
        self.correlated = correlated
        self.config = config
        self.main_objective = GatheredObjective(InBatchSoftmax(config.temperature))
        self.ssl_objective = GatheredObjective(InfoNCE(config.ssl_temperature))
        self.step_seed: int | None = None
        self.rank, self.world_size = 0, 1

    def begin_step(self, seed: int, rank: int, world_size: int) -> None:
        """The next step's draws: from ``seed`` (the same on every process), for ``world_size``
        processes' batches, of which this process (``rank``) holds one."""
        self.step_seed, self.rank, self.world_size = seed, rank, world_size

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        if self.step_seed is not None:
            torch.manual_seed(self.step_seed)
        pairs = batch["pairs"]
        items = pairs[:, 1]
        main = self.main_objective(
            self.model.query_tower(self.query_features[pairs[:, 0]]),
            self.model.item_tower(self.item_features[items]),
            item_ids=items,
            log_item_probability=self.log_item_probability[items] if c.logq_correction else None,
        )
        if c.ssl_weight <= 0:
            return main, {"main": main.item()}
        n_items, n_features = self.item_features.shape
        rows = c.ssl_batch_size * self.world_size  # the global SSL batch, drawn on every process
        mine = slice(c.ssl_batch_size * self.rank, c.ssl_batch_size * (self.rank + 1))
        ssl_items = torch.randint(n_items, (rows,), device=items.device)[mine]
        masks = (
            self.correlated(rows)
            if self.correlated is not None
            else complementary_random_masks(rows, n_features, c.mask_fraction)
        )
        masks = (masks[0][mine].to(items.device), masks[1][mine].to(items.device))
        features = self.item_features[ssl_items]
        ssl = self.ssl_objective(self.model.item_tower(features, masks[0]), self.model.item_tower(features, masks[1]))
        return main + c.ssl_weight * ssl, {"main": main.item(), "ssl": ssl.item()}


def fit_two_tower(
    pairs: Tensor,
    query_features: Tensor,
    item_features: Tensor,
    query_cardinalities: Sequence[int],
    item_cardinalities: Sequence[int],
    config: TwoTowerConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every_steps: int | None = None,
    max_steps: int | None = None,
    devices: int = 1,
    strategy: str = "auto",
) -> TwoTowerModel:
    """Train on positive ``pairs`` (P, 2) = (query index, item index) rows; returns the model in
    eval mode.

    ``query_features`` (U, Fq) and ``item_features`` (I, Fi) are int64 codes; feature f of a
    tower takes values in ``[0, cardinalities[f])``.

    ``out``: keep the run folder there (config.yaml, checkpoints/last.ckpt written every epoch
    and every ``checkpoint_every_steps`` optimiser steps, metrics.csv with the loss and its main
    and SSL parts, summary.json, model.safetensors); an existing run is never overwritten.
    ``resume=True`` continues the run in ``out`` (same data and config) to the weights an
    uninterrupted run reaches. ``max_steps`` shortens the run to at most that many steps.

    ``devices``, ``strategy``: Lightning's (``devices=2, strategy="ddp"``: two processes, each
    training on ``config.batch_size`` pairs of every global batch of ``2 x batch_size`` and
    ``config.ssl_batch_size`` items of the global SSL batch, the losses computed on the global
    batches; the module docstring). Lightning starts the other processes by running the script
    again, so call it from a script. The run folder's summary and weights are written by the
    first process; every process returns the trained model.
    """
    check_devices("fit_two_tower", devices)
    if config.masking not in MASKINGS:
        raise ConfigError(
            f"Unknown masking '{config.masking}'. Valid maskings: {', '.join(MASKINGS)}."
        )
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) < 2:
        raise DataError(
            f"pairs must be (P, 2) rows of (query index, item index) with P >= 2, got {tuple(pairs.shape)}."
        )
    if resume and out is None:
        raise ConfigError("fit_two_tower: resume=True needs out=, the run folder to continue.")
    run_dir = resolve_run_dir(out, resume, "two-tower") if out is not None else None
    n_items = len(item_features)
    correlated = (
        CorrelatedMasks(item_features.numpy(), config.mask_fraction)
        if config.masking == "correlated"
        else None
    )
    counts = torch.bincount(pairs[:, 1], minlength=n_items).double()
    log_item_probability = (counts / counts.sum()).clamp_min(1e-12).log().float()
    with seeded(config.seed):  # initialisation; the engine then reseeds per step, and the caller's state is kept
        model = TwoTowerModel(
            query_cardinalities,
            item_cardinalities,
            embedding_dim=config.embedding_dim,
            hidden_dim=config.hidden_dim,
            output_dim=config.output_dim,
        )
        steps = config.steps if max_steps is None else min(config.steps, max_steps)
        if steps == 0:
            return model.eval()
        batch_size = min(config.batch_size, max(1, len(pairs) // devices))  # per process
        settings = TrainSettings(
            optimizer="adam",
            lr=config.lr,
            schedule="constant",
            max_steps=steps,
            seed=config.seed,
            batch_size=batch_size,
            checkpoint_every_steps=checkpoint_every_steps,
            devices=devices,
            strategy=lightning_strategy(strategy),
        )
        description = {
            "estimator": "fit_two_tower",
            "config": dataclasses.asdict(config),
            "max_steps": max_steps,
            "pairs": len(pairs),
            "queries": len(query_features),
            "items": n_items,
            "query_cardinalities": [int(c) for c in query_cardinalities],
            "item_cardinalities": [int(c) for c in item_cardinalities],
        }
        method = TwoTowerTraining(
            model, query_features, item_features, log_item_probability, correlated, config
        )
        with estimator_run_dir(run_dir, "two-tower", description) as (folder, kept):
            result = train(method, ShareBatches(Pairs(pairs), batch_size, config.seed), settings, folder,
                           resume=resume, description=description,
                           module=GlobalDrawsModule(method, settings, description))
            if kept and result.is_global_zero:
                world_size = result.trainer.world_size
                write_estimator_run(folder, result, {
                    "method": "fit_two_tower", "steps_per_epoch": len(pairs) // (batch_size * world_size),
                    "world_size": world_size, "global_batch_size": batch_size * world_size,
                    "final_loss": float(result.trainer.callback_metrics.get("train/loss", float("nan"))),
                }, model.state_dict())
    return model.eval()


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def rank_items(
    model: TwoTowerModel,
    query_features: Tensor,
    item_features: Tensor,
    exclude: Tensor | None = None,
    k: int = 50,
) -> Tensor:
    """(Q, k) item indices by decreasing cosine score for each query row; ``exclude`` (Q, I)
    bool removes items (e.g. each user's training items) from its ranking."""
    queries = F.normalize(model.query_tower(query_features), dim=1)
    items = F.normalize(model.item_tower(item_features), dim=1)
    scores = queries @ items.T
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    return scores.topk(min(k, scores.shape[1]), dim=1).indices
