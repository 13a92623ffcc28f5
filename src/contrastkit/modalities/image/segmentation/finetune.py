"""Fine-tune a segmentation model on a label budget and score it: ``contrastkit segment``.

Protocol (the issue's, and Chaitanya et al.'s limited-annotation setting on 2-D images):

- the training images that have masks are Kvasir-SEG's 380 train images; by default (``split="dev"``)
  the fixed 60-image development carve (:func:`~.data.development_carve`) is kept out, the model is
  fine-tuned on a budget of masks from the other 320 and scored on the carve: every choice (steps,
  rate, pretraining) is made there. ``split="val"`` fine-tunes on a budget from all 380 and scores the
  120 validation images: run it once, after the choices;
- the budget's rows are fixed per seed and shared by every method (:func:`~.data.label_budget`);
- the encoder starts from scratch (random initialisation, the same for the same seed), or from a
  pretraining run's encoder; a ``gcl-local`` run also gives its decoder blocks. Encoder, decoder and
  head are all trained (Adam, cross-entropy + soft Dice of the foreground classes, paired views:
  :class:`~.views.PairedViews`), for a fixed number of optimiser steps whatever the budget;
- scores: mean per-image Dice and IoU of the foreground (:mod:`.metrics`).

The loop is the engine's auxiliary one (:func:`contrastkit.engine.auxiliary.fit_auxiliary`), run under
:func:`contrastkit.core.seeding.seeded`, so a result is a function of (data, start, budget, seed, settings).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.core.seeding import seeded
from contrastkit.engine.auxiliary import fit_auxiliary
from contrastkit.modalities.image.encoders import build_encoder
from contrastkit.modalities.image.segmentation.data import (
    SegmentationSet,
    development_carve,
    label_budget,
    read_kvasir,
)
from contrastkit.modalities.image.segmentation.metrics import mean_dice, mean_iou
from contrastkit.modalities.image.segmentation.model import SegmentationModel
from contrastkit.modalities.image.segmentation.views import PairedViews
from contrastkit.modalities.image.views.image import Normalize, to_unit_float

SPLITS = ("dev", "val")


@dataclass(frozen=True)
class FineTuning:
    """The fine-tuning settings: optimiser ``steps`` of ``batch_size`` pairs (fewer when the budget is
    smaller), Adam's ``lr`` and ``weight_decay``, and the scratch encoder (``backbone``, ``width``)."""

    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    backbone: str = "resnet18"
    width: float = 1.0


@dataclass
class StartingPoint:
    """Where fine-tuning starts: an encoder, optionally pretrained decoder blocks, the normalisation."""

    encoder: nn.Module
    decoder_state: dict[str, Tensor] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def scratch_start(train_images: Tensor, settings: FineTuning, image_size: int) -> StartingPoint:
    """A randomly initialised encoder (torch's generator: call under ``seeded``), normalised with the
    training images' channel statistics."""
    pixels = to_unit_float(train_images, train_images.shape[1])
    mean = tuple(float(v) for v in pixels.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in pixels.std(dim=(0, 2, 3)))
    encoder = build_encoder(settings.backbone, in_channels=train_images.shape[1], image_size=image_size,
                            width=settings.width)
    return StartingPoint(encoder, None, mean, std, "scratch")


def run_start(run: str | Path, image_size: int) -> StartingPoint:
    """The encoder (``backbone``) of a pretraining run folder and, when it has them (``gcl-local``), its
    decoder blocks; normalised as the run was."""
    from contrastkit.modalities.image.training.restore import load_method

    checkpoint = Path(run) / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise DataError(f"'{run}' holds no checkpoints/last.ckpt: give a run folder written by 'contrastkit fit' "
                        f"on images, or leave --run out to start from scratch.")
    method, config, data = load_method(checkpoint)
    if data.image_size != image_size:
        raise ConfigError(f"The run '{run}' was trained on {data.image_size}-pixel images; fine-tune at that size "
                          f"(--image-size {data.image_size}) or pretrain at {image_size}.")
    if not hasattr(method, "backbone"):
        raise ConfigError(f"The {config.method} run '{run}' has no convolutional encoder ('backbone') to segment with.")
    decoder = getattr(method, "decoder", None)
    return StartingPoint(method.backbone, None if decoder is None else decoder.state_dict(), data.mean, data.std,
                         f"{config.method} run {run}")


