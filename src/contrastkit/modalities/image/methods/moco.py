"""MoCo v2 (He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020; Chen, Fan, Girshick & He, "Improved Baselines with Momentum Contrastive
Learning", 2020), with MoCHi hard negative mixing as an option (Kalantidis et al., NeurIPS 2020).

A query encoder (backbone + MLP projector) embeds one view, a key encoder -- an EMA copy of it,
``theta_k <- m theta_k + (1 - m) theta_q`` after every step -- embeds the other, and a queue holds
the keys of the last batches as negatives. For queries ``q_i``, their keys ``k_i`` and the queue
``{n_1 .. n_K}`` (all L2-normalised; He et al., Eq. 1)::

    loss = mean_i -log exp(q_i . k_i / t) / (exp(q_i . k_i / t) + sum_j exp(q_i . n_j / t))

after which the batch's keys are enqueued (gathered from every process first) and the oldest
dropped. This is the catalogue's ``mochi`` objective with no synthetic negatives; ``mochi: true``
adds them (hard negatives mixed from the queue). ``--objective infonce`` instead uses NT-Xent with
the queue as extra negatives (the batch's 2N - 2 other views are negatives too: a SimCLR/MoCo
hybrid); any catalogue objective that takes ``keys=`` can be named.

Defaults follow MoCo v2 (temperature 0.2, projector ``d -> d -> 128`` with ReLU and no BN,
SimCLR's augmentations) except two that are scaled to small data:

- momentum m = 0.99 instead of 0.999. The key encoder averages the query encoder over about
  1 / (1 - m) steps: 1,000 steps is under 1 % of an ImageNet run, but tens of epochs of a
  10,000-image set, whose key encoder would then lag far behind the queries (solo-learn's CIFAR
  recipe uses 0.99 as well).
- queue_size = min(4096, half the training set) instead of 65,536: a queue longer than the data
  would hold older keys of the query's own image as negatives.

The queue starts empty (the reference code fills it with random vectors) and fills within
``queue_size / batch`` steps. The paper's shuffling BN (which needs several devices) is not done.

``--grad-cache-chunk C`` (:mod:`contrastkit.nn.gradcache`): the query backbone embeds C rows at a
time with GradCache, the key encoder C rows at a time without a graph, both with BatchNorm over each
chunk; the query projection and the objective see the whole batch. MoCo's own InfoNCE is a sum
over queries (each with its key and the queue), so plain chunks would give the same gradients; the
batch is coupled, and caching needed, with ``--objective infonce`` (in-batch negatives).

Options (YAML ``extra: {moco: {...}}``):
    momentum: m (default 0.99).
    queue_size: number of keys kept (default min(4096, N / 2)).
    mochi: false, true, or a mapping of the ``mochi`` objective's options (num_hardest, num_mixed,
        num_query_mixed, max_query_weight, seed).
    symmetric: also use view 2 as the query and view 1 as the key, and average the two losses
        (MoCo v3 / solo-learn's "v2+"; default false as in MoCo v2).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.nn.distributed import GatheredObjective
from contrastkit.core.errors import ConfigError
from contrastkit.nn.gradcache import chunked_embed, embed_batch
from contrastkit.nn.heads import ProjectionHead
from contrastkit.nn.momentum import check_momentum, ema_update_, momentum_copy
from contrastkit.modalities.image.methods.parts import (
    DataInfo,
    build_backbone,
    build_objective,
    method_options,
    method_temperature,
)
from contrastkit.nn.queue import MemoryQueue
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews

DEFAULTS = {"momentum": 0.99, "queue_size": None, "mochi": False, "symmetric": False}
PAPER_TEMPERATURE = 0.2
DEFAULT_QUEUE_SIZE = 4096


class MoCo(nn.Module):
    """Query encoder, EMA key encoder and a queue of keys; ``objective(q, k, keys=queue)``."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, views: nn.Module, eval_view: nn.Module,
                 objective: nn.Module, queue: MemoryQueue, momentum: float, symmetric: bool = False,
                 grad_cache_chunk: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.key_backbone = momentum_copy(backbone)
        self.key_projection = momentum_copy(projection)
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.queue = queue
        self._new_keys: torch.Tensor | None = None  # this step's keys, enqueued once the step is taken
        self.momentum = momentum
        self.symmetric = symmetric
        self.grad_cache_chunk = grad_cache_chunk  # rows per backbone pass with GradCache (None: all)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        view_a, view_b = self.views.two_views(batch["image"])
        negatives = self.queue.keys()
        if self.symmetric:
            q_a, q_b = self._queries(torch.cat([view_a, view_b])).chunk(2)
            k_a, k_b = self._keys(torch.cat([view_a, view_b])).chunk(2)
            loss = (self.objective(q_a, k_b, keys=negatives) + self.objective(q_b, k_a, keys=negatives)) / 2
            self._new_keys = torch.cat([k_b, k_a])
        else:
            q = self._queries(view_a)
            k = self._keys(view_b)
            loss = self.objective(q, k, keys=negatives)
            self._new_keys = k
        return loss, {}

    def _queries(self, views: torch.Tensor) -> torch.Tensor:
        return self.projection(embed_batch(self.backbone, views, self.grad_cache_chunk))

    @torch.no_grad()
    def _keys(self, views: torch.Tensor) -> torch.Tensor:
        features = chunked_embed(self.key_backbone, views, self.grad_cache_chunk)  # bounded memory, no graph
        return F.normalize(self.key_projection(features), dim=1)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        # The batch's keys join the queue only once its step is taken: a batch the engine skips
        # (a non-finite loss under --nan-policy skip) leaves the queue as it was, as NNCLR's support set.
        keys, self._new_keys = self._new_keys, None
        if keys is not None:
            self.queue.enqueue(keys)
        ema_update_(self.key_backbone, self.backbone, self.momentum)
        ema_update_(self.key_projection, self.projection, self.momentum)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)


