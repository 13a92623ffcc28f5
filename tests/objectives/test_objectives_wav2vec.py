"""wav2vec 2.0's losses (objectives/wav2vec.py): the contrastive term against a naive loop with the
same distractor indices, the codebook diversity term against its formula written out and its two
extremes."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import objectives
from contrastkit.core.errors import DataError
from contrastkit.objectives.wav2vec import codebook_diversity, codebook_usage, wav2vec_contrastive_terms


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def naive_contrastive(contexts, quantized, masked, distractors, temperature) -> float:
    """Eq. 3, one masked step at a time; a distractor equal to the target is not a negative."""
    terms = []
    for i in range(contexts.shape[0]):
        for t in range(contexts.shape[1]):
            if not masked[i, t]:
                continue
            positive = math.exp(cosine(contexts[i, t], quantized[i, t]) / temperature)
            denominator = positive
            for d in distractors[i, t].tolist():
                if not torch.equal(quantized[i, d], quantized[i, t]):
                    denominator += math.exp(cosine(contexts[i, t], quantized[i, d]) / temperature)
            terms.append(-math.log(positive / denominator))
    return sum(terms) / len(terms)


def contrastive_inputs(batch=3, steps=9, dim=4, k=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    contexts = torch.randn(batch, steps, dim, generator=generator, dtype=torch.float64)
    quantized = contexts + torch.randn(batch, steps, dim, generator=generator, dtype=torch.float64)
    masked = torch.rand(batch, steps, generator=generator) < 0.5
    masked[:, :2] = True  # at least two masked steps per utterance
    distractors = torch.zeros(batch, steps, k, dtype=torch.long)
    for i in range(batch):
        candidates = torch.nonzero(masked[i]).flatten()
        for t in candidates.tolist():
            others = candidates[candidates != t]
            distractors[i, t] = others[torch.randint(len(others), (k,), generator=generator)]
    return contexts, quantized, masked, distractors


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_the_contrastive_loss_equals_a_naive_loop_with_the_same_distractors(temperature):
    contexts, quantized, masked, distractors = contrastive_inputs()
    loss = objectives.get("wav2vec_contrastive", temperature=temperature)(
        contexts, quantized, masked=masked, distractors=distractors)
    assert loss.item() == pytest.approx(naive_contrastive(contexts, quantized, masked, distractors, temperature),
                                        rel=1e-10)


def test_a_distractor_with_the_targets_codewords_is_no_negative():
    contexts, quantized, masked, distractors = contrastive_inputs(seed=1)
    i, t = 0, 0
    d = int(distractors[i, t, 0])
    quantized[i, d] = quantized[i, t]  # the same quantised vector: the same codewords
    loss = objectives.get("wav2vec_contrastive")(contexts, quantized, masked=masked, distractors=distractors)
    assert loss.item() == pytest.approx(naive_contrastive(contexts, quantized, masked, distractors, 0.1), rel=1e-10)
    only_itself = distractors.clone()
    only_itself[i, t] = t  # every distractor is the target itself: the step's loss is 0
    terms = wav2vec_contrastive_terms(contexts[:1], quantized[:1], masked[:1] & (torch.arange(9) == t),
                                      only_itself[:1])
    assert terms.total.item() == 0.0 and terms.count == 1


def test_contrastive_terms_of_a_partition_of_the_batch_sum_to_the_whole():
    contexts, quantized, masked, distractors = contrastive_inputs(batch=5, seed=2)
    whole = wav2vec_contrastive_terms(contexts, quantized, masked, distractors)
    parts = [wav2vec_contrastive_terms(contexts, quantized, masked, distractors, anchor_rows=slice(a, b))
             for a, b in ((0, 2), (2, 5))]
    torch.testing.assert_close(sum(p.total for p in parts), whole.total)
    assert all(int(p.count) == int(masked.sum()) for p in parts)


def naive_diversity(logits: torch.Tensor, frames: torch.Tensor) -> float:
    """L_d = (GV - sum_g exp(-sum_v p_gv log p_gv)) / (GV), p the softmax averaged over the frames."""
    _, _, groups, entries = logits.shape
    kept = [logits[i, t] for i in range(logits.shape[0]) for t in range(logits.shape[1]) if frames[i, t]]
    perplexities = 0.0
    for g in range(groups):
        p = [sum(math.exp(row[g, v]) / sum(math.exp(x) for x in row[g].tolist()) for row in kept) / len(kept)
             for v in range(entries)]
        perplexities += math.exp(-sum(q * math.log(q) for q in p))
    return (groups * entries - perplexities) / (groups * entries)


def test_the_diversity_loss_equals_its_formula_written_out():
    generator = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(3, 5, 2, 4, generator=generator, dtype=torch.float64)
    frames = torch.rand(3, 5, generator=generator) < 0.6
    loss = objectives.get("codebook_diversity")(logits, frames=frames)
    assert loss.item() == pytest.approx(naive_diversity(logits, frames), rel=1e-10)
    everything = objectives.get("codebook_diversity")(logits)
    assert everything.item() == pytest.approx(naive_diversity(logits, torch.ones(3, 5, dtype=torch.bool)), rel=1e-10)


def test_the_diversity_loss_is_zero_for_uniform_use_and_one_entry_gives_gv_minus_g_over_gv():
    groups, entries = 3, 8
    uniform = torch.zeros(2, 4, groups, entries, dtype=torch.float64)  # equal logits: every entry 1/V
    assert objectives.get("codebook_diversity")(uniform).item() == pytest.approx(0.0, abs=1e-12)
    one_entry = torch.full((2, 4, groups, entries), -1e4, dtype=torch.float64)
    one_entry[..., 5] = 1e4  # every frame picks entry 5 in every group
    expected = (groups * entries - groups) / (groups * entries)
    assert objectives.get("codebook_diversity")(one_entry).item() == pytest.approx(expected, abs=1e-12)
    # Uniform use over the batch (each frame sure of a different entry) is as good as uniform logits.
    spread = torch.full((1, entries, 1, entries), -1e4, dtype=torch.float64)
    spread[0, torch.arange(entries), 0, torch.arange(entries)] = 1e4
    assert codebook_diversity(codebook_usage(spread)).item() == pytest.approx(0.0, abs=1e-12)


def test_diversity_gradients_reach_the_logits_and_shapes_are_checked():
    logits = torch.randn(2, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    objectives.get("codebook_diversity")(logits).backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(DataError, match=r"\(B, T, G, V\)"):
        objectives.get("codebook_diversity")(torch.randn(2, 3, 4))
    with pytest.raises(DataError, match=r"\(B, T, D\)"):
        objectives.get("wav2vec_contrastive")(torch.randn(2, 3), torch.randn(2, 3),
                                             masked=torch.ones(2, 3, dtype=torch.bool),
                                             distractors=torch.zeros(2, 3, 1, dtype=torch.long))