def build_model(start: StartingPoint, num_classes: int) -> SegmentationModel:
    model = SegmentationModel(start.encoder, num_classes)
    model.encoder.requires_grad_(True)  # a gcl-local run's encoder was frozen there; here it is fine-tuned
    if start.decoder_state is not None:
        _, unexpected = model.decoder.load_state_dict(start.decoder_state, strict=False)
        if unexpected:
            raise ConfigError(f"The run's decoder does not fit this model's (unexpected: {unexpected[:3]}).")
    return model


def segmentation_loss(scores: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy + (1 - soft Dice) averaged over the foreground classes and the batch."""
    cross_entropy = F.cross_entropy(scores, masks)
    probabilities = scores.softmax(dim=1)[:, 1:]  # (B, K - 1, H, W)
    truth = F.one_hot(masks, scores.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probabilities.dtype)
    overlap = (probabilities * truth).flatten(2).sum(2)
    sizes = probabilities.flatten(2).sum(2) + truth.flatten(2).sum(2)
    soft_dice = (2 * overlap + 1.0) / (sizes + 1.0)  # +1: an empty mask predicted empty scores 1
    return cross_entropy + (1 - soft_dice).mean()


def finetune(model: SegmentationModel, train: SegmentationSet, views: PairedViews, settings: FineTuning) -> list[float]:
    """Train ``model`` on ``train``'s pairs for ``settings.steps`` steps (torch's generator: run under
    ``seeded``); returns the loss of every epoch."""
    batch_size = min(settings.batch_size, len(train))
    steps_per_epoch = math.ceil(len(train) / batch_size)
    epochs = max(1, math.ceil(settings.steps / steps_per_epoch))
    model.train()

    def loss_of(rows: Tensor) -> Tensor:
        images, masks, _ = views(train.images[rows], train.masks[rows])
        return segmentation_loss(model(images), masks)

    return fit_auxiliary([p for p in model.parameters() if p.requires_grad], loss_of, len(train), epochs=epochs,
                         lr=settings.lr, batch_size=batch_size, weight_decay=settings.weight_decay)


@torch.no_grad()
def predict(model: SegmentationModel, images: Tensor, normalize: nn.Module, batch_size: int = 32) -> Tensor:
    """(N, H, W) predicted class indices of uint8 images, in eval mode."""
    model.eval()
    return torch.cat([model(normalize(to_unit_float(images[i:i + batch_size], images.shape[1]))).argmax(dim=1)
                      for i in range(0, len(images), batch_size)])


def score(model: SegmentationModel, pairs: SegmentationSet, normalize: nn.Module) -> dict[str, float]:
    predicted = predict(model, pairs.images, normalize)
    target = pairs.masks.long()
    return {"dice": mean_dice(predicted, target, pairs.num_classes), "iou": mean_iou(predicted, target, pairs.num_classes)}


def segment(masks: int, seed: int = 0, run: str | Path | None = None, split: str = "dev",
            settings: FineTuning | None = None, image_size: int = 128, data: str | Path | None = None,
            train_set: SegmentationSet | None = None, scored_set: SegmentationSet | None = None) -> dict:
    """Fine-tune on ``masks`` training masks (fixed by ``seed``) from scratch or from ``run``, and score
    the development carve (``split="dev"``) or the validation images (``split="val"``). ``data``: a
    Kvasir-SEG folder (default: ``$CONTRASTKIT_DATA``'s); ``train_set`` / ``scored_set``: sets already
    read (the benchmark reads them once)."""
    settings = settings or FineTuning()
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} (dev: the 60-image carve of train, for "
                          f"choices; val: the 120 validation images, scored once); got '{split}'.")
    pretrained = run_start(run, image_size) if run is not None else None  # a wrong run fails before any reading
    train_set = train_set if train_set is not None else read_kvasir("train", image_size, data)
    available, carve = development_carve(len(train_set))
    if split == "val":
        available = np.arange(len(train_set))
        scored = scored_set if scored_set is not None else read_kvasir("val", image_size, data)
    else:
        scored = train_set.subset(carve)
    rows = label_budget(available, masks, seed, len(train_set))
    labelled = train_set.subset(rows)
    with seeded(seed):
        start = pretrained or scratch_start(train_set.images, settings, image_size)
        model = build_model(start, train_set.num_classes)
        views = PairedViews(image_size, start.mean, start.std, channels=train_set.images.shape[1])
        losses = finetune(model, labelled, views, settings)
    result = score(model, scored, Normalize(start.mean, start.std, train_set.images.shape[1]))
    return {"start": start.source, "masks": masks, "seed": seed, "split": split, "scored_images": len(scored),
            "training_rows": [int(r) for r in rows], "final_loss": losses[-1], **result,
            "settings": asdict(settings)}
