"""BERT's 80/10/10 token corruption and the tied MLM head (modalities/text/masked_lm.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.masked_lm import IGNORE_INDEX, MaskedLMHead, mask_tokens

MASK_ID, VOCAB = 103, 30522


def token_batch(batch=64, length=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 2000, (batch, length), generator=generator)  # ids never equal to MASK_ID
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    special = torch.zeros_like(input_ids)
    special[:, 0] = 1  # [CLS]
    special[torch.arange(batch), lengths - 1] = 1  # [SEP]
    return input_ids, attention_mask, special


def test_mask_tokens_80_10_10_within_tolerance():
    input_ids, attention_mask, special = token_batch()
    masked_ids, labels = mask_tokens(input_ids, attention_mask, special, MASK_ID, VOCAB,
                                     generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE_INDEX
    maskable = attention_mask.bool() & ~special.bool()
    n = int(chosen.sum())
    # ~0.15 of ~6000 maskable tokens: a binomial's standard deviation is ~0.005, the tolerance 4 of them
    assert abs(n / int(maskable.sum()) - 0.15) < 0.02
    assert not (chosen & ~maskable).any()  # never padding or special tokens
    assert torch.equal(labels[chosen], input_ids[chosen])
    assert torch.equal(masked_ids[~chosen], input_ids[~chosen])
    to_mask = masked_ids[chosen] == MASK_ID
    kept = masked_ids[chosen] == input_ids[chosen]
    replaced = ~to_mask & ~kept  # a random id can equal the original (probability 1/V): counted as kept
    tolerance = 4 * (0.25 / n) ** 0.5
    assert abs(float(to_mask.float().mean()) - 0.8) < tolerance
    assert abs(float(replaced.float().mean()) - 0.1) < tolerance
    assert abs(float(kept.float().mean()) - 0.1) < tolerance


def test_mask_tokens_is_reproducible_with_a_generator_and_checks_its_probability():
    input_ids, attention_mask, special = token_batch(batch=4, length=16)
    draws = [mask_tokens(input_ids, attention_mask, special, MASK_ID, VOCAB, 0.3,
                         generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    with pytest.raises(ConfigError, match="probability"):
        mask_tokens(input_ids, attention_mask, special, MASK_ID, VOCAB, 1.5)


def test_mlm_head_ties_its_decoder_to_the_embeddings_and_computes_bert_head():
    torch.manual_seed(0)
    embeddings = nn.Embedding(11, 6)
    head = MaskedLMHead(hidden_size=4, vocab_size=11, embedding_weight=embeddings.weight)
    assert head.decoder.weight is embeddings.weight
    hidden = torch.randn(2, 3, 4)
    dense, norm = head.transform[0], head.transform[2]
    transformed = torch.nn.functional.layer_norm(
        torch.nn.functional.gelu(hidden @ dense.weight.T + dense.bias), (6,), norm.weight, norm.bias, 1e-12)
    torch.testing.assert_close(head(hidden), transformed @ embeddings.weight.T + head.bias)
    head(hidden).sum().backward()
    assert embeddings.weight.grad is not None  # the tied matrix learns through the head
    untied = MaskedLMHead(hidden_size=4, vocab_size=11)
    assert untied(hidden).shape == (2, 3, 11)
    with pytest.raises(ConfigError, match="rows"):
        MaskedLMHead(4, 12, embeddings.weight)
