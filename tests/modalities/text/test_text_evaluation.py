"""Text evaluation against second derivations: STS Spearman by hand and with scipy on
per-pair encodings; retrieval metrics against pytrec_eval (trec_eval) and a naive loop; the
embedding cache (hits are identical, changed weights or texts miss); BM25 scores against the
Lucene formula; token isotropy against all-pairs loops; the evaluate CLI against
sentence-transformers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from contrastkit.cli import main
from contrastkit.core.errors import ConfigError
from contrastkit.modalities.text.bm25 import K1, B, bm25_search, evaluate_bm25
from contrastkit.modalities.text.encoders import TextEncoder, minilm_folder, small_random_encoder
from contrastkit.modalities.text.evaluation import (
    corpus_cache_path,
    encode_corpus,
    encoder_fingerprint,
    evaluate_retrieval,
    load_text_encoder,
    ranked_doc_ids,
    retrieval_metrics,
    sentence_isotropy,
    sts_spearman,
    subsample_retrieval_set,
    token_isotropy,
)
from contrastkit.modalities.text.sources import RetrievalSet, SentencePairs, read_sts
from tests.conftest import data_path, requires_minilm, requires_sentence_transformers, requires_transformers

SENTENCES = [
    "a man is playing a guitar", "a woman slices an onion", "the cat sleeps on the sofa",
    "children play football in the park", "the stock market fell sharply today",
    "a dog runs across the beach", "rain is expected tomorrow afternoon", "she reads a long novel",
    "protein folding determines enzyme function", "the vaccine reduced infection rates",
    "a chef prepares pasta in the kitchen", "two birds sit on a wire",
]


@pytest.fixture(scope="module")
def tiny_encoder() -> TextEncoder:
    return small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0)


def tiny_retrieval_set() -> RetrievalSet:
    docs = SENTENCES
    return RetrievalSet(
        doc_ids=[f"d{i}" for i in range(len(docs))], titles=[""] * len(docs), texts=list(docs),
        query_ids=["q0", "q1", "q2", "q3"],
        queries=["guitar music", "cooking onions", "market crash", "dogs at the beach"],
        qrels={"q0": {"d0": 2, "d7": 1}, "q1": {"d1": 1, "d10": 2}, "q2": {"d4": 1}, "q3": {"d5": 1, "d3": 0}},
    )


# ----------------------------------------------------------------------------------------- STS


class LookupEncoder:
    """A stand-in encoder: each sentence maps to a fixed vector."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size=64, max_length=None):
        texts = list(texts)
        self.calls.append(texts)
        return torch.tensor([self.vectors[t] for t in texts], dtype=torch.float32)


def test_sts_spearman_hand_example():
    # Second sentences at 0, 30, 60 and 90 degrees from "x": cosines 1, .866, .5, 0 (ranks 4 3 2 1);
    # gold 5, 3, 4, 0 (ranks 4 2 3 1): d^2 = 0 + 1 + 1 + 0, rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    angles = {"a": 0, "b": 30, "c": 60, "d": 90}
    vectors = {"x": [1.0, 0.0], **{k: [math.cos(math.radians(v)), math.sin(math.radians(v))] for k, v in angles.items()}}
    encoder = LookupEncoder(vectors)
    pairs = SentencePairs(["x", "x", "x", "x"], ["a", "b", "c", "d"], np.array([5.0, 3.0, 4.0, 0.0]))
    assert sts_spearman(encoder, pairs) == pytest.approx(80.0)
    assert sorted(encoder.calls[0]) == ["a", "b", "c", "d", "x"]  # each distinct sentence once


