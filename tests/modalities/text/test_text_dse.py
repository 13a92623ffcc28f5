"""Distilled Sentence Embedding: the pair-score loss, the cross-encoder teacher, its cached scores, the method.

- the loss against a naive loop over pairs (cosine written out as sums of products), and its per-rank terms;
- the cross-encoder's input is ONE sequence holding both sentences, built here by hand from the tokenizer's
  vocabulary ([CLS] a [SEP] b [SEP], segment ids 0 then 1), and a token of the first sentence sees the second
  (its hidden state changes when only the second sentence changes: cross-attention, unlike a bi-encoder);
- the teacher's cached scores read back bit-equal to scores computed afresh pair by pair, without calling the teacher;
- `contrastkit fit --method dse` trains on an STS-layout file, and a few steps on one batch bring the student's
  cosines toward the teacher's scores.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.objectives import get
from contrastkit.objectives.pair_score_distillation import pair_score_distillation
from tests.conftest import requires_minilm, requires_transformers


def naive_pair_score_loss(u, v, t):
    total = 0.0
    for i in range(len(u)):
        dot = sum(float(a) * float(b) for a, b in zip(u[i], v[i]))
        norm_u = math.sqrt(sum(float(a) ** 2 for a in u[i]))
        norm_v = math.sqrt(sum(float(b) ** 2 for b in v[i]))
        total += (dot / (norm_u * norm_v) - float(t[i])) ** 2
    return total / len(u)


def test_pair_score_loss_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    t = torch.rand(7, generator=g, dtype=torch.float64)
    expected = naive_pair_score_loss(u, v, t)
    assert pair_score_distillation(u, v, t).item() == pytest.approx(expected, rel=1e-12)
    objective = get("pair_score_distillation")
    assert objective(u, v, teacher_scores=t).item() == pytest.approx(expected, rel=1e-12)
    # the per-rank terms of rows 2..4 are those rows' squared errors, over the whole batch's count
    terms = objective.loss_terms(u, v, anchor_rows=slice(2, 5), teacher_scores=t)
    assert terms.total.item() == pytest.approx(naive_pair_score_loss(u[2:5], v[2:5], t[2:5]) * 3, rel=1e-12)
    assert terms.count == 7


def test_pair_score_loss_is_zero_when_the_cosines_are_the_scores_and_needs_scores():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # cosines 1 and 0
    assert pair_score_distillation(u, v, torch.tensor([1.0, 0.0], dtype=torch.float64)).item() == 0.0
    with pytest.raises(Exception, match="teacher_scores"):
        get("pair_score_distillation")(u, v)


# ------------------------------------------------------------------------------------ the teacher


def _small_cross_encoder(seed: int = 0):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from contrastkit.modalities.text.cross_encoder import CrossEncoder
    from contrastkit.modalities.text.encoders import resolve_text_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_text_model("minilm")), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CrossEncoder(BertModel(config, add_pooling_layer=False), tokenizer, max_length=64).eval()


@requires_transformers
@requires_minilm
def test_cross_encoder_reads_both_sentences_as_one_sequence():
    teacher = _small_cross_encoder()
    tok = teacher.tokenizer
    a, b = "A man plays the guitar.", "Someone is playing music!"
    tokens = teacher.tokenize_pairs([a], [b])
    ids_a = tok.convert_tokens_to_ids(tok.tokenize(a))
    ids_b = tok.convert_tokens_to_ids(tok.tokenize(b))
    expected = [tok.cls_token_id, *ids_a, tok.sep_token_id, *ids_b, tok.sep_token_id]
    assert tokens["input_ids"][0].tolist() == expected
    assert tokens["token_type_ids"][0].tolist() == [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)
    # cross-attention: the first sentence's tokens are encoded differently when only the second changes
    other = teacher.tokenize_pairs([a], ["Someone is cooking pasta!"])
    with torch.no_grad():
        h = teacher.transformer(**{k: v for k, v in tokens.items()}).last_hidden_state[0, 1:len(ids_a) + 1]
        h_other = teacher.transformer(**{k: v for k, v in other.items()}).last_hidden_state[0, 1:len(ids_a) + 1]
    assert not torch.allclose(h, h_other, atol=1e-4)
    scores = teacher.score([a, a], [b, "Someone is cooking pasta!"])
    assert scores.shape == (2,) and bool(((scores > 0) & (scores < 1)).all())


@requires_transformers
@requires_minilm
def test_cached_teacher_scores_read_back_bit_equal_without_the_teacher(tmp_path):
    from contrastkit.modalities.text.cross_encoder import PairScoreCache

    teacher = _small_cross_encoder()
    first = ["A cat sits.", "Dogs bark.", "A man runs.", "A cat sits."]
    second = ["A cat is sitting.", "A dog barks loudly.", "The sky is blue.", "A cat is sitting."]
    path = tmp_path / "scores.jsonl"
    scores = PairScoreCache(teacher, path)(first, second)
    assert len(path.read_text().splitlines()) == 3  # the repeated pair is scored once
    # a second derivation: each pair through the model alone, sigmoid of its logit
    with torch.no_grad():
        fresh = torch.stack([torch.sigmoid(teacher.logits(teacher.tokenize_pairs([a], [b])))[0]
                             for a, b in zip(first, second)]).float()
    assert torch.equal(scores, fresh)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the cached pairs must not be scored again")

    teacher.score = no_teacher
    again = PairScoreCache(teacher, path)(first[::-1], second[::-1])
    assert torch.equal(again, fresh.flip(0))


@requires_transformers
@requires_minilm
def test_saved_cross_encoder_loads_with_the_same_scores(tmp_path):
    from contrastkit.modalities.text.cross_encoder import CrossEncoder, cross_encoder_fingerprint

    teacher = _small_cross_encoder(seed=3)
    teacher.save(tmp_path / "teacher")
    loaded = CrossEncoder.load(tmp_path / "teacher")
    pairs = (["A cat sits.", "Dogs bark."], ["A cat is sitting.", "The sky is blue."])
    assert torch.equal(teacher.score(*pairs), loaded.score(*pairs))
    assert cross_encoder_fingerprint(teacher) == cross_encoder_fingerprint(loaded)


# ------------------------------------------------------------------------------------- the method


def _sts_file(path, rows):
    path.write_text("".join(f"g\tf\t2012\t{i:04d}\t{s:.3f}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)))
    return path


ROWS = [("A cat sits.", "A cat is sitting.", 4.8), ("Dogs bark.", "A dog barks loudly.", 3.5),
        ("A man runs.", "The sky is blue.", 0.2), ("She reads a book.", "A woman is reading.", 4.0),
        ("Kids play.", "Stock prices fell.", 0.0), ("It rains.", "Rain is falling.", 4.6),
        ("A boy swims.", "A child is swimming.", 4.2), ("He cooks.", "Cars are fast.", 0.1)]


@requires_transformers
@requires_minilm
def test_fit_dse_trains_on_an_sts_file_and_caches_the_teacher_scores(tmp_path):
    from contrastkit.modalities.text import cli as text_cli

    _small_cross_encoder().save(tmp_path / "teacher")
    data = _sts_file(tmp_path / "sts-train.csv", ROWS)
    parser = argparse.ArgumentParser()
    text_cli.add_arguments(parser)
    args = parser.parse_args([
        "--method", "dse", "--backbone", "random-small", "--data", str(data), "--out", str(tmp_path / "run"),
        "--batch-size", "4", "--max-steps", "2", "--max-length", "16", "--device", "cpu",
        "--option", f"teacher={tmp_path / 'teacher'}", "--option", f"score_cache={tmp_path / 'scores.jsonl'}",
    ])
    assert text_cli.run(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    cached = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(cached) == 8 and {(r["a"], r["b"]) for r in cached} == {(a, b) for a, b, _ in ROWS}


@requires_transformers
@requires_minilm
def test_dse_steps_bring_the_student_cosines_toward_the_teacher(tmp_path):
    from contrastkit.modalities.text.encoders import small_random_encoder
    from contrastkit.modalities.text.methods import build_text_method
    from contrastkit.modalities.text.pair_data import PairData

    _small_cross_encoder().save(tmp_path / "teacher")
    method = build_text_method("dse", small_random_encoder(max_length=16), teacher=str(tmp_path / "teacher"),
                               score_cache=False)
    batch = PairData.from_file(_sts_file(tmp_path / "sts.csv", ROWS)).samples().__getitems__(list(range(8)))
    assert batch["positives"] == [b for _, b, _ in ROWS] and batch["negatives"] == [()] * 8
    optimizer = torch.optim.Adam(method.encoder.parameters(), lr=1e-3)
    method.eval()  # no dropout: the same batch, a deterministic descent
    losses = []
    for _ in range(15):
        loss, logs = method.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_dse_needs_a_teacher():
    from contrastkit.modalities.text.methods.dse import build

    with pytest.raises(ConfigError, match="teacher"):
        build(None)


class CountingTeacher:
    """A stand-in teacher: a pair's score is a fixed function of its texts; counts the pairs it scores."""

    def __init__(self):
        self.scored = 0

    def score(self, first, second, batch_size=1):
        self.scored += len(first)
        return torch.tensor([(len(a) * 31 + len(b)) % 97 / 97 for a, b in zip(first, second)], dtype=torch.float32)


