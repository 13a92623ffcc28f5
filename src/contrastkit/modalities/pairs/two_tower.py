"""The ``clip`` two-tower method: any two encoders, projection heads, a cross-modal objective, and
optional momentum encoders with queues and in-modality losses beside it.

For a batch of N pairs ``(x^a_i, x^b_i)``, encoders ``f_a``, ``f_b`` (one module when the weights
are shared) and heads ``g_a``, ``g_b``::

    h^a = f_a(x^a),  z^a = g_a(h^a)          h^b = f_b(x^b),  z^b = g_b(h^b)
    L   = L_cross(z^a, z^b)  +  w_a * L_in(z^a, z'^a)  +  w_b * L_in(z^b, z'^b)

- ``L_cross`` is a catalogue objective over the pairs: ``clip`` (Radford et al. 2021), ``siglip``
  (Zhai et al. 2023) or ``hcl`` (Robinson et al. 2021; its concentration ``beta`` weights hard
  cross-modal negatives, as in contrastive multimodal activity recognition). It is wrapped in
  :class:`~contrastkit.nn.distributed.GatheredObjective`, so under data parallelism every sample is
  contrasted with the negatives of all processes.
- ``L_in`` is the in-modality loss of "Improved baselines for vision-language pre-training"
  (Fini et al. 2023): InfoNCE (the catalogue's ``infonce``) between a sample and a second view of
  it, ``z'^a = g_a(f_a(t(x^a)))`` with ``t`` the tower input's augmentation (identity for text:
  the two dropout masks make the views, as in SimCSE), each tower with its own weight.
- **Momentum encoders with queues** (CoCoSoDa, Shi et al. 2023): EMA copies
  ``f~, g~ <- m f~ + (1 - m) f`` make keys ``k = g~(f~(t(x)))`` of the augmented batch, queues keep
  the keys of earlier batches, and ``L_cross`` becomes the queued CLIP loss
  (:mod:`~contrastkit.objectives.queued_clip`): ``a_i``'s positive is the key of ``b_i``, its
  negatives the other keys and the queue of side b. The in-modality second view is then the key of
  the sample's own augmented input and its negatives include the queue of its side (CoCoSoDa's
  intra-modal loss).

Embeddings for retrieval are ``normalize(g(f(x)))`` of the online towers (:meth:`TwoTower.embed`).

**Batches larger than memory** (``grad_cache_chunk``, GradCache, :mod:`contrastkit.nn.gradcache`):
every encoder pass of a training step goes ``C`` rows at a time: the online encoders' (features and
in-modality second views) with GradCache, the momentum encoders' without a graph. Heads and
objectives see the whole batch, so the gradients are those of the whole-batch step (with a tower's
BatchNorm, if it has one, over chunks of ``C`` rows); one process only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.nn.distributed import GatheredObjective
from contrastkit.core.errors import ConfigError
from contrastkit.nn.gradcache import chunked_embed, embed_batch
from contrastkit.nn.momentum import check_momentum, ema_update_, momentum_copy
from contrastkit.objectives.queued_clip import QueuedCLIP
from contrastkit.modalities.pairs.towers import output_dim_of, projection_head
from contrastkit.objectives.base import normalize
from contrastkit.nn.queue import MemoryQueue

CROSS_OBJECTIVES = ("clip", "siglip", "hcl")
SIDES = ("a", "b")


@dataclass
class TwoTowerOptions:
    """Everything about the method that is not an encoder. Defaults: plain CLIP with linear heads.

    Attributes:
        embedding_dim: size of the joint space (None: the towers' output size, which must agree).
        head: ``linear`` | ``mlp`` | ``none`` (see :func:`~contrastkit.modalities.pairs.towers.projection_head`).
        objective: cross-modal objective, ``clip``, ``siglip`` or ``hcl``.
        temperature: initial temperature of ``clip`` (learned unless ``learn_temperature`` is
            False) and the temperature of ``hcl``.
        concentration: ``hcl``'s ``beta`` (0 weights all negatives alike; larger focuses on hard ones).
        tau_plus: ``hcl``'s debiasing prior (0: none).
        momentum: EMA rate of the momentum encoders (None: no momentum encoders, no queues).
        queue_size: keys kept per side (needs ``momentum``).
        in_modality_weights: ``(w_a, w_b)``, the weights of the in-modality losses (0: off).
        in_modality_temperature: InfoNCE temperature of the in-modality losses (SimCSE: 0.05).
        local_loss: each process computes only its own rows against the global batch.
        grad_cache_chunk: rows per encoder pass with GradCache (None: the whole batch at once).
    """

    embedding_dim: int | None = None
    head: str = "linear"
    objective: str = "clip"
    temperature: float = 0.05
    learn_temperature: bool = True
    concentration: float = 1.0
    tau_plus: float = 0.0
    momentum: float | None = None
    queue_size: int = 0
    in_modality_weights: tuple[float, float] = (0.0, 0.0)
    in_modality_temperature: float = 0.05
    local_loss: bool = True
    grad_cache_chunk: int | None = None
    extra_objective_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.objective not in CROSS_OBJECTIVES:
            raise ConfigError(f"Unknown two-tower objective '{self.objective}'. Valid objectives: "
                              f"{', '.join(CROSS_OBJECTIVES)}.")
        if self.momentum is not None:
            check_momentum(self.momentum, "--momentum")
            if self.objective != "clip":
                raise ConfigError(f"Momentum encoders and queues use the queued CLIP loss, so they need "
                                  f"--objective clip (got '{self.objective}'); drop --momentum to use it.")
        if self.queue_size < 0 or (self.queue_size > 0 and self.momentum is None):
            raise ConfigError(f"--queue-size {self.queue_size}: a queue holds momentum keys, so it needs "
                              "--momentum (e.g. 0.99) and a size >= 0.")
        chunk = self.grad_cache_chunk
        if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
            raise ConfigError(f"--grad-cache-chunk must be a positive number of rows, got {chunk!r}.")
        if len(self.in_modality_weights) != 2 or min(self.in_modality_weights) < 0:
            raise ConfigError(f"The in-modality weights must be two numbers >= 0 (one per tower), got "
                              f"{self.in_modality_weights}.")


def cross_objective(options: TwoTowerOptions) -> nn.Module:
    """The cross-modal objective named by the options (queued CLIP when momentum is on)."""
    extra = dict(options.extra_objective_options)
    if options.momentum is not None:
        return QueuedCLIP(options.temperature, learn_scale=options.learn_temperature, **extra)
    if options.objective == "clip":
        return objectives.get("clip", init_temperature=options.temperature,
                              learn_scale=options.learn_temperature, **extra)
    if options.objective == "hcl":
        return objectives.get("hcl", temperature=options.temperature, beta=options.concentration,
                              tau_plus=options.tau_plus, **extra)
    return objectives.get(options.objective, **extra)


class MomentumBranch(nn.Module):
    """EMA copies of both towers (encoder + head) and one key queue per side."""

    def __init__(self, encoder_a: nn.Module, encoder_b: nn.Module, head_a: nn.Module, head_b: nn.Module,
                 momentum: float, queue_size: int, embedding_dim: int):
        super().__init__()
        self.shared_encoder = encoder_a is encoder_b
        self.encoder_a = momentum_copy(encoder_a)
        self.encoder_b = self.encoder_a if self.shared_encoder else momentum_copy(encoder_b)
        self.head_a, self.head_b = momentum_copy(head_a), momentum_copy(head_b)
        self.momentum = float(momentum)
        self.queue_a = MemoryQueue(queue_size, embedding_dim) if queue_size > 0 else None
        self.queue_b = MemoryQueue(queue_size, embedding_dim) if queue_size > 0 else None

    @torch.no_grad()
    def keys(self, view_a: Any, view_b: Any, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Both sides' keys, the encoders' passes ``chunk_size`` rows at a time (None: all at once)."""
        return (self.head_a(chunked_embed(self.encoder_a, view_a, chunk_size)),
                self.head_b(chunked_embed(self.encoder_b, view_b, chunk_size)))

    def queued(self) -> tuple[Tensor | None, Tensor | None]:
        """Copies of the queues' keys (copies: the queues change before the backward pass)."""
        def copy(queue: MemoryQueue | None) -> Tensor | None:
            return queue.keys().clone() if queue is not None and len(queue) > 0 else None
        return copy(self.queue_a), copy(self.queue_b)

    def enqueue(self, keys_a: Tensor, keys_b: Tensor) -> None:
        if self.queue_a is not None and self.queue_b is not None:
            self.queue_a.enqueue(normalize(keys_a.detach()))
            self.queue_b.enqueue(normalize(keys_b.detach()))

    @torch.no_grad()
    def update(self, online: TwoTower) -> None:
        """``theta~ <- m theta~ + (1 - m) theta`` for both towers (a shared encoder once)."""
        ema_update_(self.encoder_a, online.encoder_a, self.momentum)
        if not self.shared_encoder:
            ema_update_(self.encoder_b, online.encoder_b, self.momentum)
        ema_update_(self.head_a, online.head_a, self.momentum)
        ema_update_(self.head_b, online.head_b, self.momentum)


class TwoTower(nn.Module):
    """Two towers (encoder + head), a cross-modal objective, optional in-modality losses and
    momentum branch; see the module docstring. Build it with :func:`build_two_tower`.

    ``losses(batch_a, batch_b, view_a, view_b)`` returns the weighted loss terms by name
    (``cross``, ``in_a``, ``in_b``); their sum is the training loss. ``features`` and
    ``loss_terms`` split that in two, so that gradient harmonization can intervene on the towers'
    features. ``view_a`` / ``view_b`` are the augmented batches (None: the batch itself).
    """

    def __init__(self, encoder_a: nn.Module, encoder_b: nn.Module, head_a: nn.Module, head_b: nn.Module,
                 cross: nn.Module, in_modality: nn.Module | None = None,
                 in_modality_weights: tuple[float, float] = (0.0, 0.0),
                 momentum_branch: MomentumBranch | None = None, local_loss: bool = True,
                 grad_cache_chunk: int | None = None):
        super().__init__()
        self.encoder_a, self.encoder_b = encoder_a, encoder_b
        self.head_a, self.head_b = head_a, head_b
        self.cross = GatheredObjective(cross, local_loss=local_loss)
        self.in_modality = GatheredObjective(in_modality, local_loss=local_loss) if in_modality is not None else None
        self.in_modality_weights = tuple(float(w) for w in in_modality_weights)
        if self.in_modality is None and max(self.in_modality_weights) > 0:
            raise ConfigError("In-modality weights are set but no in-modality objective was given.")
        self.momentum_branch = momentum_branch
        self.grad_cache_chunk = grad_cache_chunk  # rows per encoder pass with GradCache (None: all)

    @property
    def shared_encoder(self) -> bool:
        return self.encoder_a is self.encoder_b

    def encoder(self, side: str) -> nn.Module:
        return self.encoder_a if side == "a" else self.encoder_b

    def head(self, side: str) -> nn.Module:
        return self.head_a if side == "a" else self.head_b

    def features(self, batch_a: Any, batch_b: Any) -> tuple[Tensor, Tensor]:
        """``(h^a, h^b)``: the encoders' (B, D) outputs (with GradCache when ``grad_cache_chunk`` is set)."""
        return self.encode(batch_a, "a"), self.encode(batch_b, "b")

    def encode(self, batch: Any, side: str) -> Tensor:
        """One side's encoder over ``batch``: in one pass, or ``grad_cache_chunk`` rows at a time."""
        return embed_batch(self.encoder(side), batch, self.grad_cache_chunk)

    def loss_terms(self, h_a: Tensor, h_b: Tensor, view_a: Any, view_b: Any) -> dict[str, Tensor]:
        """Weighted loss terms from the features; ``view_a`` / ``view_b`` are the (augmented)
        batches the momentum keys and the in-modality second views are made from."""
        z = {"a": self.head_a(h_a), "b": self.head_b(h_b)}
        views = {"a": view_a, "b": view_b}
        terms: dict[str, Tensor] = {}
        if self.momentum_branch is not None:
            keys = dict(zip(SIDES, self.momentum_branch.keys(view_a, view_b, self.grad_cache_chunk)))
            queues = dict(zip(SIDES, self.momentum_branch.queued()))
            terms["cross"] = self.cross(z["a"], z["b"], keys_a=keys["a"], keys_b=keys["b"],
                                        queue_a=queues["a"], queue_b=queues["b"])
        else:
            terms["cross"] = self.cross(z["a"], z["b"])
        for side, weight in zip(SIDES, self.in_modality_weights):
            if weight == 0:
                continue
            if self.momentum_branch is not None:
                second, negatives = keys[side], queues[side]
            else:
                second, negatives = self.head(side)(self.encode(views[side], side)), None
            extra = {"keys": negatives} if negatives is not None else {}
            terms[f"in_{side}"] = weight * self.in_modality(z[side], second, **extra)
        if self.momentum_branch is not None:
            self.momentum_branch.enqueue(keys["a"], keys["b"])
        return terms

    def losses(self, batch_a: Any, batch_b: Any, view_a: Any = None, view_b: Any = None) -> dict[str, Tensor]:
        h_a, h_b = self.features(batch_a, batch_b)
        return self.loss_terms(h_a, h_b, batch_a if view_a is None else view_a,
                               batch_b if view_b is None else view_b)

    def embed(self, batch: Any, side: str) -> Tensor:
        """L2-normalised joint-space embeddings ``normalize(g(f(x)))`` of one side's batch."""
        return normalize(self.head(side)(self.encoder(side)(batch)))

    def after_optimizer_step(self) -> None:
        """EMA update of the momentum branch (a no-op without one)."""
        if self.momentum_branch is not None:
            self.momentum_branch.update(self)


def build_two_tower(encoder_a: nn.Module, encoder_b: nn.Module | None = None,
                    options: TwoTowerOptions | None = None, dim_a: int | None = None,
                    dim_b: int | None = None) -> TwoTower:
    """Compose a :class:`TwoTower` from two encoders (``encoder_b=None``: share ``encoder_a``'s
    weights) and the options. ``dim_a`` / ``dim_b`` give the encoders' output sizes when they have
    no ``output_dim`` attribute."""
    options = options or TwoTowerOptions()
    options.check()
    encoder_b = encoder_a if encoder_b is None else encoder_b
    dim_a = output_dim_of(encoder_a, dim_a, "a")
    dim_b = dim_a if encoder_b is encoder_a and dim_b is None else output_dim_of(encoder_b, dim_b, "b")
    embedding_dim = options.embedding_dim
    if embedding_dim is None:
        if dim_a != dim_b:
            raise ConfigError(f"The towers give {dim_a} and {dim_b} features; set embedding_dim "
                              "(--embedding-dim) to project both into one joint space.")
        embedding_dim = dim_a
    head_a = projection_head(options.head, dim_a, embedding_dim)
    head_b = projection_head(options.head, dim_b, embedding_dim)
    in_modality = None
    if max(options.in_modality_weights) > 0:
        in_modality = objectives.get("infonce", temperature=options.in_modality_temperature)
    branch = None
    if options.momentum is not None:
        branch = MomentumBranch(encoder_a, encoder_b, head_a, head_b, options.momentum,
                                options.queue_size, embedding_dim)
    return TwoTower(encoder_a, encoder_b, head_a, head_b, cross_objective(options), in_modality,
                    options.in_modality_weights, branch, options.local_loss, options.grad_cache_chunk)
