"""NNCLR (Dwibedi, Aytar, Tompson, Sermanet & Zisserman, "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021).

SimCLR with a nearest neighbour as the positive. Two views of each image go through one backbone,
a projector ``z = g(f(v))`` and a predictor ``p = q(z)``. A support set ``Q`` (a queue of the
projections of past batches, :class:`~contrastkit.nn.support_set.SupportSet`) replaces each
view's projection by its nearest neighbour ``NN(z, Q)`` (cosine similarity, no gradient), which
becomes the positive of the *other* view's prediction::

    loss = 1/2 * ( l(NN(z_a, Q), p_b) + l(NN(z_b, Q), p_a) )

where ``l`` is the catalogue's NT-Xent (``infonce``; any two-view objective with ``--objective``):
anchor ``NN(z_a)_i`` has positive ``p_b_i`` among the 2N - 1 other rows of
``[NN(z_a); p_b]``, and the other way round. This is LightlySSL's form; the paper's Eq. 2 keeps
only the cross-view terms, ``-log exp(NN(z_a)_i . p_b_i / t) / sum_k exp(NN(z_a)_i . p_b_k / t)``
(unit vectors). Both views look up the same support set;
then the batch's ``z_b`` (gathered from every process) is enqueued, after the optimiser step
(``after_optimizer_step``), so a checkpoint holds the support set of the next step and a
skipped batch (non-finite loss) stays out of it.

Defaults follow LightlySSL's CIFAR-10 benchmark (``NNCLRModel``; ResNet-18, batch 128, 200 or 800
epochs, SGD lr 0.06 x batch / 128, momentum 0.9, weight decay 5e-4, cosine schedule):

- views: SimCLR's CIFAR recipe (colour jitter strength 0.5, no blur), :class:`SimCLRViews`;
- projector ``backbone -> hidden (BN, ReLU) -> --projection-dim (BN)`` with ``hidden =
  --projection-hidden-dim`` or 4 x the backbone's width (the benchmark: 512 -> 2048 -> 256; the
  paper: three layers 2048 -> 2048 -> 256, each with BN);
- predictor ``--projection-dim -> predictor_hidden_dim (BN, ReLU) -> --projection-dim``, hidden
  16 x the projection width (benchmark and paper: 256 -> 4096 -> 256);
- temperature 0.5 (LightlySSL's ``NTXentLoss()`` default, which the benchmark uses; the paper:
  0.1);
- support set of 4096 keys (the benchmark; 8192 for its batch of 512; the paper: 98,304), capped
  at half the training set, as MoCo's queue here: a support set longer than the data would hold
  older embeddings of the query's own image.

The output dimension is this library's ``--projection-dim`` (default 128; 256 in the benchmark and
the paper).

``--grad-cache-chunk C`` (:mod:`contrastkit.nn.gradcache`): the backbone embeds the 2N views C rows
at a time with GradCache (BatchNorm over each chunk); projector, predictor (their BatchNorm over
the whole batch) and the objective see the whole batch.

Options (YAML ``extra: {nnclr: {...}}``):
    queue_size: keys in the support set (default min(4096, N / 2)).
    predictor_hidden_dim: hidden width of the predictor (default 16 x --projection-dim).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit import objectives
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.image.methods.parts import (
    DataInfo,
    build_backbone,
    build_objective,
    method_options,
    method_temperature,
    objective_inputs,
)
from contrastkit.modalities.image.views.image import EvalView, SimCLRViews
from contrastkit.nn.gradcache import embed_batch
from contrastkit.nn.heads import MLPHead, PredictionHead
from contrastkit.nn.support_set import SupportSet

DEFAULTS = {"queue_size": None, "predictor_hidden_dim": None}
BENCHMARK_TEMPERATURE = 0.5  # LightlySSL's NTXentLoss() default, used by its CIFAR-10 NNCLR benchmark
DEFAULT_QUEUE_SIZE = 4096


def nnclr_loss(objective: nn.Module, support_set: SupportSet, z_a: Tensor, z_b: Tensor, p_a: Tensor, p_b: Tensor,
               **extra: Tensor) -> Tensor:
    """``1/2 (objective(NN(z_a), p_b) + objective(NN(z_b), p_a))``, both looked up in ``support_set``."""
    return 0.5 * (objective(support_set.nearest(z_a), p_b, **extra)
                  + objective(support_set.nearest(z_b), p_a, **extra))


class NNCLR(nn.Module):
    """Backbone, projector, predictor and a support set of past projections."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, predictor: nn.Module, views: nn.Module,
                 eval_view: nn.Module, objective: nn.Module, support_set: SupportSet,
                 grad_cache_chunk: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.predictor = predictor
        self.views = views
        self.eval_view = eval_view
        self.objective = objective
        self.support_set = support_set
        self._new_keys: Tensor | None = None  # this step's keys, enqueued after the optimiser step
        self.grad_cache_chunk = grad_cache_chunk  # rows per backbone pass with GradCache (None: all)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        view_a, view_b = self.views.two_views(batch["image"])
        # BN statistics over both views (the backbone's over chunks with GradCache)
        z = self.projection(embed_batch(self.backbone, torch.cat([view_a, view_b]), self.grad_cache_chunk))
        p_a, p_b = self.predictor(z).chunk(2)
        z_a, z_b = z.detach().chunk(2)
        loss = nnclr_loss(self.objective, self.support_set, z_a, z_b, p_a, p_b,
                          **objective_inputs(self.objective, batch))
        # The loss is the global one on every process, so all of them agree on skipping a batch
        # (enqueueing is a collective).
        self._new_keys = z_b if bool(torch.isfinite(loss.detach())) else None
        return loss, {}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        keys, self._new_keys = self._new_keys, None
        if keys is not None:
            self.support_set.enqueue(keys)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.eval_view(images))

    def project_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)