@requires_transformers
@requires_minilm
def test_sts_spearman_matches_scipy_on_per_pair_encodings(tiny_encoder):
    rng = np.random.default_rng(0)
    # Distinct pairs: a repeated pair gives tied cosines, and ties would be broken by rounding.
    chosen = rng.choice(len(SENTENCES) * (len(SENTENCES) - 1) // 2, 30, replace=False)
    all_pairs = [(a, b) for i, a in enumerate(SENTENCES) for b in SENTENCES[i + 1:]]
    first, second = zip(*[all_pairs[i] for i in chosen])
    first, second = list(first), list(second)
    scores = rng.uniform(0, 5, 30)
    tiny_encoder.eval()
    with torch.no_grad():  # one pair at a time, no batching, no de-duplication
        cosines = [torch.cosine_similarity(tiny_encoder(tiny_encoder.tokenize([a])),
                                           tiny_encoder(tiny_encoder.tokenize([b]))).item()
                   for a, b in zip(first, second)]
    expected = 100 * spearmanr(cosines, scores).statistic
    assert sts_spearman(tiny_encoder, SentencePairs(first, second, scores), batch_size=7) == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------- retrieval


def random_run(seed: int, n_queries: int = 25, n_docs: int = 200, depth: int = 120):
    """Random rankings (as corpus indices) and graded qrels (grades 0-3, each query >= 1 relevant)."""
    rng = np.random.default_rng(seed)
    doc_ids = [f"doc{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    indices = np.stack([rng.permutation(n_docs)[:depth] for _ in query_ids])
    qrels = {}
    for query in query_ids:
        judged = rng.choice(n_docs, rng.integers(1, 12), replace=False)
        grades = {doc_ids[d]: int(rng.integers(0, 4)) for d in judged}
        grades[doc_ids[judged[0]]] = int(rng.integers(1, 4))
        qrels[query] = grades
    retrieval_set = RetrievalSet(doc_ids, [""] * n_docs, doc_ids, query_ids, query_ids, qrels)
    return retrieval_set, indices


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_match_pytrec_eval(seed):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    retrieval_set, indices = random_run(seed)
    rankings = ranked_doc_ids(indices, retrieval_set)
    ours = retrieval_metrics(rankings, retrieval_set.qrels, k_values=(10, 100), ignore_identical_ids=True)

    def trec(measure: str, depth: int) -> float:
        # trec_eval sorts by score: give rank r the score depth - r. recip_rank has no cut-off,
        # so MRR@k is computed on the run truncated at k.
        run = {q: {d: float(depth - r) for r, d in enumerate(docs[:depth])} for q, docs in rankings.items()}
        per_query = pytrec_eval.RelevanceEvaluator(retrieval_set.qrels, {measure}).evaluate(run)
        key = measure.replace(".", "_")
        return float(np.mean([values[key] for values in per_query.values()]))

    assert ours["ndcg@10"] == pytest.approx(trec("ndcg_cut.10", 120), abs=1e-4)
    assert ours["ndcg@100"] == pytest.approx(trec("ndcg_cut.100", 120), abs=1e-4)
    assert ours["recall@10"] == pytest.approx(trec("recall.10", 120), abs=1e-4)
    assert ours["recall@100"] == pytest.approx(trec("recall.100", 120), abs=1e-4)
    assert ours["mrr@10"] == pytest.approx(trec("recip_rank", 10), abs=1e-4)


def naive_metrics(scores: np.ndarray, retrieval_set: RetrievalSet, k: int) -> dict[str, float]:
    """nDCG@k, Recall@k, MRR@k from a full (Q, N) score matrix, one query at a time."""
    ndcgs, recalls, rrs = [], [], []
    for row, query in enumerate(retrieval_set.query_ids):
        grades = retrieval_set.qrels[query]
        order = sorted(range(scores.shape[1]), key=lambda j: -scores[row, j])[:k]
        ranked = [retrieval_set.doc_ids[j] for j in order]
        dcg = sum(grades.get(d, 0) / math.log2(r + 2) for r, d in enumerate(ranked))
        ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
        ndcgs.append(dcg / sum(g / math.log2(r + 2) for r, g in enumerate(ideal)))
        relevant = {d for d, g in grades.items() if g > 0}
        recalls.append(len(relevant & set(ranked)) / len(relevant))
        rrs.append(next((1 / (r + 1) for r, d in enumerate(ranked) if d in relevant), 0.0))
    return {f"ndcg@{k}": np.mean(ndcgs), f"recall@{k}": np.mean(recalls), f"mrr@{k}": np.mean(rrs)}


@requires_transformers
@requires_minilm
def test_dense_retrieval_matches_a_naive_loop(tiny_encoder):
    retrieval_set = tiny_retrieval_set()
    metrics = evaluate_retrieval(tiny_encoder, retrieval_set, k_values=(3, 5), cache_dir=False)
    tiny_encoder.eval()
    with torch.no_grad():
        docs = torch.cat([tiny_encoder(tiny_encoder.tokenize([d])) for d in retrieval_set.documents()])
        queries = torch.cat([tiny_encoder(tiny_encoder.tokenize([q])) for q in retrieval_set.queries])
    scores = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(docs, dim=1).T
    for k in (3, 5):
        for name, value in naive_metrics(scores.numpy(), retrieval_set, k).items():
            assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert metrics["queries"] == 4 and metrics["documents"] == len(SENTENCES)


def test_identical_ids_are_dropped_before_the_cut():
    # Query "d0" retrieves itself first, then its relevant doc d1: MRR@1 is 1 when identical ids
    # are ignored (d1 moves up), 0 otherwise.
    retrieval_set = RetrievalSet(["d0", "d1", "d2"], ["", "", ""], ["x", "y", "z"], ["d0"], ["x"], {"d0": {"d1": 1}})
    rankings = ranked_doc_ids(np.array([[0, 1, 2]]), retrieval_set)
    assert retrieval_metrics(rankings, retrieval_set.qrels, (1,), ignore_identical_ids=True)["mrr@1"] == 1.0
    assert retrieval_metrics(rankings, retrieval_set.qrels, (1,), ignore_identical_ids=False)["mrr@1"] == 0.0


def test_subsample_keeps_every_relevant_document():
    retrieval_set, _ = random_run(0)
    subset = subsample_retrieval_set(retrieval_set, n_queries=5, n_documents=40, seed=1)
    assert len(subset.query_ids) == 5 and len(subset.doc_ids) == 40
    assert all(doc in subset.doc_ids for q in subset.query_ids for doc in subset.qrels[q])
    assert subset.doc_ids == sorted(subset.doc_ids, key=retrieval_set.doc_ids.index)


# ----------------------------------------------------------------------------------- the cache


@requires_transformers
@requires_minilm
def test_cache_hit_is_identical_and_changes_miss(tiny_encoder, tmp_path, monkeypatch):
    retrieval_set = tiny_retrieval_set()
    first = encode_corpus(tiny_encoder, retrieval_set, cache_dir=tmp_path)
    path = corpus_cache_path(tiny_encoder, retrieval_set.documents(), tmp_path)
    assert path.is_file() and json.loads(path.with_suffix(".json").read_text())["documents"] == len(SENTENCES)

    calls = []
    original_encode = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, *a, **k: calls.append(1) or original_encode(self, *a, **k))
    again = encode_corpus(tiny_encoder, retrieval_set, cache_dir=tmp_path)
    assert calls == [] and np.array_equal(first, again)  # a hit: read, not re-encoded

    changed = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0)
    with torch.no_grad():
        changed.transformer.encoder.layer[0].output.dense.bias[0] += 1e-3  # one weight, slightly
    changed_result = encode_corpus(changed, retrieval_set, cache_dir=tmp_path)
    assert calls == [1] and not np.array_equal(first, changed_result)

    other_texts = RetrievalSet(**{**retrieval_set.__dict__, "texts": [t + "." for t in retrieval_set.texts]})
    encode_corpus(tiny_encoder, other_texts, cache_dir=tmp_path)
    assert calls == [1, 1]
    assert len(list((tmp_path / "text-embeddings").glob("*.npy"))) == 3