def moco_objective(name: str | None, mochi, temperature: float, num_samples: int) -> nn.Module:
    """MoCo's InfoNCE over [positive key, queue] (``mochi`` without mixing), MoCHi, or ``name``."""
    if name is not None and name != "mochi":
        if mochi:
            raise ConfigError(f"extra.moco.mochi turns on the 'mochi' objective; it cannot be combined "
                              f"with --objective {name}. Drop one of the two.")
        objective = build_objective(name, temperature, num_samples)
        inner = objective.objective if isinstance(objective, GatheredObjective) else objective
        accepted = inspect.signature(getattr(inner, "loss_terms", inner.forward)).parameters
        if "keys" not in accepted:
            raise ConfigError(f"--objective {name} takes no queue of negatives ('keys'), which MoCo needs. "
                              f"Use the default (MoCo's InfoNCE), 'infonce', or 'mochi'.")
        return objective
    mixing = True if name == "mochi" and mochi is False else mochi  # --objective mochi = mochi: true
    if mixing is False:
        options = {"num_mixed": 0, "num_query_mixed": 0}  # no synthetic negatives: MoCo's own InfoNCE
    elif mixing is True:
        options = {}
    elif isinstance(mixing, dict):
        options = dict(mixing)
    else:
        raise ConfigError(f"extra.moco.mochi must be true, false or a mapping of mochi options, got {mochi!r}.")
    return build_objective("mochi", temperature, num_samples, options)


def build(config, data: DataInfo) -> MoCo:
    options = method_options(config, "moco", DEFAULTS)
    queue_size = options["queue_size"] or min(DEFAULT_QUEUE_SIZE, max(1, data.num_samples // 2))
    if not isinstance(queue_size, int) or queue_size < 1:
        raise ConfigError(f"extra.moco.queue_size must be a positive integer, got {queue_size!r}.")
    backbone = build_backbone(config.backbone, data, config.width, config)
    hidden = config.projection_hidden_dim or backbone.output_dim
    return MoCo(
        backbone=backbone,
        projection=ProjectionHead(backbone.output_dim, hidden, config.projection_dim, num_layers=2, batch_norm=False),
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          **config.extra.get("views", {})),
        eval_view=EvalView(mean=data.mean, std=data.std),
        objective=moco_objective(config.objective, options["mochi"], method_temperature(config, PAPER_TEMPERATURE),
                                 data.num_samples),
        queue=MemoryQueue(queue_size, config.projection_dim),
        momentum=check_momentum(options["momentum"], "extra.moco.momentum"),
        symmetric=bool(options["symmetric"]),
        grad_cache_chunk=config.grad_cache_chunk,
    )
