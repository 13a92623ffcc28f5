"""Fine-tuning evaluation of a text encoder: ``contrastkit evaluate --fine-tune --run RUN --labels N --data TASK``.

The run's :class:`~contrastkit.modalities.text.encoders.TextEncoder` (Transformer + its pooling, as it
embeds) and a linear head are trained end to end on ``N`` labelled texts
(:mod:`contrastkit.evaluation.fine_tune`), beside the frozen kNN and linear probes on the same labels.
Layer-wise rate decay (``layer_decay``) runs over the Transformer's layers (a Hugging Face BERT's
``encoder.layer``): the token embeddings learn slowest, the last layer fastest.

Labelled texts are (text, label) rows, the data of a ``clustering`` task of the text task runner
(:mod:`contrastkit.modalities.text.task_files`: e.g. ``benchmarks/text_tasks/wordnet-supersenses.yaml``,
WordNet definitions labelled by supersense), or a CSV / TSV / JSONL table with a text and a label
column (found by name as the task runner finds them: :data:`~contrastkit.modalities.text.task_data.ROLE_ALIASES`).
The rows follow the evaluation protocol of the other modalities: the development rows are a
stratified carve (``dev_size``) of the task's ``dev`` data, the ``N`` labels are drawn balanced from
the rest, and the task's ``test`` data is read and scored only with ``split="test"``, once, after the
rate and the epoch were chosen on the carve (a plain table has no test part).

Texts are tokenised once, padded to the longest (at most ``max_length`` tokens, default the
encoder's); each batch is cut back to its own longest text, which changes nothing (right padding,
masked attention). No augmentation: the Transformer's own dropout is the noise of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.evaluation.fine_tune import balanced_labels, carve_development, probe_and_fine_tune
from contrastkit.modalities.text.task_files import TASK_SUFFIXES, DataEntry, TaskSpec, read_task_file

SPLITS = ("dev", "test")
EMBED_BATCH = 256


def labelled_text_task(data: str | Path) -> TaskSpec:
    """The clustering task behind ``data``: a task file (.yaml / .yml / .json) of type ``clustering``,
    or a table of (text, label) rows read as the ``dev`` data of such a task."""
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data '{path}' does not exist: give a clustering task file or a CSV/TSV/JSONL table of "
                        f"(text, label) rows.")
    if path.suffix in TASK_SUFFIXES:
        spec = read_task_file(path)
        if spec.type != "clustering":
            raise ConfigError(f"The task '{path}' is a {spec.type} task; fine-tuning a text encoder needs labelled "
                              f"texts, a clustering task (text, label).")
        return spec
    return TaskSpec(name=path.name, type="clustering", file=path, data={"*": DataEntry(path)}, shared=True,
                    metric="v_measure")


def read_labelled_texts(spec: TaskSpec, split: str) -> tuple[list[str], list[str]]:
    from contrastkit.modalities.text.task_data import read_clustering_task

    if spec.entry(split) is None:
        raise ConfigError(f"--split {split}: '{spec.file}' has no {split} data (a table is the dev data only; a task "
                          f"file names its test data under data: test:).")
    return read_clustering_task(spec, split)


def class_indices(names: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Each name's place in ``classes``; a name not among them (a test-only class) gets an index past
    the last, so that no prediction can match it."""
    index = {name: i for i, name in enumerate(classes)}
    unseen = {name: len(classes) + i for i, name in enumerate(sorted(set(names) - set(index)))}
    return np.asarray([index.get(name, unseen.get(name)) for name in names], dtype=np.int64)


def token_rows(encoder, texts: Sequence[str], max_length: int | None = None) -> Tensor:
    """(N, 2, L) int64: each text's token ids and attention mask, right-padded to the longest."""
    tokens = encoder.tokenize(list(texts), max_length)
    return torch.stack([tokens["input_ids"], tokens["attention_mask"]], dim=1).long()