@requires_transformers
@requires_minilm
def test_fingerprint_ignores_tokenizer_call_state_but_not_settings(tiny_encoder):
    # Each tokenizer call rewrites its truncation/padding state; that must not change the key.
    before = encoder_fingerprint(tiny_encoder)
    tiny_encoder.tokenize(["a short text"], max_length=7)
    assert encoder_fingerprint(tiny_encoder) == before
    tiny_encoder.max_length, original = 16, tiny_encoder.max_length
    try:
        assert encoder_fingerprint(tiny_encoder) != before
    finally:
        tiny_encoder.max_length = original


@requires_transformers
@requires_minilm
def test_cache_disabled_and_default_folder(tiny_encoder, tmp_path, monkeypatch):
    retrieval_set = tiny_retrieval_set()
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "env-cache"))
    encode_corpus(tiny_encoder, retrieval_set, cache_dir=False)
    assert not (tmp_path / "env-cache").exists()
    encode_corpus(tiny_encoder, retrieval_set)
    assert len(list((tmp_path / "env-cache" / "text-embeddings").glob("*.npy"))) == 1


@requires_transformers
@requires_minilm
def test_unknown_precision_is_a_config_error(tiny_encoder):
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        encode_corpus(tiny_encoder, tiny_retrieval_set(), cache_dir=False, precision="fp16")


