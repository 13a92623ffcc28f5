"""B-PROP: representative words from [CLS] attention and a corpus language model, the ROP loss, the method.

- the [CLS] attention read from the last layer's query and key equals the attention weights an eager
  Transformer returns;
- the representative distribution equals a naive per-term computation whose words come from the
  tokenizer's own pre-tokenizer and corpus counts from a loop over strings;
- a word set's likelihood equals a loop over its words; sampling is fixed by the seed and its lengths
  follow a zero-truncated Poisson(3);
- the pairwise loss equals a loop over pairs (hinge and softmax), and its gradient raises the positive's
  score; the method's positive set is the more likely one;
- ``contrastkit fit --method bprop`` trains a few steps of a tiny local BERT on a JSONL corpus.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from contrastkit.objectives import get
from contrastkit.objectives.representative_words import representative_words_loss
from tests.conftest import requires_minilm, requires_transformers

DOCUMENTS = [
    "Mitochondrial DNA mutations cause mitochondrial disease in 1 of 5000 adults.",
    "The protein kinase regulates insulin secretion; insulin resistance follows kinase loss.",
    "Neutrophils migrate toward inflammation, and neutrophil counts rise in sepsis.",
    "We measured telomere length in 200 patients and found shorter telomeres in smokers.",
]


def naive_pair_loss(positive, negative, form, margin):
    total = 0.0
    for p, n in zip(positive.tolist(), negative.tolist()):
        total += max(0.0, margin - p + n) if form == "hinge" else math.log(1.0 + math.exp(n - p))
    return total / len(positive)


@pytest.mark.parametrize("form", ["hinge", "softmax"])
def test_pairwise_loss_equals_a_loop_and_raises_the_positive_score(form):
    generator = torch.Generator().manual_seed(3)
    positive = torch.randn(7, generator=generator, dtype=torch.float64, requires_grad=True)
    negative = torch.randn(7, generator=generator, dtype=torch.float64, requires_grad=True)
    expected = naive_pair_loss(positive.detach(), negative.detach(), form, 0.7)
    assert representative_words_loss(positive, negative, form, 0.7).item() == pytest.approx(expected, rel=1e-12)
    objective = get("representative_words", form=form, margin=0.7)
    loss = objective(positive, negative.unsqueeze(1))  # (N,) and (N, 1) both read as scores
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    active = positive.grad != 0
    assert active.any() and (positive.grad[active] < 0).all() and (negative.grad[active] > 0).all()


def test_pairwise_loss_is_zero_once_the_positive_leads_by_the_margin():
    positive = torch.tensor([2.0, 0.5])
    assert get("representative_words")(positive, positive - 1.0).item() == 0.0
    assert get("representative_words")(positive, positive).item() == pytest.approx(1.0)


@requires_transformers
@requires_minilm
def test_cls_attention_equals_the_eager_attention_weights():
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.representative_words import cls_attention, tokenize_with_words

    encoder = small_random_encoder(hidden_size=32, layers=2, heads=4, max_length=48, seed=1)
    encoder.eval()
    tokens, _ = tokenize_with_words(encoder.tokenizer, DOCUMENTS, 48)
    ours = cls_attention(encoder.transformer, tokens)
    encoder.transformer.config._attn_implementation = "eager"
    with torch.no_grad():
        eager = encoder.transformer(**tokens, output_attentions=True).attentions[-1]  # (B, H, L, L)
    torch.testing.assert_close(ours, eager[:, :, 0, :].mean(1), atol=1e-6, rtol=1e-5)
    assert (ours[tokens["attention_mask"] == 0] == 0).all()


def naive_representative(tokenizer, document, attention_row, corpus_texts, temperature=1.0, k=0.01):
    """Word strings from the tokenizer's normaliser + pre-tokenizer, each mapped to its token ids;
    attention of a word's first sub-word found by walking the token list; dicts and loops only."""
    backend = tokenizer.backend_tokenizer

    def words(text):
        return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]

    def ids(word):
        return tuple(tokenizer.encode(word, add_special_tokens=False))

    counts = Counter(ids(w) for text in corpus_texts for w in words(text))
    total = sum(counts.values())
    token_ids = tokenizer.encode(document, add_special_tokens=True)
    position, summed = 1, {}  # position 0 is [CLS]
    for word in words(document):
        word_ids = ids(word)
        assert tuple(token_ids[position:position + len(word_ids)]) == word_ids
        summed[word_ids] = summed.get(word_ids, 0.0) + float(attention_row[position])
        position += len(word_ids)
    saturated = {w: a / (a + k) for w, a in summed.items()}
    norm = sum(saturated.values())
    contrast = {}
    for w, s in saturated.items():
        if tokenizer.decode(list(w)).strip().isalpha():
            p_corpus = max(counts.get(w, 0), 1) / total
            contrast[w] = min(s / norm * -math.log2(p_corpus), 100.0)
    z = sum(math.exp(r / temperature) for r in contrast.values())
    return {w: math.log(math.exp(r / temperature) / z) for w, r in contrast.items()}


