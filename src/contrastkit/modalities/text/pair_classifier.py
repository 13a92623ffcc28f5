"""Sentence-pair classification by fine-tuning an encoder: MRPC (paraphrase or not), accuracy and F1.

The classifier is DSE's cross-encoder (:class:`~contrastkit.modalities.text.cross_encoder.CrossEncoder`):
the pair read as one sequence (``[CLS] a [SEP] b [SEP]``), mean-pooled, a linear head to one logit,
``p(paraphrase) = sigmoid(logit)``. It is fine-tuned end to end with binary cross-entropy against the
0/1 label -- :func:`~contrastkit.modalities.text.cross_encoder.train_cross_encoder` with ``score_scale``
1, i.e. through the engine, AdamW, warm-up then linear decay. Any encoder folder can be its Transformer:
``minilm`` or the ``encoder/`` of a text run, which is how a pretraining method is compared with the base.

GLUE scores MRPC by accuracy and by F1 of the positive (paraphrase) class. The decision threshold on
``p`` is 0.5 unless one is chosen on development pairs (:func:`choose_threshold`).

MRPC's files (Dolan & Brockett 2005; ``$CONTRASTKIT_DATA/mrpc``, see its PROVENANCE) are UTF-8 with a
byte-order mark, tab-separated, without a header: label, id 1, id 2, sentence 1, sentence 2. Sentences
hold double quotes, so lines are split on tabs, never read with csv's quoting.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrastkit.core.errors import DataError
from contrastkit.modalities.text.cross_encoder import CrossEncoder, train_cross_encoder
from contrastkit.modalities.text.task_metrics import best_threshold_accuracy

MRPC_TRAIN, MRPC_TEST = "msr_paraphrase_train.txt", "msr_paraphrase_test.txt"


@dataclass(frozen=True)
class LabelledPairs:
    """Sentence pairs with a 0/1 label each."""

    first: list[str]
    second: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows) -> LabelledPairs:
        rows = [int(r) for r in rows]
        return LabelledPairs([self.first[r] for r in rows], [self.second[r] for r in rows], self.labels[rows])


def read_mrpc(path: str | os.PathLike) -> LabelledPairs:
    """The pairs of an MRPC file (``msr_paraphrase_{train,test}.txt``), every line a pair."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"The MRPC file '{path}' does not exist; it is {MRPC_TRAIN} or {MRPC_TEST} in "
                        "$CONTRASTKIT_DATA/mrpc.")
    first, second, labels = [], [], []
    with open(path, encoding="utf-8-sig") as handle:  # the files start with a byte-order mark
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5 or fields[0] not in ("0", "1"):
                raise DataError(f"Line {number} of '{path}' is not an MRPC pair (label 0/1, id, id, sentence, "
                                f"sentence, tab-separated): {line[:80]!r}.")
            labels.append(int(fields[0]))
            first.append(fields[3])
            second.append(fields[4])
    return LabelledPairs(first, second, np.asarray(labels, dtype=np.int64))


def binary_metrics(probabilities, labels, threshold: float = 0.5) -> dict[str, float]:
    """``accuracy`` and ``f1`` of the positive class for "positive iff probability >= threshold"."""
    predicted = np.asarray(probabilities, dtype=np.float64) >= threshold
    truth = np.asarray(labels).astype(bool)
    if predicted.shape != truth.shape or truth.size == 0:
        raise DataError(f"binary_metrics: {predicted.size} probabilities for {truth.size} labels.")
    true_positives = int((predicted & truth).sum())
    errors = int((predicted != truth).sum())
    f1 = 2 * true_positives / max(2 * true_positives + errors, 1)  # 2TP / (2TP + FP + FN)
    return {"accuracy": float((predicted == truth).mean()), "f1": float(f1)}


def choose_threshold(probabilities, labels) -> float:
    """The threshold of highest accuracy on these (development) pairs."""
    return best_threshold_accuracy(probabilities, labels)[1]


def fine_tune_pair_classifier(backbone: str | os.PathLike, pairs: LabelledPairs, *, epochs: float = 1.0,
                              batch_size: int = 16, lr: float = 2e-5, max_length: int = 128, seed: int = 0,
                              run_dir: str | os.PathLike | None = None) -> CrossEncoder:
    """A cross-encoder on ``backbone`` (a model folder or ``minilm``) fine-tuned on ``pairs`` for
    ``epochs`` passes (incomplete last batches dropped), its head drawn from ``seed``; in eval mode."""
    model = CrossEncoder.from_backbone(backbone, max_length=max_length, seed=seed)
    steps = max(1, math.floor(epochs * (len(pairs) // batch_size)))
    train_cross_encoder(model, pairs.first, pairs.second, pairs.labels.astype(np.float32), steps,
                        batch_size=batch_size, lr=lr, seed=seed, score_scale=1.0, run_dir=run_dir)
    return model
