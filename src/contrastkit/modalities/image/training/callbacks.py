"""Callbacks of an image `fit` run: the online kNN probe with representation diagnostics.
(Throughput and checkpoints are the engine's: :mod:`contrastkit.engine.callbacks`.)"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import lightning as L
import torch
import torch.nn.functional as F

from contrastkit.evaluation.diagnostics import (
    alignment,
    collapse_report,
    effective_rank,
    with_assignment_checks,
)
from contrastkit.evaluation.knn import weighted_knn_accuracy
from contrastkit.evaluation.predictor_diagnostics import (
    predictor_report,
    scalar_summary,
)


@contextlib.contextmanager
def evaluating(method: torch.nn.Module) -> Iterator[None]:
    """The block runs with ``method`` in eval mode and no autograd; its mode is restored after."""
    was_training = method.training
    method.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        method.train(was_training)


def embed_images(method: torch.nn.Module, images: torch.Tensor, device: torch.device,
                 batch_size: int = 512) -> torch.Tensor:
    """Representations (``method.embed``) of uint8 images, in batches, in eval mode."""
    with evaluating(method):
        return torch.cat([method.embed(images[i : i + batch_size].to(device, non_blocking=True)).float().cpu()
                          for i in range(0, len(images), batch_size)])


def embed_and_project(method: torch.nn.Module, images: torch.Tensor, device: torch.device,
                      batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Representations and their projections into the objective's space, from one backbone pass."""
    embeddings, projections = [], []
    with evaluating(method):
        for i in range(0, len(images), batch_size):
            h = method.embed(images[i : i + batch_size].to(device, non_blocking=True))
            embeddings.append(h.float().cpu())
            projections.append(method.project_embedding(h).float().cpu())
    return torch.cat(embeddings), torch.cat(projections)


@contextlib.contextmanager
def batch_statistics(method: torch.nn.Module) -> Iterator[None]:
    """In the block every BatchNorm of ``method`` normalises with the statistics of the batch it sees
    on this process, as in one-process training, and leaves its running statistics as they are; the
    rest keeps its mode. The layers' own forward is bypassed, so that synchronised and global
    BatchNorms do not wait for other processes (the evaluation runs on one)."""
    norms = [m for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def with_batch_statistics(norm):
        return lambda x: F.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)

    try:
        for norm in norms:
            norm.forward = with_batch_statistics(norm)
        yield
    finally:
        for norm in norms:
            vars(norm).pop("forward", None)


def objective_space_report(method: torch.nn.Module, images: torch.Tensor, device: torch.device,
                           projected: torch.Tensor, batch_size: int = 512) -> dict:
    """The collapse diagnostics of ``projected`` (the projections of ``images``, in eval mode), with
    the assignment checks of methods that have ``objective_distributions(images) -> {name: (n, K)}``
    (the distributions their objective compares), and, while BatchNorm's running statistics are
    young, a verdict that holds with batch statistics too.

    Why: the running statistics start at mean 0, variance 1 and follow the batches with momentum
    0.1, so after five steps they still hold 59 % of that start (0.9^5), and in eval mode every image
    keeps the large mean that training normalises away: the outputs point one way. A 1-epoch DINO or
    BYOL on digits (5 steps) has a mean pairwise cosine of 0.99 in eval mode and 0.73 with batch
    statistics or with running statistics recomputed over the data. That is no collapse, so while
    some BatchNorm's running statistics keep more than ``YOUNG_STATISTICS_WEIGHT`` of their start
    (momentum 0.1: fewer than 44 updates) a snapshot is called collapsed only when it is with batch
    statistics as well; otherwise its reasons are kept as ``running_statistics_reasons``. Older
    statistics are trusted: batch statistics of clean images differ from the running ones of
    augmented views even when those have converged, and would clear a real collapse (VICRegL with
    its invariance terms alone, 480 updates: cosine 0.96 in eval mode, 0.92 with batch statistics,
    where the per-dimension std passes the floor). Batch statistics come from near-equal chunks of at
    most ``batch_size`` images."""
    report = _snapshot_report(method, images, device, projected, batch_size)
    if not report["collapsed"] or not running_statistics_are_young(method) or len(images) < 2:
        return report
    chunks = math.ceil(len(images) / batch_size)
    even = math.ceil(len(images) / chunks)  # no chunk of one image, whose batch statistics are undefined
    with batch_statistics(method):
        _, batch_projected = embed_and_project(method, images, device, even)
        recheck = _snapshot_report(method, images, device, batch_projected, even)
    if recheck["collapsed"]:
        return report
    return {**report, "collapsed": False, "reasons": [], "running_statistics_reasons": report["reasons"],
            "batch_statistics_effective_rank": recheck["effective_rank"]}


# Running statistics that keep more than this share of their initial values (mean 0, variance 1)
# have not yet forgotten them: (1 - momentum) ** updates > 0.01, fewer than 44 updates at momentum 0.1.
YOUNG_STATISTICS_WEIGHT = 0.01


def running_statistics_are_young(method: torch.nn.Module) -> bool:
    """Whether some BatchNorm of ``method`` has running statistics that still hold more than
    ``YOUNG_STATISTICS_WEIGHT`` of their initial values (a cumulative average forgets them at once)."""
    for norm in method.modules():
        if not isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) or norm.running_mean is None:
            continue
        updates = int(norm.num_batches_tracked)
        initial_weight = 1.0 if updates == 0 else (0.0 if norm.momentum is None else (1 - norm.momentum) ** updates)
        if initial_weight > YOUNG_STATISTICS_WEIGHT:
            return True
    return False


