"""ICT (inverse cloze task): the loss against a naive loop, contexts as positives, kept sentences."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.methods import build_text_method
from tests.text_method_fakes import SENTENCES, BagOfWordsEncoder


def naive_ict_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> float:
    total = 0.0
    for i in range(len(queries)):
        q = queries[i] / queries[i].norm()
        logits = [float(q @ (keys[j] / keys[j].norm())) / temperature for j in range(len(keys))]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return total / len(queries)


def batch(n: int = 6) -> dict:
    texts = SENTENCES[:n]
    contexts = [SENTENCES[(i + 1) % len(SENTENCES)] + " " + SENTENCES[(i + 2) % len(SENTENCES)] for i in range(n)]
    return {"texts": texts, "contexts": contexts, "indices": torch.arange(n)}


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_equals_naive_loop_with_contexts_as_positives(symmetric):
    encoder = BagOfWordsEncoder()
    method = build_text_method("ict", encoder, keep_sentence=0.0, temperature=0.1, symmetric=symmetric)
    b = batch()
    loss, logs = method.training_loss(b)
    with torch.no_grad():
        q, k = encoder.encode(b["texts"]).double(), encoder.encode(b["contexts"]).double()
    expected = naive_ict_loss(q, k, 0.1)
    if symmetric:
        expected = 0.5 * (expected + naive_ict_loss(k, q, 0.1))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # the positive is the context, not the sentence itself: a self-positive loss differs
    assert float(loss) != pytest.approx(naive_ict_loss(q, q, 0.1), rel=1e-3)
    loss.backward()
    assert encoder.vectors.grad is not None and encoder.vectors.grad.abs().sum() > 0
    assert -1.0 <= logs["positive_cosine"] <= 1.0


def test_keep_sentence_puts_the_sentence_back_at_the_stated_rate():
    method = build_text_method("ict", BagOfWordsEncoder(), keep_sentence=1.0)
    b = batch(4)
    assert method.contexts_with_kept_sentences(b["texts"], b["contexts"]) == [
        f"{t} {c}" for t, c in zip(b["texts"], b["contexts"])]
    method = build_text_method("ict", BagOfWordsEncoder(), keep_sentence=0.3)
    torch.manual_seed(0)
    texts, contexts = ["s"] * 4000, ["c"] * 4000
    kept = sum(c != "c" for c in method.contexts_with_kept_sentences(texts, contexts)) / 4000
    assert abs(kept - 0.3) < 0.03


def test_errors():
    with pytest.raises(ConfigError, match="keep_sentence"):
        build_text_method("ict", BagOfWordsEncoder(), keep_sentence=2.0)
    with pytest.raises(ConfigError, match="Did you mean"):
        build_text_method("ict", BagOfWordsEncoder(), temprature=0.1)
    method = build_text_method("ict", BagOfWordsEncoder())
    with pytest.raises(DataError, match="contexts"):
        method.training_loss({"texts": SENTENCES[:3], "indices": torch.arange(3)})
