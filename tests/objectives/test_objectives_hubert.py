"""HuBERT's masked prediction loss (objectives/hubert.py) against a naive loop over frames."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.objectives.hubert import hubert_terms


def naive_hubert(predictions, embeddings, targets, masked, temperature, unmasked_weight) -> float:
    """(1 - w) mean_masked CE + w mean_unmasked CE, CE = -log softmax_c(cos(p_t, e_c) / tau)[z_t]."""
    def cross_entropy(i: int, t: int) -> float:
        logits = [float(predictions[i, t] @ e) / (float(predictions[i, t].norm()) * float(e.norm())) / temperature
                  for e in embeddings]
        return math.log(sum(math.exp(x) for x in logits)) - logits[int(targets[i, t])]

    on, off = [], []
    for i in range(predictions.shape[0]):
        for t in range(predictions.shape[1]):
            if targets[i, t] >= 0:
                (on if masked[i, t] else off).append(cross_entropy(i, t))
    loss = (1 - unmasked_weight) * sum(on) / len(on)
    return loss + (unmasked_weight * sum(off) / len(off) if unmasked_weight else 0.0)


def hubert_inputs(batch=3, steps=7, dim=4, clusters=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    predictions = torch.randn(batch, steps, dim, generator=generator, dtype=torch.float64)
    embeddings = torch.randn(clusters, dim, generator=generator, dtype=torch.float64)
    targets = torch.randint(clusters, (batch, steps), generator=generator)
    targets[0, -2:] = -1  # padding frames: no target
    masked = torch.rand(batch, steps, generator=generator) < 0.5
    masked[:, 0] = True
    return predictions, embeddings, targets, masked


@pytest.mark.parametrize("temperature, unmasked_weight", [(0.1, 0.0), (0.5, 0.3)])
def test_hubert_equals_a_naive_loop(temperature, unmasked_weight):
    predictions, embeddings, targets, masked = hubert_inputs()
    loss = objectives.get("hubert_masked_prediction", temperature=temperature, unmasked_weight=unmasked_weight)(
        predictions, cluster_embeddings=embeddings, targets=targets, masked=masked)
    expected = naive_hubert(predictions, embeddings, targets, masked, temperature, unmasked_weight)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_hubert_terms_of_a_partition_sum_to_the_whole_and_unmasked_frames_do_not_count_by_default():
    predictions, embeddings, targets, masked = hubert_inputs(batch=5, seed=1)
    whole = hubert_terms(predictions, embeddings, targets, masked, unmasked_weight=0.2)
    parts = [hubert_terms(predictions, embeddings, targets, masked, unmasked_weight=0.2, anchor_rows=slice(a, b))
             for a, b in ((0, 1), (1, 5))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total)
    changed = predictions.clone()
    changed[~masked] = torch.randn(int((~masked).sum()), 4, dtype=torch.float64)
    loss = objectives.get("hubert_masked_prediction")
    torch.testing.assert_close(loss(changed, cluster_embeddings=embeddings, targets=targets, masked=masked),
                               loss(predictions, cluster_embeddings=embeddings, targets=targets, masked=masked))


def test_hubert_refuses_bad_targets_and_weights():
    predictions, embeddings, targets, masked = hubert_inputs()
    with pytest.raises(DataError, match="cluster ids below"):
        objectives.get("hubert_masked_prediction")(predictions, cluster_embeddings=embeddings, targets=targets + 5,
                                                   masked=masked)
    with pytest.raises(ConfigError, match="unmasked_weight"):
        objectives.get("hubert_masked_prediction", unmasked_weight=1.5)
