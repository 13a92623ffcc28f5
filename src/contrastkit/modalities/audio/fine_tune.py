"""Fine-tuning evaluation of an audio run: ``contrastkit evaluate --fine-tune --run RUN --labels N``.

The run's method, reloaded from its folder (:func:`~contrastkit.modalities.audio.training.load_audio_run`),
gives a clip's representation with ``method.embed``: its encoder and pooling (SimCLR / BYOL: the
mean of the spectrogram encoder's frames; CPC: of its contexts; wav2vec 2.0 / HuBERT: of the
Transformer's frames; MAE: of its encoded patches). That function and a linear head are trained end
to end on ``N`` labelled clips (:mod:`contrastkit.evaluation.fine_tune`), beside the frozen kNN and
linear probes on the same labels. The method's other parts (projection heads, predictors, momentum
targets, quantiser, decoder) take no part in ``embed``, get no gradient and stay as they are.
Layer-wise rate decay runs over the Transformer's blocks (wav2vec 2.0, HuBERT, MAE). No
augmentation.

Each clip is embedded whole and alone, at its own length (clips of equal length share a forward
pass): the frame encoder's convolutions reach into a batch's padding, so a padded clip's
embedding would depend on the batch it was drawn in. The frozen probes read the same function, so
an encoder at rate 0 trains the head on exactly the features the probes see.

The rows follow the run's split (:mod:`contrastkit.modalities.audio.cli`, its config.yaml): for
FSDD, the development rows are the split's development part of the training side (repetitions
5-9, or speaker nicolas; ``dev_size`` is not used), the ``N`` labels are drawn balanced from the
rest of the training side, and the split's test part (repetitions 0-4, or speaker theo) is scored
only with ``split="test"``, once, after the rate and the epoch were chosen on the development part.
Another labelled folder: the run's fixed stratified 30 % carve is the development part; it has no
test part.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.fine_tune import balanced_labels, probe_and_fine_tune

SPLITS = ("dev", "test")
EMBED_BATCH = 256


def clip_rows(clips, options: dict, split: str = "dev") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(candidates, development rows, test rows or None)``: the labelled clips of the training side
    that labels are drawn from, the development part, and (``split="test"``) the test part (module
    docstring)."""
    from contrastkit.modalities.audio.cli import parts
    from contrastkit.modalities.audio.sources import fsdd_split

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} for --fine-tune, got {split!r}.")
    if clips.labels is None:
        raise DataError(f"The clips of '{options['data']}' have no labels: nothing to fine-tune on. Fit the run on "
                        f"labelled clips (subfolders per class, or --label-pattern REGEX with a group 'label').")
    if clips.speakers is None and split == "test":
        raise ConfigError(f"--split test: '{options['data']}' has no test part (only FSDD's splits are known; the "
                          f"run's 30% carve is its development part).")
    rest, dev, _ = parts(clips, {**options, "eval_split": "dev"})
    test = fsdd_split(clips, options["split"], "test")[1] if split == "test" else None
    return rest[clips.labels[rest] >= 0], dev, test


class ClipFeatures:
    """``features(method, positions) -> (B, D)``: ``method.embed`` of the clips at ``positions``,
    each at its own length (module docstring)."""

    def __init__(self, clips):
        self.clips = clips

    def __call__(self, method: nn.Module, positions: Tensor) -> Tensor:
        index = positions.cpu().numpy()
        lengths = self.clips.lengths[index]
        groups = [np.flatnonzero(lengths == length) for length in np.unique(lengths)]
        embedded = []
        for rows in groups:
            waves, counts = self.clips.batch(index[rows])
            embedded.append(method.embed({"wave": torch.from_numpy(waves), "length": torch.from_numpy(counts)}))
        order = torch.from_numpy(np.argsort(np.concatenate(groups), kind="stable"))
        return torch.cat(embedded)[order]  # back in the order of ``positions``


def frozen_features(method: nn.Module, features: ClipFeatures, positions: np.ndarray, total: int) -> np.ndarray:
    """``features`` of the clips at ``positions`` in eval mode, in rows of a (total, D) array (zeros elsewhere)."""
    was_training = method.training
    method.eval()
    with torch.inference_mode():
        chunks = [features(method, torch.as_tensor(positions[i : i + EMBED_BATCH]))
                  for i in range(0, len(positions), EMBED_BATCH)]
    method.train(was_training)
    embedded = torch.cat(chunks).float().numpy()
    frozen = np.zeros((total, embedded.shape[1]), dtype=np.float32)
    frozen[positions] = embedded
    return frozen


def fine_tune_audio_run(run_dir: str | Path, labels: int, *, epochs: int = 30, lrs: Sequence[float] = (1e-3,),
                        encoder_lr_scale: float = 1.0, layer_decay: float | None = None, batch_size: int = 64,
                        weight_decay: float = 0.0, seed: int = 0, split: str = "dev", augment: bool = False) -> dict:
    """Fine-tune the encoder of the audio run ``run_dir`` on ``labels`` labelled clips; the figures as a
    dict (see the module docstring). ``augment`` is accepted for the command's sake: clips are not augmented."""
    from contrastkit.modalities.audio.cli import DEFAULTS
    from contrastkit.modalities.audio.sources import open_audio_folder
    from contrastkit.modalities.audio.training import load_audio_run

    run_dir = Path(run_dir)
    options = {**DEFAULTS, **(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})}
    if not options.get("data"):
        raise DataError(f"'{run_dir / 'config.yaml'}' names no data (written by 'contrastkit fit' on audio?).")
    method = load_audio_run(run_dir).cpu()
    clips = open_audio_folder(options["data"], options["sample_rate"], options["label_pattern"])
    candidates, dev, test = clip_rows(clips, options, split)
    y = np.where(clips.labels >= 0, clips.labels, 0)  # unlabelled clips are in no row set
    labelled = balanced_labels(y, candidates, labels, seed)
    scored = dev if test is None else test
    features = ClipFeatures(clips)
    used = np.unique(np.concatenate([labelled, dev, *(() if test is None else (test,))]))
    frozen = frozen_features(method, features, used, len(clips))
    figures, result, lr, tried = probe_and_fine_tune(
        frozen, y, labelled, dev, test, lrs=lrs, seed=seed, batch_size=batch_size, encoder=method,
        features=features, inputs=torch.arange(len(clips)), num_classes=int(y.max()) + 1, epochs=epochs,
        encoder_lr_scale=encoder_lr_scale, layer_decay=layer_decay, weight_decay=weight_decay,
        eval_batch_size=EMBED_BATCH)
    split_name = f"fsdd {options['split']} split" if clips.speakers is not None else "the run's 30% carve"
    return {
        "run": str(run_dir), "method": options["method"], "data": str(options["data"]), "rows": split_name,
        "labels": int(len(labelled)), "dev_size": int(len(dev)),
        "scored": "test (once, after the choice on dev)" if test is not None else "dev", "n_scored": int(len(scored)),
        **figures, "fine_tune_dev_top1": result.best_dev_top1,
        "chosen": {"lr": lr, "encoder_lr": lr * encoder_lr_scale, "epochs": result.best_epoch,
                   "layer_decay": layer_decay},
        "tried": tried, "augment": "none", "seed": seed,
    }
