"""Paired sources (JSONL, CSV, two files by id, the code-docstring pairs) and cross-modal retrieval
metrics against hand-computed rankings."""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict

import numpy as np
import pytest

from contrastkit.core.errors import DataError
from contrastkit.modalities.pairs.pairs import (
    read_aligned_pairs,
    read_code_docstring,
    read_pairs,
)
from contrastkit.modalities.pairs.retrieval import pair_retrieval
from tests.conftest import data_path

RECORDS = [
    {"id": "a", "doc": "Return the sum, of two numbers.", "code": "def add(x, y):\n    return x + y", "split": "train"},
    {"id": "b", "doc": "Quote \"this\" text.", "code": "def quote(s):\n    return '\"' + s + '\"'", "split": "train"},
    {"id": "c", "doc": "Do nothing.", "code": "def noop():\n    pass", "split": "test"},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _write_csv(path, records, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(records)


def test_jsonl_csv_and_tsv_give_the_same_pairs(tmp_path):
    _write_jsonl(tmp_path / "p.jsonl", RECORDS)
    _write_csv(tmp_path / "p.csv", RECORDS)
    _write_csv(tmp_path / "p.tsv", RECORDS, delimiter="\t")
    with open(tmp_path / "p.jsonl", "rb") as source:
        (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(source.read()))
    expected = read_pairs(tmp_path / "p.jsonl", "doc", "code", id_field="id")
    assert expected.first == [r["doc"] for r in RECORDS]
    assert expected.second == [r["code"] for r in RECORDS]  # newlines and quotes survive
    assert expected.ids == ["a", "b", "c"]
    for name in ("p.csv", "p.tsv", "p.jsonl.gz"):
        assert read_pairs(tmp_path / name, "doc", "code", id_field="id") == expected, name


def test_split_selection_and_default_ids(tmp_path):
    _write_jsonl(tmp_path / "p.jsonl", RECORDS)
    train = read_pairs(tmp_path / "p.jsonl", "doc", "code", split="train")
    assert len(train) == 2 and train.ids == ["0", "1"]
    with pytest.raises(DataError, match="split = 'valid'.*test, train"):
        read_pairs(tmp_path / "p.jsonl", "doc", "code", split="valid")


def test_missing_field_and_bad_suffix_are_data_errors(tmp_path):
    _write_jsonl(tmp_path / "p.jsonl", RECORDS)
    with pytest.raises(DataError, match="'docstring'.*--first-field"):
        read_pairs(tmp_path / "p.jsonl", "docstring", "code")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match="neither JSONL"):
        read_pairs(tmp_path / "p.txt", "doc", "code")


def test_two_files_are_aligned_by_id_in_the_first_files_order(tmp_path):
    _write_jsonl(tmp_path / "docs.jsonl", [{"id": r["id"], "doc": r["doc"]} for r in RECORDS])
    shuffled = [RECORDS[2], RECORDS[0], RECORDS[1]]
    _write_csv(tmp_path / "code.csv", [{"id": r["id"], "code": r["code"]} for r in shuffled])
    pairs = read_aligned_pairs(tmp_path / "docs.jsonl", tmp_path / "code.csv", "doc", "code")
    assert pairs.ids == ["a", "b", "c"]
    assert pairs.second == [r["code"] for r in RECORDS]

    _write_csv(tmp_path / "short.csv", [{"id": r["id"], "code": r["code"]} for r in RECORDS[:2]])
    with pytest.raises(DataError, match="1 only in the first"):
        read_aligned_pairs(tmp_path / "docs.jsonl", tmp_path / "short.csv", "doc", "code")
    _write_csv(tmp_path / "twice.csv", [{"id": "a", "code": "x"}] + [{"id": r["id"], "code": "y"} for r in RECORDS])
    with pytest.raises(DataError, match="repeats 1 id"):
        read_aligned_pairs(tmp_path / "docs.jsonl", tmp_path / "twice.csv", "doc", "code")


def test_code_docstring_splits_match_the_provenance():
    path = data_path("code-docstring") / "pairs.jsonl.gz"
    splits = {name: read_code_docstring(name, path) for name in ("train", "valid", "test")}
    # PROVENANCE.txt: 5206 functions, train 4416 / valid 436 / test 354, split by file path.
    assert {name: len(p) for name, p in splits.items()} == {"train": 4416, "valid": 436, "test": 354}
    modules = defaultdict(set)
    for name, pairs in splits.items():
        for pair_id in pairs.ids:
            modules[pair_id.split(":")[0]].add(name)
    assert all(len(found) == 1 for found in modules.values())  # no module in two splits
    test = splits["test"]
    assert test.first_name == "docstring_summary" and test.second_name == "code"
    assert all(code.lstrip().startswith(("def ", "async def ", "@")) for code in test.second)


# Hand-computed rankings (cosine). Corpus c0 = (1, 0), c1 = (0, 1), c2 = (-1, 0); queries
# q0 = (0.9, 0.1) -> c0, c1, c2;  q1 = (1, 0.2) -> c0, c1, c2;  q2 = (0.1, 1) -> c1, c0, c2.
FIRST = np.array([[0.9, 0.1], [1.0, 0.2], [0.1, 1.0]])
SECOND = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_retrieval_metrics_against_a_hand_computed_ranking():
    result = pair_retrieval(FIRST, SECOND)
    forward = result["first_to_second"]  # relevant ranks: 1, 2, 3
    assert forward["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert forward["recall@1"] == pytest.approx(1 / 3)
    assert forward["recall@5"] == forward["recall@10"] == 1.0
    # c0 -> q0 (0.994), q1 (0.981), q2; c1 -> q2, q1, q0; c2 -> q2, q1, q0: relevant ranks 1, 2, 1.
    backward = result["second_to_first"]
    assert backward["mrr"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert backward["recall@1"] == pytest.approx(2 / 3)
    assert (forward["queries"], forward["corpus"]) == (3, 3)


def test_identical_items_are_one_query_with_every_partner_relevant():
    # q0 and q1 share a key ("x"): one query (q0's embedding) whose relevant items are c0 and c1.
    result = pair_retrieval(FIRST, SECOND, first_keys=["x", "x", "y"])
    forward = result["first_to_second"]
    assert (forward["queries"], forward["corpus"]) == (2, 3)
    # x: ranking c0, c1, c2 -> first relevant at 1, recall@1 = 1/2; y: c1, c0, c2 -> c2 at rank 3.
    assert forward["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert forward["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    # Reverse: corpus {x = q0, y = q2}; c0 -> x first; c1 -> y, x; c2 -> y first.
    backward = result["second_to_first"]
    assert (backward["queries"], backward["corpus"]) == (3, 2)
    assert backward["mrr"] == pytest.approx((1 + 1 / 2 + 1) / 3)


def test_mismatched_row_counts_are_refused():
    with pytest.raises(DataError, match="row i of each"):
        pair_retrieval(FIRST, SECOND[:2])