def nnclr_projection(in_dim: int, hidden_dim: int, out_dim: int) -> MLPHead:
    """``Linear -> BN -> ReLU -> Linear -> BN`` (LightlySSL's CIFAR-10 NNCLR projector, 512 -> 2048 -> 256)."""
    return MLPHead([
        (in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
        (hidden_dim, out_dim, nn.BatchNorm1d(out_dim), None),
    ])


def build(config, data: DataInfo) -> NNCLR:
    options = method_options(config, "nnclr", DEFAULTS)
    name = config.objective or "infonce"
    reason = getattr(objectives.OBJECTIVES.factory(name), "not_for_view_pairs", "")
    if reason:
        raise ConfigError(f"--objective {name} does not fit NNCLR's (neighbour, prediction) pairs: {reason}.")
    queue_size = options["queue_size"] or min(DEFAULT_QUEUE_SIZE, max(1, data.num_samples // 2))
    if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
        raise ConfigError(f"extra.nnclr.queue_size must be a positive integer, got {queue_size!r}.")
    backbone = build_backbone(config.backbone, data, config.width, config)
    hidden = config.projection_hidden_dim or 4 * backbone.output_dim
    predictor_hidden = options["predictor_hidden_dim"] or 16 * config.projection_dim
    return NNCLR(
        backbone=backbone,
        projection=nnclr_projection(backbone.output_dim, hidden, config.projection_dim),
        predictor=PredictionHead(config.projection_dim, predictor_hidden, config.projection_dim),
        views=SimCLRViews(image_size=data.image_size, channels=data.channels, mean=data.mean, std=data.std,
                          **(config.extra.get("views") or {})),
        eval_view=EvalView(mean=data.mean, std=data.std),
        objective=build_objective(name, method_temperature(config, BENCHMARK_TEMPERATURE), data.num_samples,
                                  config.extra.get("objective")),
        support_set=SupportSet(queue_size, config.projection_dim),
        grad_cache_chunk=config.grad_cache_chunk,
    )