# ---------------------------------------------------------------------------------------- BM25


def test_bm25_ranks_the_obvious_document_first_thanks_to_stemming():
    docs = ["The cat sat on the mat.", "Dogs were running in the park all day.",
            "Quarks interact through the strong force."]
    _, stemmed = bm25_search(docs, ["the dog runs"], k=3)
    assert stemmed[0, 0] == 1
    scores, _ = bm25_search(docs, ["the dog runs"], k=3, stem=False)  # "dog" != "dogs" unstemmed
    assert scores[0].max() == 0.0


def test_bm25_scores_follow_the_lucene_formula():
    import bm25s
    import Stemmer

    docs = ["apple banana apple cherry", "banana banana date", "cherry date elderberry fig grape",
            "apple fig", "grape grape grape banana"]
    query = "apple grape banana"
    stemmer = Stemmer.Stemmer("english")
    doc_tokens = bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    query_tokens = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)[0]
    n, avgdl = len(docs), np.mean([len(t) for t in doc_tokens])
    expected = []
    for tokens in doc_tokens:
        score = 0.0
        for term in query_tokens:
            df = sum(term in other for other in doc_tokens)
            tf = tokens.count(term)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            score += idf * tf / (tf + K1 * (1 - B + B * len(tokens) / avgdl))
        expected.append(score)
    scores, indices = bm25_search(docs, [query], k=n)
    np.testing.assert_allclose(scores[0], np.array(expected)[indices[0]], rtol=1e-5)
    assert list(indices[0]) == sorted(range(n), key=lambda i: -expected[i])


def test_bm25_metrics_on_a_hand_corpus():
    retrieval_set = RetrievalSet(
        ["a", "b", "c"], ["Cats", "Dogs", "Physics"],
        ["Cats purr and sleep.", "Dogs bark at strangers.", "Quarks carry colour charge."],
        ["q1", "q2"], ["why do cats purr", "quark colour"], {"q1": {"a": 1}, "q2": {"c": 1}},
    )
    metrics = evaluate_bm25(retrieval_set, k_values=(1,))
    assert metrics["ndcg@1"] == metrics["mrr@1"] == metrics["recall@1"] == 1.0


# ------------------------------------------------------------------------------------ isotropy


@requires_transformers
@requires_minilm
def test_token_isotropy_within_sequence_matches_a_double_loop(tiny_encoder):
    texts = SENTENCES[:5]
    expected = []
    tiny_encoder.eval()
    with torch.no_grad():
        for text in texts:
            tokens = tiny_encoder.tokenize([text])
            states = tiny_encoder.token_states(tokens)[0, 1:-1]  # drop [CLS] and [SEP]
            n = states.shape[0]
            cos = [torch.cosine_similarity(states[i], states[j], dim=0).item()
                   for i in range(n) for j in range(n) if i != j]
            expected.append(np.mean(cos))
    assert token_isotropy(tiny_encoder, texts, within_sequence=True, batch_size=2) == pytest.approx(np.mean(expected), abs=1e-5)


@requires_transformers
@requires_minilm
def test_token_isotropy_random_pairs_estimate_the_all_pairs_mean(tiny_encoder):
    tiny_encoder.eval()
    with torch.no_grad():
        states = torch.cat([tiny_encoder.token_states(tiny_encoder.tokenize([t]))[0, 1:-1] for t in SENTENCES])
    u = torch.nn.functional.normalize(states, dim=1)
    n = u.shape[0]
    exact = ((u @ u.T).sum() - n) / (n * (n - 1))
    estimate = token_isotropy(tiny_encoder, SENTENCES, pairs=20_000, seed=3)
    assert estimate == pytest.approx(exact.item(), abs=0.02)


