"""Fine-tuning evaluation of an image run: ``contrastkit evaluate --fine-tune --run RUN --labels N``.

The run's encoder (``backbone``; its representation ``backbone(eval_view(x))``, as exported) and a
linear head are trained end to end on ``N`` labels (:mod:`contrastkit.evaluation.fine_tune`), beside
the frozen probes on the same labels: weighted kNN and the linear probe of
:mod:`contrastkit.evaluation.protocol`. The rows come from the run folder (``rows.npy``,
``split.json``, ``labels.npy``): a stratified development carve of the run's training part
(``dev_size``), the ``N`` labels drawn balanced from the rest, and the run's held-out part, scored
only with ``split="test"`` and then once, after the rate and the epoch were chosen on the carve.

Training batches are augmented with a random crop (the image padded by an eighth of its size on
each side, by reflection) and a horizontal flip, drawn per image; evaluation uses the eval view only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.engine.run_folder import read_split
from contrastkit.evaluation.fine_tune import balanced_labels, carve_development, probe_and_fine_tune

SPLITS = ("dev", "test")


def flip_crop(images: Tensor) -> Tensor:
    """Each image of (B, C, H, W) reflection-padded by max(1, H // 8), randomly cropped back to
    (H, W) and flipped left-right with probability 1/2 (torch's generator)."""
    batch, _, height, width = images.shape
    pad = max(1, height // 8)
    padded = nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype)
    tops = torch.randint(0, 2 * pad + 1, (batch,))
    lefts = torch.randint(0, 2 * pad + 1, (batch,))
    flips = torch.rand(batch) < 0.5
    crops = []
    for image, top, left, flip in zip(padded, tops.tolist(), lefts.tolist(), flips.tolist()):
        crop = image[:, top : top + height, left : left + width]
        crops.append(crop.flip(-1) if flip else crop)
    return torch.stack(crops)


def run_rows(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data rows of the embeddings, their labels, training positions, held-out positions)."""
    for name in ("split.json", "labels.npy", "rows.npy"):
        if not (run_dir / name).is_file():
            raise DataError(f"'{run_dir / name}' does not exist: fine-tuning needs an image run on labelled data "
                            f"(its split.json, labels.npy and rows.npy).")
    train, holdout = read_split(run_dir)
    return np.load(run_dir / "rows.npy"), np.load(run_dir / "labels.npy"), train, holdout


def fine_tune_image_run(run_dir: str | Path, labels: int, *, epochs: int = 30, lrs: Sequence[float] = (1e-3,),
                        encoder_lr_scale: float = 1.0, layer_decay: float | None = None, batch_size: int = 64,
                        weight_decay: float = 0.0, dev_size: float = 1000, seed: int = 0, split: str = "dev",
                        augment: bool = True, from_scratch: bool = False, trust_checkpoint: bool = False) -> dict:
    """Fine-tune the encoder of the image run ``run_dir`` on ``labels`` labels; the figures as a dict
    (see the module docstring). ``from_scratch``: the same architecture freshly initialised (seeded by
    ``seed``) instead of the run's weights, the baseline that pretraining is measured against; the
    rows, labels, views and loop are the same."""
    from contrastkit.modalities.image.sources import open_image_source
    from contrastkit.modalities.image.training.restore import load_method

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} for --fine-tune, got {split!r}.")
    run_dir = Path(run_dir)
    method, config, data = load_method(run_dir / "checkpoints" / "last.ckpt", trust_checkpoint=trust_checkpoint)
    backbone, eval_view = getattr(method, "backbone", None), getattr(method, "eval_view", None)
    if backbone is None or eval_view is None:
        raise ConfigError(f"Method '{config.method}' has no single backbone behind its eval view, so its encoder "
                          f"cannot be fine-tuned as backbone + head.")
    if from_scratch:
        backbone.load_state_dict(fresh_backbone(config, data, seed).state_dict())
    if str(config.data).startswith("shards:"):
        raise ConfigError("Fine-tuning reads the run's images into memory; a streamed (shards:) run is not "
                          "supported yet.")
    rows, y, train_part, holdout_part = run_rows(run_dir)
    source = open_image_source(config.data, image_size=data.image_size, channels=data.channels,
                               skip_unreadable=config.skip_unreadable)
    images = source.images[torch.from_numpy(rows.astype(np.int64))]
    rest, dev = carve_development(y, train_part, dev_size, seed)
    labelled = balanced_labels(y, rest, labels, seed)
    test = holdout_part if split == "test" else None
    if split == "test" and len(holdout_part) == 0:
        raise ConfigError(f"The run '{run_dir}' kept no held-out part (--holdout 0): there is no test part to score.")

    with torch.inference_mode():
        frozen = torch.cat([method.embed(images[i : i + 512]) for i in range(0, len(images), 512)]).numpy()
    scored = dev if test is None else test

    def features(encoder: nn.Module, batch: Tensor) -> Tensor:
        return encoder(eval_view(batch))

    figures, result, lr, tried = probe_and_fine_tune(
        frozen, y, labelled, dev, test, lrs=lrs, seed=seed, batch_size=batch_size, encoder=backbone,
        features=features, inputs=images, num_classes=int(y.max()) + 1, epochs=epochs,
        encoder_lr_scale=encoder_lr_scale, layer_decay=layer_decay, weight_decay=weight_decay,
        augment=flip_crop if augment else None)
    return {
        "run": str(run_dir), "method": config.method, "labels": int(len(labelled)), "dev_size": int(len(dev)),
        "scored": "test (held-out part, once, after the choice on dev)" if test is not None else "dev",
        "n_scored": int(len(scored)), **figures,
        "fine_tune_dev_top1": result.best_dev_top1,
        "chosen": {"lr": lr, "encoder_lr": lr * encoder_lr_scale, "epochs": result.best_epoch,
                   "layer_decay": layer_decay},
        "tried": tried, "augment": "flip-crop" if augment else "none", "seed": seed,
        "init": "scratch" if from_scratch else "run",
    }


def fresh_backbone(config, data, seed: int) -> nn.Module:
    """The run's backbone architecture, newly initialised under ``seed`` (as a fit builds it)."""
    from contrastkit.core.seeding import seeded
    from contrastkit.modalities.image.methods.parts import build_backbone

    if config.backbone == "auto":
        raise ConfigError("Fine-tuning from scratch rebuilds the run's --backbone by name; this run sized its own "
                          "(--backbone auto), so name the backbone when fitting.")
    with seeded(seed):
        return build_backbone(config.backbone, data, config.width, config)
