"""Hybrid distillation (query-side): the teacher against the hybrid module's fusion, the loss against
a naive KL loop, BM25's full score rows against its top-k search, the frozen document tower, the
two-tower evaluation against a brute-force ranking, and a short run that brings the student closer
to its teacher on sentences it was not trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contrastkit.cli import main as cli_main
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.bm25 import BM25Index, bm25_search
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.encoders import small_random_encoder
from contrastkit.modalities.text.evaluation import (
    encode_texts,
    evaluate_retrieval,
    load_text_encoder,
    ranked_doc_ids,
    retrieval_metrics,
)
from contrastkit.modalities.text.hybrid import fuse_scores, hybrid_scores
from contrastkit.modalities.text.methods import build_text_method
from contrastkit.modalities.text.methods.hybrid_distill import (
    hybrid_teacher_logits,
    listwise_distillation,
)
from contrastkit.modalities.text.sources import read_corpus
from contrastkit.modalities.text.train import fit_text
from tests.conftest import data_path, requires_minilm, requires_transformers
from tests.modalities.text.test_text_evaluation import SENTENCES, tiny_retrieval_set


def small_encoder():
    return small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0)


def write_corpus(path, texts):
    path.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


# ------------------------------------------------------------------------------------ the maths


def test_teacher_ranks_and_normalises_as_the_hybrid():
    rng = np.random.default_rng(0)
    dense = rng.uniform(-0.2, 0.9, size=(5, 9))
    lexical = np.where(rng.random((5, 9)) < 0.5, 0.0, rng.gamma(2.0, 2.0, size=(5, 9)))
    lexical[3] = 0.0  # BM25 finds none of the query's words
    w = 0.6
    teacher = hybrid_teacher_logits(torch.tensor(dense), torch.tensor(lexical), w).numpy()
    fused = fuse_scores(dense, lexical, w)
    # t * w / (max c - min c) - fused is one constant per row: same ranking and same softmax.
    gap = teacher * w / (dense.max(1, keepdims=True) - dense.min(1, keepdims=True)) - fused
    np.testing.assert_allclose(gap - gap[:, :1], 0.0, atol=1e-12)
    np.testing.assert_allclose(teacher[3], dense[3])  # no lexical signal: the teacher is the cosine
    np.testing.assert_array_equal(np.argsort(-teacher, 1, kind="stable"), np.argsort(-fused, 1, kind="stable"))
    with pytest.raises(ConfigError, match="dense weight"):
        hybrid_teacher_logits(torch.tensor(dense), torch.tensor(lexical), 0.0)


def test_listwise_distillation_against_a_naive_loop():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 6), torch.randn(3, 6)
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = np.exp(np.array(t_row) / 0.1)
        p /= p.sum()
        q = np.exp(np.array(s_row) / 0.05)
        q /= q.sum()
        expected += float((p * (np.log(p) - np.log(q))).sum()) / 3
    assert float(listwise_distillation(student, teacher, 0.05, 0.1)) == pytest.approx(expected, rel=1e-5)
    assert float(listwise_distillation(teacher, teacher, 0.1, 0.1)) == pytest.approx(0.0, abs=1e-6)


def test_bm25_score_rows_agree_with_top_k_search():
    index = BM25Index(SENTENCES)
    queries = ["a dog on the beach", "onion and pasta in the kitchen", "zzz unknown words", "the of and", ""]
    rows = index.scores(queries)
    scores, indices = bm25_search(SENTENCES, queries[:3], k=4)
    for q in range(3):
        np.testing.assert_allclose(rows[q, indices[q]], scores[q], rtol=1e-6)
        # every document outside the top 4 scores no more than the 4th
        outside = np.setdiff1d(np.arange(len(SENTENCES)), indices[q])
        assert rows[q, outside].max() <= scores[q, -1] + 1e-9
    assert np.all(rows[2:] == 0.0)  # unknown words, stopwords only, empty


# ----------------------------------------------------------------------------------- the method


@pytest.fixture(params=["term-residual", "encoder"])
def method(tmp_path, request):
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    return build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                             teacher_temperature=0.1, student=request.param)


@requires_transformers
@requires_minilm
def test_teacher_logits_against_a_hand_computation(method):
    texts = ["guitar music in the park", "the vaccine and the enzyme"]
    base = encode_texts(method.document_encoder, SENTENCES)
    queries = encode_texts(method.document_encoder, texts)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        base / np.linalg.norm(base, axis=1, keepdims=True)).T
    scores, indices = bm25_search(SENTENCES, texts, k=len(SENTENCES))
    lexical = np.zeros_like(cosine)
    np.put_along_axis(lexical, indices, scores, axis=1)
    expected = fuse_scores(cosine, lexical, 0.6) * (cosine.max(1, keepdims=True) - cosine.min(1, keepdims=True)) / 0.6
    got = method.teacher_logits(texts).numpy()
    gap = got - expected
    np.testing.assert_allclose(gap - gap[:, :1], 0.0, atol=1e-5)


@requires_transformers
@requires_minilm
def test_only_the_query_tower_learns(method):
    method.train()
    assert not method.document_encoder.training  # no dropout in the teacher
    before = {k: v.clone() for k, v in method.document_encoder.state_dict().items()}
    loss, logs = method.training_loss({"texts": SENTENCES[:4], "indices": torch.arange(4)})
    loss.backward()
    assert all(p.grad is None for p in method.document_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.encoder.parameters())
    assert 0.0 <= logs["top1_agreement"] <= 1.0
    torch.optim.SGD(method.parameters(), lr=0.5).step()
    assert all(torch.equal(before[k], v) for k, v in method.document_encoder.state_dict().items())
    learning = {name for name, p in method.encoder.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    if method.student == "term-residual":  # the Transformer is frozen: only the table learns
        assert learning == {"term_residual.weight"}
    else:
        assert "term_residual.weight" not in learning and len(learning) > 10


@requires_transformers
@requires_minilm
def test_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="corpus=PATH"):
        build_text_method("hybrid-distill", small_encoder())
    corpus = write_corpus(tmp_path / "c.jsonl", SENTENCES)
    with pytest.raises(ConfigError, match="dense_weight 0"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), dense_weight=0.0, cache_dir=False)
    with pytest.raises(ConfigError, match="student"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), student="adapter", cache_dir=False)
    with pytest.raises(ConfigError, match="dense_wieght|dense_weight"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), dense_wieght=0.5)
    with pytest.raises(DataError, match="does not exist"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(tmp_path / "missing.jsonl"))


@requires_transformers
@requires_minilm
def test_training_brings_the_student_to_its_teacher_on_held_out_sentences(tmp_path, method):
    held_out = ["a man plays football on the beach", "the chef reads a novel about pasta",
                "rain fell on the stock market", "birds and cats sleep in the park"]

    def distance() -> float:
        method.eval()
        with torch.no_grad():
            queries = torch.nn.functional.normalize(method.encoder(method.encoder.tokenize(held_out)), dim=1)
            return float(listwise_distillation(queries @ method.documents.T, method.teacher_logits(held_out),
                                               method.temperature, method.teacher_temperature))

    start = distance()
    data = SentenceData(SENTENCES, context_window=0)
    summary = fit_text(method, data, batch_size=6, lr=3e-3, max_steps=60, warmup_steps=5, seed=0,
                       out_dir=tmp_path / "run", log_every=20)
    assert summary["documents_embedded_by"].startswith("the base model")
    assert distance() < 0.7 * start


# ----------------------------------------------------------------------- two-tower evaluation


@requires_transformers
@requires_minilm
def test_two_tower_retrieval_against_brute_force():
    tiny = tiny_retrieval_set()
    queries_encoder, documents_encoder = small_encoder(), small_encoder()
    with torch.no_grad():
        for p in queries_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    metrics = evaluate_retrieval(queries_encoder, tiny, cache_dir=False,
                                 document_encoder=documents_encoder)
    docs = encode_texts(documents_encoder, tiny.documents())
    queries = encode_texts(queries_encoder, tiny.queries)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        docs / np.linalg.norm(docs, axis=1, keepdims=True)).T
    expected = retrieval_metrics(ranked_doc_ids(np.argsort(-cosine, 1), tiny), tiny.qrels)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9)
    one_tower = evaluate_retrieval(queries_encoder, tiny, cache_dir=False)
    assert one_tower != metrics  # the document tower is really used
    dense, _ = hybrid_scores(queries_encoder, tiny, cache_dir=False, document_encoder=documents_encoder)
    np.testing.assert_allclose(dense, cosine, atol=1e-5)


def test_cli_document_model_belongs_to_retrieval(tmp_path, capsys):
    code = cli_main(["evaluate", "--task", "sts", "--model", "minilm", "--data", str(tmp_path / "x.csv"),
                     "--document-model", "minilm"])
    assert code != 0 and "--document-model is the document tower" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reading a corpus


def test_read_corpus_of_the_real_scifact_folder():
    corpus = read_corpus(data_path("scifact"))
    assert len(corpus.doc_ids) == 5183 and not corpus.queries  # BEIR's SciFact corpus
    assert corpus.titles[0].startswith("Microstructural development")


def test_read_corpus_without_ids_uses_line_numbers(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "first"}\n{"title": "T", "text": "second"}\n')
    corpus = read_corpus(path)
    assert corpus.doc_ids == ["0", "1"] and corpus.documents() == ["first", "T second"]
    path.write_text('{"body": "first"}\n')
    with pytest.raises(DataError, match="text field 'text'"):
        read_corpus(path)


@pytest.mark.parametrize("student", ["term-residual", "encoder"])
@requires_transformers
@requires_minilm
def test_anchor_term_by_hand(tmp_path, student):
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    method = build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False,
                               anchor_weight=0.5, student=student)
    method.eval()  # no dropout: a student equal to its base has not drifted
    texts = SENTENCES[:5]
    loss, logs = method.training_loss({"texts": texts})
    assert logs["drift_from_base"] == pytest.approx(0.0, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(logs["distillation"], abs=1e-5)
    with torch.no_grad():
        for p in method.encoder.parameters():
            if p.requires_grad:  # the term-residual student's Transformer is frozen by design
                p.add_(0.05 * torch.randn_like(p))
    loss, logs = method.training_loss({"texts": texts})
    student = encode_texts(method.encoder, texts)
    base = encode_texts(method.document_encoder, texts)
    cosine = (student * base).sum(1) / np.linalg.norm(student, axis=1) / np.linalg.norm(base, axis=1)
    assert logs["drift_from_base"] > 1e-4
    assert float(loss.detach()) - logs["distillation"] == pytest.approx(0.5 * float(np.mean(1 - cosine)) / 0.05, rel=1e-3)
    with pytest.raises(ConfigError, match="anchor_weight"):
        build_text_method("hybrid-distill", small_encoder(), corpus=str(corpus), cache_dir=False, anchor_weight=-1)


@requires_transformers
@requires_minilm
def test_cli_trains_the_query_tower_and_says_how_to_retrieve(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", SENTENCES)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n")
    code = cli_main(["text", "--method", "hybrid-distill", "--backbone", "random-small", "--data", str(sentences),
                     "--option", f"corpus={corpus}", "--option", "cache_dir=false", "--max-steps", "2",
                     "--batch-size", "4", "--general-guard", "off", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out  # the guard (on by default for hybrid-distill): test_text_adaptation_guard.py
    run = tmp_path / "run"
    assert code == 0 and "two-tower model" in out and f"--document-model {run / 'document_encoder'}" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["options"]["corpus"] == str(corpus)
    # the saved document tower is the untrained base: a fresh random-small draw with the same seed
    saved = encode_texts(load_text_encoder(run / "document_encoder"), SENTENCES)
    np.testing.assert_allclose(saved, encode_texts(small_random_encoder(max_length=64, seed=0), SENTENCES), atol=1e-6)
    assert not np.allclose(encode_texts(load_text_encoder(run / "encoder"), SENTENCES), saved, atol=1e-6)
    # the default student is the term residual: saved beside the (unchanged) Transformer
    assert (run / "encoder" / "term_residual.safetensors").is_file()
    assert load_text_encoder(run / "encoder").term_residual is not None


def test_crop_words_keeps_a_contiguous_span_of_the_stated_share():
    from contrastkit.modalities.text.methods.hybrid_distill import crop_words

    text = " ".join(f"w{i}" for i in range(40))
    generator = torch.Generator().manual_seed(0)
    shares = []
    for _ in range(2000):
        words = crop_words(text, 0.4, generator).split()
        first = int(words[0][1:])
        assert words == [f"w{i}" for i in range(first, first + len(words))]  # contiguous, in order
        shares.append(len(words) / 40)
    assert min(shares) >= 0.4 - 1 / 80 and max(shares) == 1.0
    assert np.mean(shares) == pytest.approx(0.7, abs=0.02)  # U[0.4, 1] has mean 0.7
    assert crop_words("only four words here", 0.1, generator) == "only four words here"
    assert crop_words(text, 0.0, generator) == text
