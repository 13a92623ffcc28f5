"""Pair files with named columns (modalities/text/tables.py): one STS set written in every layout
(the STS Benchmark's own, CSV, TSV, JSONL, aliases, explicit columns, gzip) must read back as the
same pairs and scores; training rows with negatives likewise; a missing column is a DataError that
names the role and the columns found."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.sources import read_sts
from contrastkit.modalities.text.tables import (
    TrainingPairs,
    parse_columns,
    read_training_pairs,
    write_training_pairs,
)
from tests.conftest import data_path

# Quotes (unbalanced too), commas and apostrophes: what breaks a reader that guesses the quoting.
FIRST = ['A man said "hello, world".', "It's 5 o'clock, isn't it?", 'An "odd quote here.', "plain text"]
SECOND = ["Someone greeted the world.", "Is it five?", "A quote, half open.", 'plain "text"']
SCORES = [4.2, 3.0, 0.5, 5.0]


def _write_csv(path, header, rows, delimiter=","):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        if delimiter == "\t":  # TSV: no quoting, quotes are text
            handle.write("\t".join(header) + "\n")
            handle.writelines("\t".join(map(str, row)) + "\n" for row in rows)
        else:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return path


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _sts_layouts(tmp_path, first, second, scores):
    """(file, columns) pairs that all hold the same STS set."""
    rows = list(zip(first, second, scores))
    stsb = tmp_path / "stsb-layout.csv"  # genre, file, year, id, score, s1, s2: tab-separated, no header
    stsb.write_text("".join(f"main-news\tf\t2012\t{i:04d}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)),
                    encoding="utf-8")
    return [
        (stsb, None),
        (_write_csv(tmp_path / "named.csv", ["sentence1", "sentence2", "score"], rows), None),
        (_write_csv(tmp_path / "named.tsv", ["score", "sentence1", "sentence2"],
                    [(s, a, b) for a, b, s in rows], delimiter="\t"), None),
        (_write_csv(tmp_path / "named.csv.gz", ["sentence1", "sentence2", "score"], rows), None),
        (_write_jsonl(tmp_path / "named.jsonl", [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in rows]),
         None),
        (_write_csv(tmp_path / "aliases.csv", ["idx", "Text1", "text_2", "label"],
                    [(i, a, b, s) for i, (a, b, s) in enumerate(rows)]), None),
        (_write_csv(tmp_path / "explicit.tsv", ["gold", "left", "right"], [(s, a, b) for a, b, s in rows],
                    delimiter="\t"), ["left", "right", "gold"]),
        (_write_jsonl(tmp_path / "explicit.jsonl", [{"q": a, "d": b, "rel": s} for a, b, s in rows]),
         "sentence1=q,sentence2=d,score=rel"),
    ]


def test_every_sts_layout_reads_the_same_pairs(tmp_path):
    for path, columns in _sts_layouts(tmp_path, FIRST, SECOND, SCORES):
        pairs = read_sts(path, columns=columns)
        assert pairs.first == FIRST, path.name
        assert pairs.second == SECOND, path.name
        np.testing.assert_array_equal(pairs.scores, SCORES, err_msg=path.name)


def test_real_stsb_dev_in_every_layout(tmp_path):
    original = read_sts(data_path("stsb") / "sts-dev.csv")
    for path, columns in _sts_layouts(tmp_path, original.first, original.second, original.scores.tolist()):
        pairs = read_sts(path, columns=columns)
        assert (pairs.first, pairs.second) == (original.first, original.second), path.name
        np.testing.assert_array_equal(pairs.scores, original.scores, err_msg=path.name)


def test_missing_column_names_the_role_and_the_columns_found(tmp_path):
    path = _write_csv(tmp_path / "nli.csv", ["premise", "hypothesis", "gold"], [("a b", "c d", 1.0)] * 3)
    with pytest.raises(DataError) as error:
        read_sts(path)
    message = str(error.value)
    assert "'sentence1'" in message and "premise, hypothesis, gold" in message and "--columns" in message
    assert read_sts(path, columns="premise,hypothesis,gold").first == ["a b"] * 3
    with pytest.raises(DataError, match="no column 'score'.*premise, hypothesis, gold"):
        read_sts(path, columns={"sentence1": "premise", "sentence2": "hypothesis", "score": "score"})
    only_pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "x", "positive": "y"}] * 2)
    with pytest.raises(DataError, match="'score'.*anchor, positive"):
        read_sts(only_pairs)


def test_bad_fields_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="line 3.*not a number"):
        read_sts(_write_csv(tmp_path / "s.csv", ["sentence1", "sentence2", "score"], [("a", "b", 1), ("c", "d", "x")]))
    with pytest.raises(DataError, match="'sentence2' is empty"):
        read_sts(_write_csv(tmp_path / "e.csv", ["sentence1", "sentence2", "score"], [("a", "", 1)]))
    ragged = tmp_path / "r.tsv"
    ragged.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\n", encoding="utf-8")
    with pytest.raises(DataError, match="Line 3.*2 fields"):
        read_sts(ragged)
    with pytest.raises(ConfigError, match="not a mix"):
        parse_columns("a,score=b")


TRIPLETS = TrainingPairs(
    anchors=["what is a cell", 'the "odd" query, with a comma'],
    positives=["cells are units of life", "an answer"],
    negatives=[("proteins fold", "a dog barked"), ("rain fell", "the moon, again")],
)


def test_training_rows_in_every_layout(tmp_path):
    rows = list(zip(TRIPLETS.anchors, TRIPLETS.positives, TRIPLETS.negatives))
    files = [
        (write_training_pairs(TRIPLETS, tmp_path / "written.csv"), None),
        (write_training_pairs(TRIPLETS, tmp_path / "written.tsv"), None),
        (write_training_pairs(TRIPLETS, tmp_path / "written.jsonl.gz"), None),
        (_write_jsonl(tmp_path / "lists.jsonl", [{"query": a, "positive": p, "negatives": list(n)} for a, p, n in rows]),
         None),
        # numbered negatives in a shuffled header order, found in the order of their numbers
        (_write_csv(tmp_path / "numbered.csv", ["neg_2", "question", "document", "neg_1"],
                    [(n[1], a, p, n[0]) for a, p, n in rows]), None),
        (_write_csv(tmp_path / "explicit.csv", ["x", "y", "z1", "z2"], [(a, p, *n) for a, p, n in rows]),
         ["x", "y", "z1", "z2"]),
    ]
    for path, columns in files:
        pairs = read_training_pairs(path, columns=columns)
        assert (pairs.anchors, pairs.positives, pairs.negatives) == \
            (TRIPLETS.anchors, TRIPLETS.positives, TRIPLETS.negatives), path.name
        assert pairs.negatives_per_row == 2
    in_batch_only = read_training_pairs(_write_csv(tmp_path / "p.csv", ["anchor", "positive"], [("a", "b")]))
    assert in_batch_only.negatives == [()] and in_batch_only.negatives_per_row == 0


def test_training_rows_need_the_same_number_of_negatives(tmp_path):
    path = _write_jsonl(tmp_path / "ragged.jsonl", [{"anchor": "a", "positive": "b", "negatives": ["c", "d"]},
                                                    {"anchor": "e", "positive": "f", "negatives": ["g"]}])
    with pytest.raises(DataError, match="Row 2.*1 negatives.*first row 2"):
        read_training_pairs(path)
    with pytest.raises(DataError, match="'anchor'.*sentence, score"):
        read_training_pairs(_write_csv(tmp_path / "x.csv", ["sentence", "score"], [("a", 1)]))