def pooled_features(encoder: nn.Module, rows: Tensor) -> Tensor:
    """The encoder's sentence embeddings (B, D) of token rows (B, 2, L), cut to the batch's longest text."""
    mask = rows[:, 1]
    length = max(1, int(mask.sum(1).max()))
    return encoder({"input_ids": rows[:, 0, :length], "attention_mask": mask[:, :length]})


def frozen_features(encoder: nn.Module, rows: Tensor) -> np.ndarray:
    """:func:`pooled_features` of every row in eval mode (the encoder's mode restored after)."""
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode():
        features = torch.cat([pooled_features(encoder, rows[i : i + EMBED_BATCH])
                              for i in range(0, len(rows), EMBED_BATCH)])
    encoder.train(was_training)
    return features.float().numpy()


def fine_tune_text_encoder(encoder, data: str | Path, labels: int, *, epochs: int = 30,
                           lrs: Sequence[float] = (1e-4,), encoder_lr_scale: float = 1.0,
                           layer_decay: float | None = None, batch_size: int = 32, weight_decay: float = 0.0,
                           dev_size: float = 1000, seed: int = 0, split: str = "dev",
                           max_length: int | None = None) -> dict:
    """Fine-tune ``encoder`` (a TextEncoder, left untouched) on ``labels`` labelled texts of ``data``;
    the figures as a dict (see the module docstring)."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} for --fine-tune, got {split!r}.")
    spec = labelled_text_task(data)
    texts, names = read_labelled_texts(spec, "dev")
    classes = sorted(set(names))
    if len(classes) < 2:
        raise DataError(f"'{data}' has {len(classes)} label value(s) in its dev data: fine-tuning a classifier "
                        f"needs at least two classes.")
    candidates = np.arange(len(texts))  # the dev data; test rows, when asked for, come after them
    test = None
    if split == "test":
        test_texts, test_names = read_labelled_texts(spec, "test")
        test = np.arange(len(texts), len(texts) + len(test_texts))
        texts, names = [*texts, *test_texts], [*names, *test_names]
    y = class_indices(names, classes)
    rest, dev = carve_development(y, candidates, dev_size, seed)
    labelled = balanced_labels(y, rest, labels, seed)
    rows = token_rows(encoder, texts, max_length)
    frozen = frozen_features(encoder, rows)
    scored = dev if test is None else test
    figures, result, lr, tried = probe_and_fine_tune(
        frozen, y, labelled, dev, test, lrs=lrs, seed=seed, batch_size=batch_size, encoder=encoder,
        features=pooled_features, inputs=rows, num_classes=len(classes), epochs=epochs,
        encoder_lr_scale=encoder_lr_scale, layer_decay=layer_decay, weight_decay=weight_decay,
        eval_batch_size=EMBED_BATCH)
    return {
        "data": str(data), "task": spec.name, "classes": len(classes), "labels": int(len(labelled)),
        "dev_size": int(len(dev)),
        "scored": "test (once, after the choice on dev)" if test is not None else "dev", "n_scored": int(len(scored)),
        **figures, "fine_tune_dev_top1": result.best_dev_top1,
        "chosen": {"lr": lr, "encoder_lr": lr * encoder_lr_scale, "epochs": result.best_epoch,
                   "layer_decay": layer_decay},
        "tried": tried, "augment": "none", "seed": seed,
    }


def fine_tune_text_run(run_dir: str | Path, labels: int, *, data: str | Path | None = None, augment: bool = False,
                       **options) -> dict:
    """:func:`fine_tune_text_encoder` on the encoder of the text run (or text model folder) ``run_dir``.
    ``augment`` is accepted for the command's sake: texts are not augmented."""
    from contrastkit.modalities.text.encoders import load_text_encoder

    if data is None:
        raise ConfigError("evaluate --fine-tune on a text run needs --data: a clustering task file (text, label; "
                          "e.g. benchmarks/text_tasks/wordnet-supersenses.yaml) or a CSV/TSV/JSONL table with a "
                          "text and a label column.")
    encoder = load_text_encoder(run_dir)
    return {"run": str(run_dir), **fine_tune_text_encoder(encoder, data, labels, **options)}