@requires_transformers
@requires_minilm
@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_representative_distribution_equals_a_naive_per_term_computation(temperature):
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.representative_words import (
        CorpusLanguageModel,
        WordSpelling,
        representative_words,
        tokenize_with_words,
    )

    tokenizer = small_random_encoder(max_length=64).tokenizer
    corpus = CorpusLanguageModel.from_texts(tokenizer, DOCUMENTS)
    spelling = WordSpelling(tokenizer)
    tokens, word_ids = tokenize_with_words(tokenizer, DOCUMENTS, 64)
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(tokens["input_ids"].shape, generator=generator, dtype=torch.float64)
    for row, document in enumerate(DOCUMENTS):
        found = representative_words(attention[row], tokens["input_ids"][row].tolist(), word_ids[row], corpus,
                                     spelling.is_alphabetic, temperature=temperature)
        expected = naive_representative(tokenizer, document, attention[row], DOCUMENTS, temperature)
        assert set(found.words) == set(expected)
        for word, log_probability in zip(found.words, found.log_probabilities.tolist()):
            assert log_probability == pytest.approx(expected[word], abs=1e-12)


def test_set_likelihood_equals_a_loop_and_sampling_is_fixed_by_the_seed():
    from contrastkit.modalities.text.representative_words import sample_word_sets, set_log_likelihood

    log_probabilities = torch.log_softmax(torch.randn(12, generator=torch.Generator().manual_seed(5),
                                                      dtype=torch.float64), 0)
    draws = [sample_word_sets(log_probabilities, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8, 9)]
    assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[1]))
    assert any(not torch.equal(draws[0][0], other[0]) for other in draws[2:])
    for first, second in draws:
        assert len(first) == len(second) >= 1
        assert len(set(first.tolist())) == len(first)  # 12 words: drawn without replacement
        naive = sum(float(log_probabilities[i]) for i in first.tolist())
        assert set_log_likelihood(log_probabilities, first) == pytest.approx(naive, abs=1e-12)


def test_set_lengths_follow_a_zero_truncated_poisson():
    from contrastkit.modalities.text.representative_words import sample_set_length

    generator = torch.Generator().manual_seed(0)
    lengths = [sample_set_length(3.0, generator) for _ in range(4000)]
    assert min(lengths) == 1
    expected_mean = 3.0 / (1.0 - math.exp(-3.0))  # E[n | n > 0] of Poisson(3)
    assert sum(lengths) / len(lengths) == pytest.approx(expected_mean, abs=0.1)


@requires_transformers
@requires_minilm
def test_the_methods_positive_set_is_the_more_likely_one():
    from contrastkit.modalities.text.data import SentenceData
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.methods import build_text_method
    from contrastkit.modalities.text.representative_words import (
        cls_attention,
        representative_words,
        tokenize_with_words,
    )

    method = build_text_method("bprop", small_random_encoder(max_length=64, seed=2))
    method.use_training_data(SentenceData(DOCUMENTS, context_window=0))
    torch.manual_seed(11)
    positives, negatives, rows, _ = method.word_set_pairs(DOCUMENTS)
    assert rows, "every document has alphabetic words"
    tokens, word_ids = tokenize_with_words(method.encoder.tokenizer, DOCUMENTS, 64)
    method.encoder.eval()
    attention = cls_attention(method.encoder.transformer, tokens)
    for positive, negative, row in zip(positives, negatives, rows):
        found = representative_words(attention[row], tokens["input_ids"][row].tolist(), word_ids[row],
                                     method.corpus, method.spelling.is_alphabetic)
        log_p = {method.spelling(w): lp for w, lp in zip(found.words, found.log_probabilities.tolist())}
        assert len(positive.split()) == len(negative.split())
        assert sum(log_p[w] for w in positive.split()) > sum(log_p[w] for w in negative.split())


@requires_transformers
@requires_minilm
def test_passages_run_from_a_sentence_to_the_end_of_its_document():
    from contrastkit.modalities.text.data import SentenceData
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.methods import build_text_method

    method = build_text_method("bprop", small_random_encoder(max_length=32))
    method.use_training_data(SentenceData.from_documents([["T1", "a b.", "c d."], ["T2", "e f."]], 0))
    assert [method.passage(i) for i in range(5)] == ["T1 a b. c d.", "a b. c d.", "c d.", "T2 e f.", "e f."]


@requires_transformers
@requires_minilm
def test_fit_bprop_trains_a_tiny_bert_on_a_jsonl_corpus(tmp_path, monkeypatch, capsys):
    from contrastkit.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": str(i), "title": f"Study {i}", "text": text})
                                for i, text in enumerate(DOCUMENTS * 2)) + "\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code = main(["fit", "--modality", "text", "--method", "bprop", "--backbone", "random-small", "--data", str(corpus),
                 "--out", str(out), "--batch-size", "4", "--max-steps", "3", "--max-length", "32", "--device", "cpu",
                 "--log-every", "1", "--option", "mlm_weight=0.5"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["method"] == "bprop"
    assert (out / "encoder" / "config.json").is_file()
    metrics = (out / "metrics.csv").read_text()
    assert "train/rop_loss" in metrics and "train/mlm_loss" in metrics
