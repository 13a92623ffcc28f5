"""BERT's masked-language-model loss (objectives/masked_tokens.py) against a naive loop over tokens."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import DataError
from contrastkit.objectives.masked_tokens import masked_token_cross_entropy, masked_token_terms


def naive_masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """mean over (i, t) with a target of log sum_v exp(s_v) - s_{x}, one token at a time."""
    losses = []
    for i in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            target = int(targets[i, t])
            if target == -100:
                continue
            row = [float(v) for v in logits[i, t]]
            losses.append(math.log(sum(math.exp(v) for v in row)) - row[target])
    return sum(losses) / len(losses)


def mlm_inputs(batch=4, length=6, vocab=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64)
    targets = torch.randint(vocab, (batch, length), generator=generator)
    targets[torch.rand(batch, length, generator=generator) < 0.6] = -100
    targets[0, 0] = 3  # at least one masked token
    return logits, targets


def test_mlm_loss_equals_a_naive_loop():
    logits, targets = mlm_inputs()
    assert masked_token_cross_entropy(logits, targets).item() == pytest.approx(
        naive_masked_cross_entropy(logits, targets), rel=1e-12)
    assert objectives.get("masked_language_modelling")(logits, targets=targets).item() == pytest.approx(
        naive_masked_cross_entropy(logits, targets), rel=1e-12)


def test_mlm_reads_masked_positions_only():
    logits, targets = mlm_inputs(seed=1)
    logits.requires_grad_(True)
    loss = masked_token_cross_entropy(logits, targets)
    loss.backward()
    unmasked = targets == -100
    assert torch.count_nonzero(logits.grad[unmasked]) == 0
    assert torch.count_nonzero(logits.grad[~unmasked]) > 0
    perturbed = logits.detach().clone()
    perturbed[unmasked] += 100.0 * torch.randn(int(unmasked.sum()), logits.shape[-1], dtype=torch.float64)
    assert masked_token_cross_entropy(perturbed, targets).item() == loss.item()


def test_mlm_terms_of_a_partition_sum_to_the_whole():
    logits, targets = mlm_inputs(batch=5, seed=2)
    whole = masked_token_terms(logits, targets)
    parts = [masked_token_terms(logits, targets, slice(a, b)) for a, b in ((0, 2), (2, 5))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total)
    assert all(int(p.count) == int((targets != -100).sum()) for p in parts)


def test_mlm_without_masked_tokens_is_zero_and_bad_shapes_are_refused():
    logits, targets = mlm_inputs()
    assert masked_token_cross_entropy(logits, torch.full_like(targets, -100)).item() == 0.0
    with pytest.raises(DataError, match="targets"):
        masked_token_cross_entropy(logits, targets[:, :-1])
    with pytest.raises(DataError, match="vocabulary"):
        masked_token_cross_entropy(logits, torch.full_like(targets, logits.shape[-1]))


# --- ELECTRA's replaced-token detection (objectives/replaced_token_detection.py) ---

def naive_replaced_token_detection(logits, replaced, attention_mask) -> float:
    """mean over real tokens of -(y log p + (1 - y) log(1 - p)), p = 1 / (1 + exp(-s)), one token at a time."""
    losses = []
    for i in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if attention_mask[i, t]:
                p = 1.0 / (1.0 + math.exp(-float(logits[i, t])))
                y = float(replaced[i, t])
                losses.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    return sum(losses) / len(losses)


def test_replaced_token_detection_equals_a_naive_loop_and_ignores_padding():
    from contrastkit.objectives.replaced_token_detection import electra_loss, replaced_token_detection_loss

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    replaced = torch.rand(3, 8, generator=generator) < 0.3
    attention_mask = torch.ones(3, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0
    expected = naive_replaced_token_detection(logits, replaced, attention_mask)
    assert replaced_token_detection_loss(logits, replaced, attention_mask).item() == pytest.approx(expected, rel=1e-12)
    weighted = objectives.get("replaced_token_detection", weight=50.0)(logits, replaced=replaced,
                                                                       attention_mask=attention_mask)
    assert weighted.item() == pytest.approx(50.0 * expected, rel=1e-12)
    padded = logits.clone()
    padded[1, 5:] = 1e3
    assert replaced_token_detection_loss(padded, replaced, attention_mask).item() == pytest.approx(expected, rel=1e-12)
    mlm = torch.tensor(2.0, dtype=torch.float64)
    assert electra_loss(mlm, torch.tensor(expected)).item() == pytest.approx(2.0 + 50.0 * expected)


def test_replaced_labels_are_a_comparison_with_the_originals():
    from contrastkit.objectives.replaced_token_detection import replaced_labels

    original = torch.tensor([[101, 5, 6, 7, 102]])
    corrupted = torch.tensor([[101, 5, 9, 7, 102]])  # position 2 replaced; a sample equal to the original is not
    assert replaced_labels(corrupted, original).tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0]]