def _snapshot_report(method, images, device, projected, batch_size) -> dict:
    report = collapse_report(projected, max_rank=getattr(method, "projection_max_rank", None))
    if not hasattr(method, "objective_distributions"):
        return report
    parts: dict[str, list[torch.Tensor]] = {}
    with evaluating(method):
        for i in range(0, len(images), batch_size):
            for name, p in method.objective_distributions(images[i : i + batch_size].to(device)).items():
                parts.setdefault(name, []).append(p.float().cpu())
    return with_assignment_checks(report, {name: torch.cat(p) for name, p in parts.items()})


# A run whose projections lose more than 60 % of the effective rank they once had is collapsing
# dimension by dimension, even when no single snapshot is degenerate: SimSiam without stop-gradient
# keeps every dimension's variance (its output BatchNorm) while its RankMe falls from ~31 to ~9
# (tests/modalities/image/test_collapse.py); healthy runs' rank rises and then plateaus.
RANK_DROP_FRACTION = 0.4


def two_view_projections(method: torch.nn.Module, images: torch.Tensor, device: torch.device,
                         batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Objective-space outputs of two augmented views of each image, for the alignment of Wang &
    Isola; None for methods that are not two-view (they lack ``views.two_views``, ``backbone`` or
    ``projection``, e.g. JEPA)."""
    views = getattr(method, "views", None)
    if not (hasattr(views, "two_views") and hasattr(method, "backbone") and hasattr(method, "projection")):
        return None
    pairs = []
    with evaluating(method):
        for i in range(0, len(images), batch_size):
            view_a, view_b = views.two_views(images[i : i + batch_size].to(device, non_blocking=True))
            pairs.append(method.projection(method.backbone(torch.cat([view_a, view_b]))).float().cpu().chunk(2))
    return torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])


class OnlineProbe(L.Callback):
    """Every ``every`` epochs: weighted kNN accuracy of the current representations (bank: labelled
    training samples; queries: held-out samples), logged as ``probe/knn_top1``; the effective rank
    of those representations (RankMe); and the collapse diagnostics of the held-out samples in the
    objective's space (projection output, where Wang & Isola and the SimSiam paper measure them),
    logged as ``diag/*``, with the alignment of two augmented views for two-view methods. A collapse warning is raised (and kept for summary.json) when a snapshot
    is degenerate (:func:`objective_space_report`) or when the effective rank has fallen below
    ``RANK_DROP_FRACTION`` of its peak in this run; warnings start after the warm-up.

    Only labels of the bank are used for prediction; the held-out labels only score it. The probe
    is never used to choose an epoch or a hyper-parameter.
    """

    def __init__(self, bank_images, bank_labels, query_images, query_labels, every: int = 1,
                 k: int = 200, temperature: float = 0.1, warn_from_epoch: int = 1):
        self.bank_images, self.bank_labels = bank_images, bank_labels
        self.query_images, self.query_labels = query_images, query_labels
        self.every, self.k, self.temperature = every, k, temperature
        # A freshly initialised network maps every input to nearly the same direction (its ReLU
        # features share a large mean), which the diagnostics rightly call collapsed; spreading them
        # is what training does. Warnings start once the warm-up is over.
        self.warn_from_epoch = warn_from_epoch
        self.collapse_warnings: list[str] = []
        self.peak_rank = 0.0  # highest effective rank of the projections seen so far
        self.peak_rank_epoch = -1

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every <= 0 or ((epoch + 1) % self.every and epoch + 1 != trainer.max_epochs):
            return
        method = module.method
        queries, projected = embed_and_project(method, self.query_images, module.device)
        metrics = {}
        if self.bank_labels is not None and self.query_labels is not None:
            bank = embed_images(method, self.bank_images, module.device)
            metrics["probe/knn_top1"] = weighted_knn_accuracy(
                bank, self.bank_labels, queries, self.query_labels, k=self.k, temperature=self.temperature)
        metrics["diag/rankme"] = float(effective_rank(queries))
        report = objective_space_report(method, self.query_images, module.device, projected)
        for name in ("effective_rank", "uniformity", "per_dimension_std"):
            metrics[f"diag/{name}"] = float(report[name])
        pair = two_view_projections(method, self.query_images, module.device)
        if pair is not None:
            metrics["diag/alignment"] = alignment(*pair)
        metrics["diag/collapsed"] = float(report["collapsed"])
        matrices = method.predictor_matrices() if hasattr(method, "predictor_matrices") else None
        if matrices is not None:  # a linear predictor W and the correlation F of its input
            metrics.update(scalar_summary(predictor_report(*matrices), prefix="diag/predictor_"))
        reasons = list(report["reasons"])
        rank = float(report["effective_rank"])
        if rank < RANK_DROP_FRACTION * self.peak_rank:
            reasons.append(
                f"the effective rank of the projections fell from {self.peak_rank:.1f} (epoch "
                f"{self.peak_rank_epoch}) to {rank:.1f}, below {RANK_DROP_FRACTION:.0%} of its peak: "
                f"dimensional collapse in progress")
        if rank > self.peak_rank:
            self.peak_rank, self.peak_rank_epoch = rank, epoch
        if reasons and epoch >= self.warn_from_epoch:
            message = f"epoch {epoch}: representations look collapsed ({'; '.join(reasons)})"
            self.collapse_warnings.append(message)
            L.pytorch.utilities.rank_zero_warn(message)
        module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)

    # Saved in checkpoints, so a resumed run keeps its warnings and the rank it is compared against.
    def state_dict(self) -> dict:
        return {"collapse_warnings": self.collapse_warnings, "peak_rank": self.peak_rank,
                "peak_rank_epoch": self.peak_rank_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.collapse_warnings = list(state["collapse_warnings"])
        self.peak_rank, self.peak_rank_epoch = float(state["peak_rank"]), int(state["peak_rank_epoch"])