def test_a_cut_short_last_line_is_scored_again_and_cut_away_by_the_next_append(tmp_path):
    from contrastkit.modalities.text.cross_encoder import PairScoreCache

    path = tmp_path / "scores.jsonl"
    PairScoreCache(CountingTeacher(), path)(["a", "bb"], ["x", "yy"])
    text = path.read_text()
    path.write_text(text[:-7])  # a second writer killed in the middle of its last line
    teacher = CountingTeacher()
    cache = PairScoreCache(teacher, path)
    assert set(cache.scores) == {("a", "x")}
    scores = cache(["a", "bb", "ccc"], ["x", "yy", "zzz"])
    assert teacher.scored == 2  # the cut pair and the new one
    expected = CountingTeacher().score(["a", "bb", "ccc"], ["x", "yy", "zzz"])
    assert torch.equal(scores, expected)
    assert len(path.read_text().splitlines()) == 3 and path.read_text().endswith("\n")
    assert torch.equal(PairScoreCache(CountingTeacher(), path)(["a", "bb", "ccc"], ["x", "yy", "zzz"]), expected)
    # a cut-short file with no complete line at all
    path.write_text('{"a": "a", "b')
    assert PairScoreCache(CountingTeacher(), path).scores == {}
    PairScoreCache(CountingTeacher(), path)(["a"], ["x"])
    assert len(path.read_text().splitlines()) == 1


def _append_many(path: str, tag: str) -> None:
    from contrastkit.modalities.text.cross_encoder import PairScoreCache

    for batch in range(20):
        rows = [f"{tag}-{batch}-{i}-" + "w" * 600 for i in range(30)]  # about 20 kB per append
        cache = PairScoreCache(CountingTeacher(), path)
        cache(rows, rows)


def test_two_processes_appending_to_one_cache_never_interleave_lines(tmp_path):
    import multiprocessing

    path = str(tmp_path / "scores.jsonl")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(path, tag)) for tag in ("p", "q")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    lines = open(path, encoding="utf-8").read().splitlines()
    assert len(lines) == 2 * 20 * 30
    assert all(json.loads(line)["a"].startswith(("p-", "q-")) for line in lines)