@requires_transformers
@requires_minilm
def test_sentence_isotropy_matches_a_double_loop(tiny_encoder):
    z = tiny_encoder.encode(SENTENCES)
    n = len(SENTENCES)
    expected = np.mean([torch.cosine_similarity(z[i], z[j], dim=0).item() for i in range(n) for j in range(n) if i != j])
    assert sentence_isotropy(tiny_encoder, SENTENCES) == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------------------- CLI


@requires_transformers
@requires_minilm
@requires_sentence_transformers
def test_cli_sts_matches_sentence_transformers(tmp_path, capsys):
    source = data_path("stsb") / "sts-dev.csv"
    subset = tmp_path / "sts-50.csv"
    subset.write_text("".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:50]), encoding="utf-8")
    assert main(["evaluate", "--task", "sts", "--model", "minilm", "--data", str(subset)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pairs"] == 50

    from sentence_transformers import SentenceTransformer

    pairs = read_sts(subset)
    model = SentenceTransformer(str(minilm_folder()), device="cpu")
    a, b = model.encode(pairs.first), model.encode(pairs.second)
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert printed["spearman"] == pytest.approx(100 * spearmanr(cosines, pairs.scores).statistic, abs=0.05)


def write_beir(folder, retrieval_set: RetrievalSet) -> None:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "title": t, "text": x}) + "\n"
        for d, t, x in zip(retrieval_set.doc_ids, retrieval_set.titles, retrieval_set.texts)))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": x}) + "\n" for q, x in zip(retrieval_set.query_ids, retrieval_set.queries)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, docs in retrieval_set.qrels.items() for d, g in docs.items()))


@requires_transformers
@requires_minilm
def test_cli_retrieval_with_a_saved_folder_and_bm25(tiny_encoder, tmp_path, capsys):
    retrieval_set = tiny_retrieval_set()
    write_beir(tmp_path / "beir", retrieval_set)
    saved = small_random_encoder(hidden_size=32, layers=1, heads=2, max_length=32, seed=0)
    saved.pooling, saved.normalize = "cls", True
    saved.save(tmp_path / "model")
    reloaded = load_text_encoder(tmp_path / "model")
    assert (reloaded.pooling, reloaded.normalize, reloaded.max_length) == ("cls", True, 32)

    args = ["evaluate", "--task", "retrieval", "--data", str(tmp_path / "beir"), "--split", "test", "--no-cache"]
    assert main([*args, "--model", str(tmp_path / "model")]) == 0
    captured = capsys.readouterr()
    assert "scoring the test split" in captured.err
    printed = json.loads(captured.out)
    expected = evaluate_retrieval(reloaded, retrieval_set, cache_dir=False)
    assert {k: printed[k] for k in expected} == pytest.approx(expected)

    assert main([*args, "--model", "bm25"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: printed[k] for k in ("ndcg@10", "mrr@10")} == pytest.approx(
        {k: v for k, v in evaluate_bm25(retrieval_set).items() if k in ("ndcg@10", "mrr@10")})


@pytest.mark.parametrize("args, fragment", [
    (["--task", "sts", "--model", "minilm"], "needs --data"),
    (["--task", "retrieval", "--data", "x"], "needs --model"),
    (["--task", "probe"], "needs --embeddings and --labels"),
    (["--task", "sts", "--model", "minilm", "--data", "x.csv", "--embeddings", "e.npy"], "belong to --task probe"),
    (["--task", "sts", "--model", "bm25", "--data", "x.csv"], "retrieval baseline"),
    (["--task", "retrieval", "--model", "minilm", "--data", "/no/such/folder"], "does not exist"),
])
def test_cli_text_evaluation_errors(args, fragment, tmp_path, capsys):
    if "x.csv" in args:
        (tmp_path / "x.csv").write_text("g\tf\t2012\t1\t1.0\ta\tb\n")
        args = [str(tmp_path / "x.csv") if a == "x.csv" else a for a in args]
    code = main(["evaluate", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert fragment in err.replace("\n", " ")
