"""Text readers against the real files' published counts (STS-B, SciFact in BEIR layout, the
SciFact sentences) and against an independent line count; bad input raises DataError naming the
file and line."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest

from contrastkit.core.errors import DataError
from contrastkit.modalities.text.data import SentenceData
from contrastkit.modalities.text.sources import (
    read_beir,
    read_documents,
    read_jsonl,
    read_lines,
    read_sts,
    read_texts,
    split_sentences,
)
from tests.conftest import data_path

STSB_COUNTS = {"train": 5749, "dev": 1500, "test": 1379}  # Cer et al. 2017, and PROVENANCE.txt


@pytest.mark.parametrize("split", sorted(STSB_COUNTS))
def test_stsb_counts_and_columns(split):
    path = data_path("stsb") / f"sts-{split}.csv"
    pairs = read_sts(path)
    assert len(pairs) == len(pairs.first) == len(pairs.second) == len(pairs.scores) == STSB_COUNTS[split]
    assert pairs.scores.min() >= 0.0 and pairs.scores.max() <= 5.0
    # Second derivation: every non-blank line of the file is one pair (a csv reader that honours
    # quotes would merge lines and get fewer), and its sentences are tab fields 5 and 6.
    raw = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(raw) == STSB_COUNTS[split]
    assert pairs.first == [columns[5] for columns in raw]
    assert pairs.second == [columns[6] for columns in raw]
    np.testing.assert_array_equal(pairs.scores, [float(columns[4]) for columns in raw])
    assert any(len(columns) > 7 for columns in raw)  # rows with extra source columns are read too


def test_scifact_test_split_counts():
    scifact = read_beir(data_path("scifact"), "test")
    assert len(scifact.doc_ids) == len(set(scifact.doc_ids)) == len(scifact.texts) == 5183
    assert len(scifact.query_ids) == len(scifact.queries) == 300
    assert sum(len(docs) for docs in scifact.qrels.values()) == 339
    assert set(scifact.qrels) == set(scifact.query_ids)
    doc_ids = set(scifact.doc_ids)
    assert all(doc in doc_ids for docs in scifact.qrels.values() for doc in docs)
    assert all(grade == 1 for docs in scifact.qrels.values() for grade in docs.values())
    documents = scifact.documents()
    assert documents[0] == f"{scifact.titles[0]} {scifact.texts[0]}"


def test_scifact_train_split_counts():
    scifact = read_beir(data_path("scifact"), "train")
    assert len(scifact.query_ids) == 809
    assert sum(len(docs) for docs in scifact.qrels.values()) == 919


def _qrels_by_hand(path) -> dict[str, set[str]]:
    """query id -> relevant doc ids of a qrels tsv, read with a plain loop (second derivation)."""
    relevant: dict[str, set[str]] = {}
    with open(path, encoding="utf-8") as handle:
        next(handle)  # header
        for line in handle:
            if line.strip():
                query, doc, _ = line.rstrip("\n").split("\t")
                relevant.setdefault(query, set()).add(doc)
    return relevant


def test_scifact_dev_is_a_fixed_third_of_the_train_claims():
    train = _qrels_by_hand(data_path("scifact") / "qrels" / "train.tsv")
    # The rule of the docstring, written out again: SHA-256 of the id, as an integer, is 0 mod 3.
    carved = {q for q in train if int(hashlib.sha256(q.encode("utf-8")).hexdigest(), 16) % 3 == 0}
    left = set(train) - carved
    dev = read_beir(data_path("scifact"))  # dev is the default split
    assert set(dev.query_ids) == carved and len(dev.query_ids) == len(carved) == 268
    assert carved.isdisjoint(left) and len(left) == 809 - 268
    assert {q: set(docs) for q, docs in dev.qrels.items()} == {q: train[q] for q in carved}
    assert sum(len(docs) for docs in dev.qrels.values()) == 307
    test = _qrels_by_hand(data_path("scifact") / "qrels" / "test.tsv")
    assert carved.isdisjoint(test)
    # Deterministic: the same on a second read, and pinned to ids computed when the rule was set
    # (Python's hash() of a str changes between processes; the carve must not).
    again = read_beir(data_path("scifact"), "dev")
    assert again.query_ids == dev.query_ids and again.qrels == dev.qrels
    assert dev.query_ids[:6] == ["0", "2", "4", "11", "17", "18"]


def _write_tiny_beir(folder, qrels_files: dict[str, str]) -> None:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": "t"}) + "\n" for i in range(3)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": str(i), "text": "q"}) + "\n" for i in range(12)))
    for split, rows in qrels_files.items():
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)


def test_beir_dev_qrels_file_wins_over_the_carve(tmp_path):
    train_rows = "".join(f"{q}\td0\t1\n" for q in range(12))
    _write_tiny_beir(tmp_path / "with-dev", {"train": train_rows, "dev": "5\td1\t1\n", "test": "7\td2\t1\n"})
    assert read_beir(tmp_path / "with-dev").qrels == {"5": {"d1": 1}}
    _write_tiny_beir(tmp_path / "without-dev", {"train": train_rows, "test": "7\td2\t1\n"})
    carved = read_beir(tmp_path / "without-dev")
    assert carved.query_ids == [q for q in map(str, range(12))
                                if int(hashlib.sha256(q.encode()).hexdigest(), 16) % 3 == 0]
    assert carved.query_ids == ["0", "1", "2", "4", "11"]  # pinned: the rule must not drift


def test_scifact_sentences_count():
    path = data_path("scifact") / "sentences.txt.gz"
    sentences = read_lines(path)
    assert len(sentences) == 49676
    with gzip.open(path, "rt", encoding="utf-8") as handle:  # independent count
        assert sum(1 for line in handle if line.strip()) == 49676
    assert read_texts(path) == sentences


def test_missing_files_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_lines(tmp_path / "absent.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_sts(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="does not exist"):
        read_beir(tmp_path / "absent")


def test_sts_line_with_too_few_columns(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_text("main-news\tf\t2012\t1\t4.0\ta cat\ta feline\nmain-news\tf\t2012\t2\t3.0\tonly one\n")
    with pytest.raises(DataError, match=r"Line 2 of .*sts\.csv.* 6 tab-separated columns"):
        read_sts(path)


def test_sts_score_that_is_not_a_number(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_text("main-news\tf\t2012\t1\tfour\ta cat\ta feline\n")
    with pytest.raises(DataError, match="not a number"):
        read_sts(path)


def test_jsonl_line_that_is_not_json(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": "1", "text": "fine"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"Line 2 of .*corpus\.jsonl.* not valid JSON"):
        read_jsonl(path)


def test_jsonl_missing_text_field_names_the_fields(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="no text field 'text'.*body"):
        read_texts(path)


def test_beir_unknown_split_lists_the_available_ones(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(DataError, match="no qrels for split 'valid' .*available: test"):
        read_beir(tmp_path, "valid")
    # Without dev.tsv or train.tsv there is nothing to carve dev from: the default never falls back to test.
    with pytest.raises(DataError, match="no qrels for split 'dev' .*available: test.*carved from train.tsv"):
        read_beir(tmp_path)


def test_beir_qrels_with_a_bad_column_count(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "t"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "q"}) + "\n")
    with pytest.raises(DataError, match="3 tab-separated columns"):
        read_beir(tmp_path, "test")


def test_split_sentences_by_hand():
    text = ("Aspirin lowers risk (p = 0.01). 25 patients were seen! Was it safe? "
            "Yes, e.g. in trials. \"Quoted\" starts here.  ")
    assert split_sentences(text) == [
        "Aspirin lowers risk (p = 0.01).", "25 patients were seen!", "Was it safe?",
        "Yes, e.g. in trials.", '"Quoted" starts here.',
    ]
    assert split_sentences("   ") == []


def test_scifact_documents_against_the_release_sentences():
    documents = read_documents(data_path("scifact"))
    scifact = read_beir(data_path("scifact"), "test")
    assert len(documents) == 5183
    assert [d[0] for d in documents[:50]] == [t.strip() for t in scifact.titles[:50]]
    # Second derivation: sentences.txt.gz holds the SciFact release's own sentence split (titles and
    # sentences of >= 5 words, deduplicated). Nearly all of ours must be among its lines.
    lines = set(read_lines(data_path("scifact") / "sentences.txt.gz"))
    ours = [" ".join(s.split()) for d in documents for s in d if len(s.split()) >= 5]
    assert sum(s in lines for s in ours) / len(ours) > 0.95


def test_documents_give_contexts_that_stay_inside_their_document(tmp_path):
    path = tmp_path / "corpus.jsonl"
    records = [{"_id": "a", "title": "T1", "text": "A one. A two. A three."},
               {"_id": "b", "title": "", "text": "B one. B two."},
               {"_id": "c", "title": "T3", "text": ""}]
    path.write_text("\n".join(json.dumps(r) for r in records))
    data = SentenceData.from_file(path, context_window=10)
    assert data.texts == ["T1", "A one.", "A two.", "A three.", "B one.", "B two.", "T3"]
    # Naive loop: the context of i is every other sentence of its own document, in order.
    owner = [0, 0, 0, 0, 1, 1, 2]
    for i in range(len(data)):
        expected = " ".join(t for j, t in enumerate(data.texts) if owner[j] == owner[i] and j != i)
        assert data.context(i) == expected
    assert SentenceData.from_file(path, context_window=1).context(2) == "A one. A three."
