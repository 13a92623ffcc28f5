"""The term residual (a learned vector per vocabulary token added to a sentence embedding): its sum over
distinct tokens against a loop over Python sets, the encoder's output against the formula built from the
plain encoder, saving and loading, the cache fingerprint, and the hybrid-distill student that trains it
(its cached shortcut against the full forward pass, and which rows learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.encoders import load_text_encoder, small_random_encoder
from contrastkit.modalities.text.evaluation import encoder_fingerprint
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.methods.hybrid_distill import (
    hybrid_teacher_logits,
    listwise_distillation,
)
from contrastkit.modalities.text.term_residual import TERM_RESIDUAL_FILE, TermResidual
from contrastkit.modalities.text.train import fit_text
from tests.conftest import requires_minilm, requires_transformers
from tests.modalities.text.test_text_evaluation import SENTENCES
from tests.modalities.text.test_text_hybrid_distill import small_encoder, write_corpus


def naive_residual(weight: torch.Tensor, ids: list[int], mask: list[int], special: set[int]) -> torch.Tensor:
    distinct = {i for i, m in zip(ids, mask, strict=True) if m and i not in special}
    if not distinct:
        return torch.zeros(weight.shape[1])
    return sum(weight[i] for i in distinct) / math.sqrt(len(distinct))


def test_residual_sums_distinct_ordinary_tokens_over_sqrt_count():
    torch.manual_seed(0)
    residual = TermResidual(20, 3, special_ids=[0, 1, 2])
    with torch.no_grad():
        residual.weight.normal_()
    ids = torch.tensor([[1, 5, 7, 5, 2, 0], [1, 9, 9, 9, 2, 0], [1, 2, 0, 0, 0, 0], [1, 3, 4, 6, 8, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    mask[3, 4] = 0  # a masked ordinary token does not count
    got = residual(ids, mask)
    for row in range(ids.shape[0]):
        expected = naive_residual(residual.weight.detach(), ids[row].tolist(), mask[row].tolist(), {0, 1, 2})
        torch.testing.assert_close(got[row], expected)
    assert torch.equal(got[2], torch.zeros(3))  # only special tokens: no residual


@requires_transformers
@requires_minilm
def test_encoder_output_is_the_normalised_sum_of_base_and_residual():
    base = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0).eval()
    base.normalize = True
    encoder = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0).eval()
    encoder.normalize = True
    encoder.add_term_residual()
    tokens = encoder.tokenize(SENTENCES[:6])
    with torch.no_grad():
        torch.testing.assert_close(encoder(tokens), base(tokens))  # a zero table changes nothing
        encoder.term_residual.weight.normal_(std=0.1)
        got = encoder(tokens)
        special = set(encoder.tokenizer.all_special_ids)
        for row in range(len(SENTENCES[:6])):
            r = naive_residual(encoder.term_residual.weight, tokens["input_ids"][row].tolist(),
                               tokens["attention_mask"][row].tolist(), special)
            expected = torch.nn.functional.normalize(base(tokens)[row] + r, dim=0)
            torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)
    base.normalize = encoder.normalize = False  # without normalisation the residual is simply added
    with torch.no_grad():
        r = encoder.term_residual(tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(encoder(tokens), base(tokens) + r)


@requires_transformers
@requires_minilm
def test_saved_encoder_reloads_with_its_residual_and_only_nonzero_rows_are_stored(tmp_path):
    encoder = small_encoder().eval()
    encoder.add_term_residual()
    with torch.no_grad():
        encoder.term_residual.weight[[1000, 2000, 2001]] = torch.randn(3, 32)
    encoder.save(tmp_path / "enc")
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "enc" / TERM_RESIDUAL_FILE))
    assert stored["token_ids"].tolist() == [1000, 2000, 2001]
    reloaded = load_text_encoder(tmp_path / "enc").eval()
    assert reloaded.term_residual is not None
    tokens = encoder.tokenize(SENTENCES)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens), encoder(tokens))
    # Saving an encoder without a residual into the same folder removes the stale table.
    encoder.term_residual = None
    encoder.save(tmp_path / "enc")
    assert not (tmp_path / "enc" / TERM_RESIDUAL_FILE).exists()
    assert load_text_encoder(tmp_path / "enc").term_residual is None


def test_a_residual_of_the_wrong_shape_is_refused(tmp_path):
    residual = TermResidual(10, 4)
    with torch.no_grad():
        residual.weight[3] = 1.0
    path = residual.save(tmp_path)
    with pytest.raises(DataError, match="do not belong together"):
        TermResidual.load(path, 10, 8)


@requires_transformers
@requires_minilm
def test_fingerprint_sees_the_residual_and_keeps_plain_encoders_unchanged():
    plain = small_encoder()
    before = encoder_fingerprint(plain)
    with_residual = small_encoder()
    with_residual.add_term_residual()
    first = encoder_fingerprint(with_residual)
    assert encoder_fingerprint(small_encoder()) == before  # deterministic, and no residual: as before
    with torch.no_grad():
        with_residual.term_residual.weight[5, 0] = 1e-3
    trained = encoder_fingerprint(with_residual)
    assert trained not in (first, before)
    # Every restriction changes what the encoder embeds, so each changes the fingerprint (a cached corpus
    # embedded under one is not reused under another); undoing them gives the first one back.
    seen = {trained}
    residual = with_residual.term_residual
    dim = residual.weight.shape[1]
    for restriction in ({"scale": 0.5}, {"max_norm": 0.2}, {"min_tokens": 4}, {"allowed": [5, 7]},
                        {"allowed": [5, 8]}, {"gate": (torch.ones(dim), 0.1, 0.3)},
                        {"gate": (torch.ones(dim), 0.1, 0.4)},
                        {"gate": (torch.arange(dim, dtype=torch.float32), 0.1, 0.4)}):
        residual.restrict(**restriction)
        fingerprint = encoder_fingerprint(with_residual)
        assert fingerprint not in seen, restriction
        seen.add(fingerprint)
    residual.restrict(scale=1.0, max_norm=None, min_tokens=None, allowed=None, gate=None)
    assert encoder_fingerprint(with_residual) == trained


@requires_transformers
@requires_minilm
def test_the_students_cached_shortcut_equals_the_full_forward_pass(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    method = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                               student="term-residual")
    with torch.no_grad():
        method.encoder.term_residual.weight.normal_(std=0.2)
    method.train()
    assert not method.encoder.transformer.training  # frozen Transformer: no dropout either
    texts = SENTENCES[:5] + SENTENCES[:2]  # repeats within a batch
    first, _ = method.training_loss({"texts": texts})  # fills the cache
    second, _ = method.training_loss({"texts": texts})  # reads it
    method.eval()
    with torch.no_grad():  # everything from full forward passes, nothing from the cache
        queries = torch.nn.functional.normalize(method.encoder(method.encoder.tokenize(texts)), dim=1)
        base = torch.nn.functional.normalize(method.document_encoder(method.document_encoder.tokenize(texts)), dim=1)
        lexical = torch.from_numpy(method.bm25.scores(texts)).float()
        teacher = hybrid_teacher_logits(base @ method.documents.T, lexical, method.dense_weight)
        expected = listwise_distillation(queries @ method.documents.T, teacher,
                                         method.temperature, method.teacher_temperature)
    assert float(first.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(second.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert set(method.pooled_cache) == {(method.encoder.max_length, t) for t in texts}
    method.encoder.max_length = 4  # another length: other rows, not the cached ones
    short = method.base_pooled(texts[:1])
    assert not torch.allclose(short, method.pooled_cache[(32, texts[0])].unsqueeze(0))
    assert (4, texts[0]) in method.pooled_cache


@requires_transformers
@requires_minilm
def test_going_on_from_a_trained_residual_keeps_documents_on_the_plain_base(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    plain = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False)
    trained = small_encoder()
    trained.add_term_residual()
    with torch.no_grad():
        trained.term_residual.weight.normal_(std=0.3)
    method = build_text_method("hybrid-distill", trained, corpus=str(corpus), cache_dir=False)
    assert method.document_encoder.term_residual is None and method.encoder.term_residual is not None
    torch.testing.assert_close(method.documents, plain.documents)
    torch.testing.assert_close(method.teacher_logits(SENTENCES[:3]), plain.teacher_logits(SENTENCES[:3]))
    with pytest.raises(ConfigError, match="student=encoder"):
        build_text_method("hybrid-distill", trained, corpus=str(corpus), cache_dir=False, student="encoder")


@requires_transformers
@requires_minilm
def test_training_moves_only_the_rows_of_tokens_seen_and_leaves_the_transformer(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    method = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                               student="term-residual")
    transformer_before = {k: v.clone() for k, v in method.encoder.transformer.state_dict().items()}
    train_sentences = SENTENCES[:8]
    fit_text(method, SentenceData(train_sentences, context_window=0), batch_size=4, lr=1e-2, max_steps=6,
             seed=0, out_dir=tmp_path / "run", log_every=3, weight_decay=0.0)
    assert all(torch.equal(transformer_before[k], v) for k, v in method.encoder.transformer.state_dict().items())
    tokenizer = method.encoder.tokenizer
    seen = {i for text in train_sentences for i in tokenizer(text, add_special_tokens=False)["input_ids"]}
    moved = set(torch.nonzero(method.encoder.term_residual.weight.detach().abs().sum(1) > 0).flatten().tolist())
    assert moved and moved <= seen and not moved & set(tokenizer.all_special_ids)
    saved = load_text_encoder(tmp_path / "run" / "encoder")
    assert saved.term_residual is not None
    np.testing.assert_allclose(saved.term_residual.weight.detach().numpy(),
                               method.encoder.term_residual.weight.detach().numpy())


@requires_transformers
@requires_minilm
def test_export_to_sentence_transformers_refuses_a_residual(tmp_path):
    from contrastkit.modalities.text.export import export_sentence_transformers

    encoder = small_encoder()
    encoder.add_term_residual()
    with pytest.raises(ConfigError, match="term residual"):
        export_sentence_transformers(encoder, tmp_path / "st")
    assert not (tmp_path / "st").exists()
