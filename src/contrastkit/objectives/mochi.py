"""MoCHi: InfoNCE with synthetic hard negatives mixed from a queue.

Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus. "Hard Negative Mixing for Contrastive
Learning". NeurIPS 2020. https://arxiv.org/abs/2010.01028

For each query ``q_i`` (rows of ``query``, L2-normalised) with positive key ``k_i`` and a queue of
negatives ``n_1 .. n_K`` (shared by all queries, e.g. a MoCo memory queue):

1. Hardest negatives: ``H_i`` = the ``num_hardest`` queue rows with the largest ``q_i . n``
   (:func:`hardest_negatives`).
2. ``num_mixed`` negative-negative mixes, for ``a ~ U(0, 1)`` and ``n_p, n_q`` drawn uniformly
   from ``H_i``::

       h = normalise(a * n_p + (1 - a) * n_q)

3. ``num_query_mixed`` query-negative mixes, for ``b ~ U(0, max_query_weight)`` (the paper's
   ``b in (0, 0.5)``, so the query never dominates) and ``n_q`` drawn from ``H_i``::

       h' = normalise(b * q_i + (1 - b) * n_q)

   The synthetic points are computed without gradient (they are negatives, not parameters).
4. InfoNCE over the positive, the queue and the synthetic negatives of *this* query::

       loss_i = -log  exp(q_i . k_i / t) / ( exp(q_i . k_i / t) + sum_n exp(q_i . n / t)
                                            + sum_{h in S_i} exp(q_i . h / t) )

The random draws of step 2-3 are made for the whole batch from a ``torch.Generator`` seeded at
construction, so a run is reproducible and every process of a distributed run (which gathers the
global batch and builds the objective with the same seed) draws the same mixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.registry import OBJECTIVES
from contrastkit.objectives.base import (
    ContrastiveObjective,
    LossTerms,
    check_temperature,
    in_float32,
    normalize,
)


def hardest_negatives(query: Tensor, queue: Tensor, num_hardest: int) -> Tensor:
    """Indices (B, N) into ``queue`` of each query's ``N`` most similar negatives, most similar
    first; ``N = min(num_hardest, K)``. Both inputs are expected L2-normalised."""
    num_hardest = min(num_hardest, queue.shape[0])
    similarity = query @ queue.T
    return torch.topk(similarity, num_hardest, dim=1, sorted=True).indices


@dataclass
class MixingPlan:
    """The random choices of one MoCHi step, for a batch of ``B`` queries.

    Indices point into each query's list of hardest negatives (0 .. N-1).
    ``first``, ``second``, ``negative_weight``: (B, num_mixed) for ``a * n_first + (1-a) n_second``;
    ``query_mixed``, ``query_weight``: (B, num_query_mixed) for ``b * q + (1-b) n_query_mixed``.
    """

    first: Tensor
    second: Tensor
    negative_weight: Tensor
    query_mixed: Tensor
    query_weight: Tensor

    def rows(self, rows: slice) -> MixingPlan:
        """The plan of the queries ``rows`` only."""
        return MixingPlan(*(getattr(self, name)[rows] for name in self.__dataclass_fields__))


def draw_mixing_plan(
    batch_size: int,
    num_hardest: int,
    num_mixed: int,
    num_query_mixed: int,
    max_query_weight: float = 0.5,
    generator: torch.Generator | None = None,
) -> MixingPlan:
    """Draw indices and weights uniformly (on the CPU, from ``generator``)."""
    size_mixed, size_query = (batch_size, num_mixed), (batch_size, num_query_mixed)
    return MixingPlan(
        first=torch.randint(num_hardest, size_mixed, generator=generator),
        second=torch.randint(num_hardest, size_mixed, generator=generator),
        negative_weight=torch.rand(size_mixed, generator=generator),
        query_mixed=torch.randint(num_hardest, size_query, generator=generator),
        query_weight=torch.rand(size_query, generator=generator) * max_query_weight,
    )


@torch.no_grad()
def mix_hard_negatives(query: Tensor, hard_negatives: Tensor, plan: MixingPlan) -> Tensor:
    """Synthetic negatives (B, num_mixed + num_query_mixed, d), unit-norm, without gradient.

    ``hard_negatives`` (B, N, d) holds each query's hardest negatives (``queue[hardest_index]``).
    """
    device = hard_negatives.device

    def pick(index: Tensor) -> Tensor:  # (B, m) -> (B, m, d), row b from hard_negatives[b]
        index = index.to(device)
        return torch.gather(hard_negatives, 1, index.unsqueeze(-1).expand(-1, -1, hard_negatives.shape[-1]))

    a = plan.negative_weight.to(device, hard_negatives.dtype).unsqueeze(-1)
    mixed = a * pick(plan.first) + (1 - a) * pick(plan.second)
    b = plan.query_weight.to(device, hard_negatives.dtype).unsqueeze(-1)
    query_mixed = b * query.detach().unsqueeze(1) + (1 - b) * pick(plan.query_mixed)
    return normalize(torch.cat([mixed, query_mixed], dim=1))


@in_float32
def mochi_loss_per_query(
    query: Tensor,
    key: Tensor,
    queue: Tensor,
    plan: MixingPlan | None,
    num_hardest: int,
    temperature: float,
) -> Tensor:
    """InfoNCE loss (B,) of each query over [positive, queue, synthetic negatives].

    Inputs are L2-normalised here. ``plan`` (from :func:`draw_mixing_plan`, one row per query)
    decides the synthetic negatives; ``None`` or an empty queue means plain MoCo InfoNCE.
    """
    query, key = normalize(query), normalize(key)
    queue = normalize(queue.detach())
    logits = [(query * key).sum(-1, keepdim=True), query @ queue.T]
    if plan is not None and queue.shape[0] > 0:
        hard = queue[hardest_negatives(query.detach(), queue, num_hardest)]
        synthetic = mix_hard_negatives(query, hard, plan)
        logits.append(torch.einsum("bd,bsd->bs", query, synthetic))
    logits = torch.cat(logits, dim=1) / temperature
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


@OBJECTIVES.register("mochi")
class MoCHi(ContrastiveObjective):
    """MoCHi (hard negative mixing) InfoNCE; see the module docstring for the formula.

    Args:
        temperature: softmax temperature ``t``.
        num_hardest: ``N``, how many of the queue's most similar negatives are mixed.
        num_mixed: ``s``, negative-negative mixes per query.
        num_query_mixed: ``s'``, query-negative mixes per query.
        max_query_weight: upper bound of the query's weight ``b`` in ``h'`` (paper: 0.5).
        seed: seed of the generator that draws the mixes.

    Inputs:
        query, key: (B, d) embeddings of two views; row i of each comes from sample i.
        keys: (K, d) queue of negatives shared by all queries, the same on every process (e.g.
            :class:`contrastkit.nn.queue.MemoryQueue` ``.keys()``); no gradient flows into it.

    Example::

        objective = objectives.get("mochi", temperature=0.2, num_hardest=256, num_mixed=256)
        loss = objective(q, k, keys=queue.keys())
        queue.enqueue(k)
    """

    not_for_view_pairs = "it needs a queue of keys; use --method moco with `extra: {moco: {mochi: true}}`"

    def __init__(
        self,
        temperature: float = 0.2,
        num_hardest: int = 1024,
        num_mixed: int = 1024,
        num_query_mixed: int = 256,
        max_query_weight: float = 0.5,
        seed: int = 0,
    ):
        super().__init__()
        if num_hardest < 1 or num_mixed < 0 or num_query_mixed < 0:
            raise ConfigError(
                f"mochi: num_hardest must be >= 1 and num_mixed, num_query_mixed >= 0; got "
                f"{num_hardest}, {num_mixed}, {num_query_mixed}."
            )
        if not 0 < max_query_weight <= 0.5:
            raise ConfigError(
                f"mochi: max_query_weight must be in (0, 0.5] so that the query never outweighs the "
                f"negative it is mixed with; got {max_query_weight}."
            )
        self.temperature = check_temperature(temperature)
        self.num_hardest = num_hardest
        self.num_mixed = num_mixed
        self.num_query_mixed = num_query_mixed
        self.max_query_weight = max_query_weight
        self.generator = torch.Generator().manual_seed(seed)

    def loss_terms(
        self, query: Tensor, key: Tensor, *, keys: Tensor | None = None, anchor_rows: slice | None = None
    ) -> LossTerms:
        """Sum of the losses of the queries ``anchor_rows`` and the batch size (protocol of
        :mod:`contrastkit.nn.distributed`). The mixes are drawn for the whole batch, then sliced."""
        if keys is None:
            raise DataError(
                "mochi needs a queue of negatives: call it as mochi(query, key, keys=negatives) with "
                "negatives of shape (K, d), e.g. contrastkit.nn.queue.MemoryQueue(...).keys()."
            )
        queue = keys
        if queue.ndim != 2 or queue.shape[1] != query.shape[1] or key.shape != query.shape:
            raise DataError(
                f"mochi: query {tuple(query.shape)} and key {tuple(key.shape)} must both be (B, d) and "
                f"keys {tuple(queue.shape)} must be (K, d) with the same d."
            )
        num_hardest = min(self.num_hardest, queue.shape[0])
        plan = None
        if num_hardest > 0 and self.num_mixed + self.num_query_mixed > 0:
            plan = draw_mixing_plan(
                query.shape[0], num_hardest, self.num_mixed, self.num_query_mixed,
                self.max_query_weight, self.generator,
            )
        rows = slice(None) if anchor_rows is None else anchor_rows
        if plan is not None:
            plan = plan.rows(rows)
        losses = mochi_loss_per_query(query[rows], key[rows], queue, plan, num_hardest, self.temperature)
        return LossTerms(losses.sum(), query.shape[0])

    # The generator's position is state: saved in checkpoints (state_dict's extra state), so a resumed
    # run draws the same mixes as an uninterrupted one.
    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, num_hardest={self.num_hardest}, num_mixed={self.num_mixed}, "
            f"num_query_mixed={self.num_query_mixed}, max_query_weight={self.max_query_weight}"
        )
