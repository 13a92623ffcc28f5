"""DebCSE: surface similarity, propensities and weights by hand; the loss against a naive loop."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.methods import debcse
from contrastkit.objectives.query_key import query_key_infonce
from contrastkit.modalities.text.methods._propensity import (
    bin_propensity,
    negative_weights,
    positive_selection_probabilities,
)
from contrastkit.modalities.text.methods._surface import (
    delete_words,
    repeat_words,
    surface_similarity,
    words,
)
from tests.conftest import requires_minilm, requires_transformers
from tests.text_method_fakes import SENTENCES, BagOfWordsEncoder


def test_surface_similarity_by_hand():
    # words: [the, cat, sat] vs [the, cat, sat, on, the, mat]: length 3/6; sets 3 shared of 5.
    assert surface_similarity("The cat sat.", "the cat sat on the mat", "length") == pytest.approx(0.5)
    assert surface_similarity("The cat sat.", "the cat sat on the mat", "overlap") == pytest.approx(0.6)
    assert surface_similarity("The cat sat.", "the cat sat on the mat") == pytest.approx(0.55)
    assert surface_similarity("same words here", "here same words") == 1.0
    assert surface_similarity("", "") == 1.0
    assert surface_similarity("alpha beta", "gamma") == pytest.approx((0.5 + 0.0) / 2)
    with pytest.raises(ConfigError, match="surface"):
        surface_similarity("a", "b", "edit")


def test_positive_probabilities_by_hand():
    # Bins of width 0.1: surfaces fall in bins 9, 5, 5 | 9, 9, 1 -> shares 3/6, 2/6, 1/6.
    surface = torch.tensor([[1.0, 0.55, 0.58], [1.0, 0.95, 0.12]])
    semantic = torch.tensor([[1.0, 0.8, 0.6], [1.0, 0.9, 0.3]])
    expected_propensity = torch.tensor([[1 / 2, 1 / 3, 1 / 3], [1 / 2, 1 / 2, 1 / 6]])
    torch.testing.assert_close(bin_propensity(surface, 10), expected_propensity)
    # p ∝ sem / propensity: [2, 2.4, 1.8] / 6.2 and [2, 1.8, 1.8] / 5.6.
    expected = torch.tensor([[2 / 6.2, 2.4 / 6.2, 1.8 / 6.2], [2 / 5.6, 1.8 / 5.6, 1.8 / 5.6]])
    torch.testing.assert_close(positive_selection_probabilities(semantic, surface, 10), expected)
    # Power 0: no propensity, semantic similarity alone.
    torch.testing.assert_close(positive_selection_probabilities(semantic, surface, 10, power=0.0),
                               semantic / semantic.sum(1, keepdim=True))
    # Clipping at 0.25 lifts the 1/6 bin: scores [2, 2.4, 1.8] | [2, 1.8, 0.3 / 0.25 = 1.2].
    clipped = positive_selection_probabilities(semantic, surface, 10, clip=0.25)
    torch.testing.assert_close(clipped[1], torch.tensor([2.0, 1.8, 1.2]) / 5.0)


def test_negative_weights_by_hand():
    semantic = torch.tensor([[1.0, 0.2, 0.6], [0.1, 1.0, 0.9], [0.3, 0.0, 1.0]])
    # Off-diagonal surfaces: bins 1, 8 | 1, 1 | 5, 8 -> shares bin1 3/6, bin8 2/6, bin5 1/6.
    surface = torch.tensor([[1.0, 0.15, 0.82], [0.18, 1.0, 0.11], [0.5, 0.85, 1.0]])
    # q = (1 - sem) / propensity: row 0 [., 1.6, 1.2], row 1 [1.8, ., 0.2], row 2 [4.2, 3.0, .]
    # w = (B - 1) q / sum q.
    expected = torch.tensor([[0.0, 3.2 / 2.8, 2.4 / 2.8], [3.6 / 2.0, 0.0, 0.4 / 2.0], [8.4 / 7.2, 6.0 / 7.2, 0.0]])
    torch.testing.assert_close(negative_weights(semantic, surface, 10), expected)
    # A threshold of 0.85 removes (1, 2), a likely false negative; row 1's mass goes to (1, 0).
    thresholded = negative_weights(semantic, surface, 10, threshold=0.85)
    torch.testing.assert_close(thresholded[1], torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(thresholded[0], expected[0])
    # Constant similarities: every negative counts once, as in SimCSE.
    flat = negative_weights(torch.full((4, 4), 0.3), torch.full((4, 4), 0.4), 10)
    torch.testing.assert_close(flat, 1.0 - torch.eye(4))


def test_weighted_infonce_against_naive_loop():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    k = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    w = torch.rand(4, 4, generator=generator, dtype=torch.float64) * 2
    w[0, 2] = 0.0  # removed negative
    t = 0.07
    total = 0.0
    for i in range(4):
        s = [float(torch.cosine_similarity(q[i], k[j], dim=0)) / t for j in range(4)]
        denominator = math.exp(s[i]) + sum(float(w[i, j]) * math.exp(s[j]) for j in range(4) if j != i)
        total += -s[i] + math.log(denominator)
    assert query_key_infonce(q, k, t, negative_weights=w).item() == pytest.approx(total / 4, rel=1e-10)
    # All-ones weights are SimCSE's plain cross-entropy.
    plain = torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T / t, torch.arange(4))
    assert query_key_infonce(q, k, t, negative_weights=torch.ones(4, 4)).item() == pytest.approx(plain.item())


def test_edits_change_length_and_keep_words():
    torch.manual_seed(0)
    text = "one two three four five six seven eight nine ten"
    for _ in range(20):
        shorter = delete_words(text, 0.3).split()
        assert 1 <= len(shorter) <= 10
        # A subsequence of the original words, in order.
        position = 0
        for word in shorter:
            position = text.split().index(word, position) + 1
        longer = repeat_words(text, 0.32).split()
        assert 11 <= len(longer) <= 13  # 1 .. round(3.2) = 3 words repeated
        assert sorted(set(longer)) == sorted(set(text.split()))
    assert delete_words("single", 0.9) == "single"
    assert len(delete_words("a b c d", 0.999).split()) == 1


def test_selected_pairs_come_from_the_candidates():
    encoder = BagOfWordsEncoder(dim=8)
    method = debcse.build(encoder, num_candidates=2)
    torch.manual_seed(3)
    positives, weights, logs = method.select_pairs(SENTENCES)
    for text, positive in zip(SENTENCES, positives, strict=True):
        assert set(words(positive)) <= set(words(text))  # the sentence, a deletion or a repetition
    assert weights.shape == (8, 8)
    torch.testing.assert_close(weights.sum(1), torch.full((8,), 7.0))
    assert torch.all(weights.diagonal() == 0)
    assert 0.0 <= logs["identical_positive_share"] <= 1.0


def test_training_loss_is_the_weighted_infonce_of_the_selected_pairs():
    encoder = BagOfWordsEncoder(dim=8)
    method = debcse.build(encoder, temperature=0.1, false_negative_threshold=0.95)
    torch.manual_seed(11)
    loss, _ = method.training_loss({"texts": SENTENCES})
    torch.manual_seed(11)
    positives, weights, _ = method.select_pairs(SENTENCES)
    z = encoder(encoder.tokenize(SENTENCES)).detach()
    h = encoder(encoder.tokenize(positives)).detach()
    expected = 0.0
    for i in range(8):
        s = [float(torch.cosine_similarity(z[i], h[j], dim=0)) / 0.1 for j in range(8)]
        denominator = math.exp(s[i]) + sum(float(weights[i, j]) * math.exp(s[j]) for j in range(8) if j != i)
        expected += (-s[i] + math.log(denominator)) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_frozen_scorer_stays_fixed_and_in_eval_mode():
    encoder = BagOfWordsEncoder(dim=8)
    method = debcse.build(encoder)
    method.train()
    assert not method.semantic_encoder.training
    assert all(not p.requires_grad for p in method.semantic_encoder.parameters())
    before = method.semantic_encoder.vectors.clone()
    optimiser = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1.0)
    loss, _ = method.training_loss({"texts": SENTENCES})
    loss.backward()
    optimiser.step()
    assert torch.equal(method.semantic_encoder.vectors, before)
    assert not torch.equal(method.encoder.vectors, before)
    assert debcse.build(encoder, semantic_model="online").semantic_encoder is None


def test_options_are_checked():
    encoder = BagOfWordsEncoder(dim=8)
    with pytest.raises(ConfigError, match="propensity_bin"):
        debcse.build(encoder, propensity_bin=5)
    with pytest.raises(ConfigError, match="semantic_model"):
        debcse.build(encoder, semantic_model="teacher")
    with pytest.raises(ConfigError, match="deletion_rate"):
        debcse.build(encoder, deletion_rate=1.5)


@requires_transformers
@requires_minilm
def test_smoke_small_random_encoder_backward():
    from contrastkit.modalities.text.encoders import small_random_encoder

    encoder = small_random_encoder(hidden_size=32, layers=1, heads=2)
    method = debcse.build(encoder)
    method.train()
    loss, logs = method.training_loss({"texts": SENTENCES, "indices": torch.arange(len(SENTENCES))})
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in method.encoder.parameters() if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.encoder.parameters())
    assert all(p.grad is None for p in method.semantic_encoder.parameters())
    assert set(logs) == {"positive_surface_similarity", "identical_positive_share", "removed_negative_share"}
