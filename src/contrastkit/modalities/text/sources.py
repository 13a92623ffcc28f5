"""Text sources read from disk: one text per line, JSONL, STS sentence pairs with scores, and BEIR
retrieval folders. Every reader returns plain Python lists (and numpy scores), in file order.

Formats:

- lines: ``.txt`` or ``.txt.gz``, UTF-8, one text per line; blank lines are skipped.
- JSONL: ``.jsonl`` or ``.jsonl.gz``, one object per line; ``field`` names the text (``text``).
- STS: the STS Benchmark csv files, tab-separated *without quoting* (quotes are part of sentences):
  genre, file, year, id, score, sentence1, sentence2 [, extra source columns]. Columns 4, 5, 6 are
  read; the csv module must not be used, its quote handling merges lines. Any other STS file is a
  CSV, TSV or JSONL file with named columns (``sentence1, sentence2, score`` or an alias such as
  ``text1, text2, label``; :mod:`contrastkit.modalities.text.tables`).
- BEIR: ``corpus.jsonl[.gz]`` ({_id, title, text}), ``queries.jsonl[.gz]`` ({_id, text}),
  ``qrels/<split>.tsv`` (header, then query-id, corpus-id, score). Only queries with qrels in the
  split are kept; grades are integers (graded relevance). The split ``dev`` is ``qrels/dev.tsv``
  where the folder has one, and otherwise a fixed carve of the train queries
  (:func:`in_dev_carve`), so that settings are chosen without scoring the test split.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrastkit.core.errors import DataError


def open_text_file(path: Path):
    """``path`` opened for reading as UTF-8 text, gunzipped when it starts with gzip's magic bytes."""
    return _open_text(Path(path))


def _open_text(path: Path):
    if not path.is_file():
        raise DataError(f"The text file '{path}' does not exist (or is not a file).")
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip("\n").rstrip("\r")
    except (UnicodeDecodeError, OSError, EOFError) as error:
        raise DataError(f"Could not read '{path}' as UTF-8 text (plain or gzip): {error}.") from error


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-blank lines of a ``.txt`` / ``.txt.gz`` file, stripped of surrounding whitespace."""
    path = Path(path)
    texts = [line.strip() for _, line in _lines(path) if line.strip()]
    if not texts:
        raise DataError(f"'{path}' holds no text lines.")
    return texts


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All objects of a JSONL file (plain or gzip)."""
    path = Path(path)
    records = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"Line {number} of '{path}' is not valid JSON: {error}.") from error
        if not isinstance(record, dict):
            raise DataError(f"Line {number} of '{path}' is not a JSON object.")
        records.append(record)
    if not records:
        raise DataError(f"'{path}' holds no JSON records.")
    return records


def read_jsonl_texts(path: str | os.PathLike, field: str = "text") -> list[str]:
    """The ``field`` of every record of a JSONL file."""
    records = read_jsonl(path)
    missing = next((i for i, r in enumerate(records) if not isinstance(r.get(field), str)), None)
    if missing is not None:
        raise DataError(
            f"Record {missing + 1} of '{path}' has no text field '{field}' (fields: "
            f"{', '.join(sorted(records[missing]))}). Choose the field with --text-field."
        )
    return [r[field] for r in records]


def read_texts(path: str | os.PathLike, field: str = "text") -> list[str]:
    """Texts from lines (``.txt[.gz]``) or JSONL (``.jsonl[.gz]``), chosen by suffix."""
    name = Path(path).name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return read_jsonl_texts(path, field)
    return read_lines(path)


# A sentence ends at . ! or ? followed by white space and what can open a sentence: a capital,
# a digit, or an opening quote / bracket before one. Rule-based: "e.g. Smith" splits, "e.g. the"
# does not; good enough to find pseudo-queries in abstracts, not a linguistic tool.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """``text`` cut at :data:`SENTENCE_END`, each piece stripped, empty pieces dropped."""
    return [piece.strip() for piece in SENTENCE_END.split(text) if piece.strip()]


def read_documents(path: str | os.PathLike, text_field: str = "text",
                   title_field: str | None = "title") -> list[list[str]]:
    """A JSONL corpus (e.g. a BEIR ``corpus.jsonl[.gz]``, or the BEIR folder holding it) as
    documents: each is ``[title, sentence_1, sentence_2, ...]`` (no title when the record has an
    empty one or ``title_field`` is None), with the sentences from :func:`split_sentences`.
    Records whose text is empty are skipped; none left is an error."""
    path = Path(path)
    if path.is_dir():
        path = _find(path, "corpus.jsonl")
    documents = []
    for record in read_jsonl(path):
        text = record.get(text_field)
        if text is not None and not isinstance(text, str):
            raise DataError(f"The field '{text_field}' of a record of '{path}' is not text ({type(text).__name__}).")
        title = record.get(title_field) if title_field else None
        sentences = split_sentences(text or "")
        if isinstance(title, str) and title.strip():
            sentences = [title.strip(), *sentences]
        if sentences:
            documents.append(sentences)
    if not documents:
        raise DataError(f"'{path}' holds no record with text in its field '{text_field}'.")
    return documents


@dataclass(frozen=True)
class SentencePairs:
    """Sentence pairs with gold similarity scores (STS)."""

    first: list[str]
    second: list[str]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


def read_sts(path: str | os.PathLike, columns=None) -> SentencePairs:
    """STS pairs with gold scores: an STS Benchmark file (see the module docstring for the layout),
    or a CSV / TSV / JSONL file with named columns (:func:`contrastkit.modalities.text.tables.read_scored_pairs`;
    ``columns`` names them, e.g. ``["s1", "s2", "gold"]``, where the names are not the usual ones)."""
    path = Path(path)
    if columns is not None or not is_stsb_layout(path):
        from contrastkit.modalities.text.tables import read_scored_pairs

        return read_scored_pairs(path, columns)
    first, second, scores = [], [], []
    for number, line in _lines(path):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < 7:
            raise DataError(
                f"Line {number} of '{path}' has {len(columns)} tab-separated columns; an STS "
                "file has at least 7 (genre, file, year, id, score, sentence1, sentence2)."
            )
        try:
            scores.append(float(columns[4]))
        except ValueError as error:
            raise DataError(f"Line {number} of '{path}': score '{columns[4]}' is not a number.") from error
        first.append(columns[5])
        second.append(columns[6])
    if not first:
        raise DataError(f"'{path}' holds no sentence pairs.")
    return SentencePairs(first, second, np.asarray(scores, dtype=np.float64))


def is_stsb_layout(path: Path) -> bool:
    """Whether the first non-blank line of ``path`` is an STS Benchmark row: at least 7 tab-separated
    fields, none of them a column name for STS pairs (a header line names its columns instead). A
    JSONL file never is."""
    from contrastkit.modalities.text.tables import STS_ROLES, is_column_name

    if path.name.lower().removesuffix(".gz").endswith((".jsonl", ".json")):
        return False
    for _, line in _lines(path):
        if line.strip():
            fields = line.split("\t")
            return len(fields) >= 7 and not any(is_column_name(field, STS_ROLES) for field in fields)
    return False


@dataclass(frozen=True)
class RetrievalSet:
    """A BEIR-layout retrieval set: corpus, the queries of one split, and graded qrels."""

    doc_ids: list[str]
    titles: list[str]
    texts: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]

    def documents(self, separator: str = " ") -> list[str]:
        """Title and text joined as BEIR's dense models embed them (title, separator, text)."""
        return [f"{t}{separator}{x}".strip() if t else x for t, x in zip(self.titles, self.texts)]


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"The BEIR folder '{folder}' has no {stem} (or {stem}.gz).")


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """``query id -> {doc id: grade}`` from a BEIR qrels tsv (header line skipped)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        columns = line.split("\t")
        if number == 1 and not columns[-1].strip().lstrip("-").isdigit():
            continue  # header
        if not line.strip():
            continue
        if len(columns) != 3:
            raise DataError(f"Line {number} of '{path}' should have 3 tab-separated columns "
                            "(query-id, corpus-id, score).")
        try:
            qrels.setdefault(columns[0], {})[columns[1]] = int(columns[2])
        except ValueError as error:
            raise DataError(f"Line {number} of '{path}': grade '{columns[2]}' is not an integer.") from error
    return qrels


def read_corpus(path: str | os.PathLike, text_field: str = "text", title_field: str = "title") -> RetrievalSet:
    """A corpus alone, as a :class:`RetrievalSet` without queries: a BEIR folder (its
    ``corpus.jsonl[.gz]``) or a JSONL file of records with ``text_field`` (and optionally
    ``title_field`` and ``_id``; the record's line number is the id when it has none)."""
    path = Path(path)
    if path.is_dir():
        path = _find(path, "corpus.jsonl")
    elif not path.is_file():
        raise DataError(f"The corpus '{path}' does not exist (give a BEIR folder or a .jsonl[.gz] file).")
    records = read_jsonl(path)
    bad = next((i for i, r in enumerate(records) if not isinstance(r.get(text_field, ""), str)), None)
    if bad is not None or all(not r.get(text_field) for r in records):
        raise DataError(f"The records of '{path}' need a text field '{text_field}'"
                        + (f" (record {bad + 1} has a non-text one)." if bad is not None else "."))
    return RetrievalSet(
        doc_ids=[str(r.get("_id", i)) for i, r in enumerate(records)],
        titles=[r.get(title_field, "") or "" for r in records],
        texts=[r.get(text_field, "") or "" for r in records],
        query_ids=[], queries=[], qrels={},
    )


DEV_SPLIT = "dev"
DEV_CARVE_MODULUS = 3  # one train query in three, by the hash of its id


def hash_bucket(text: str, modulus: int) -> int:
    """The SHA-256 of ``text`` (UTF-8), read as a big-endian integer, modulo ``modulus``: a split rule
    that looks at nothing but the text, the same on every machine and Python version."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big") % modulus


def in_dev_carve(query_id: str) -> bool:
    """Whether a train query belongs to the carved ``dev`` split of a BEIR folder without
    ``qrels/dev.tsv``: the SHA-256 of its id (UTF-8), read as a big-endian integer, is 0 modulo 3.

    The rule looks at nothing but the id, so the carve is the same on every machine and Python
    version (unlike ``hash()``), does not move when other queries are added, and takes about a
    third of the train queries (268 of SciFact's 809 train claims)."""
    return hash_bucket(query_id, DEV_CARVE_MODULUS) == 0


def read_split_qrels(folder: Path, split: str) -> tuple[dict[str, dict[str, int]], str]:
    """``(qrels, where they came from)`` of ``split`` in the BEIR folder ``folder``. ``dev`` falls
    back to the carve of ``qrels/train.tsv`` (:func:`in_dev_carve`) when there is no ``dev.tsv``."""
    qrels_folder = folder / "qrels"
    qrels_file = qrels_folder / f"{split}.tsv"
    if qrels_file.is_file():
        return read_qrels(qrels_file), str(qrels_file)
    train_file = qrels_folder / "train.tsv"
    if split == DEV_SPLIT and train_file.is_file():
        train = read_qrels(train_file)
        return {q: docs for q, docs in train.items() if in_dev_carve(q)}, f"{train_file} (dev carve)"
    available = sorted(p.stem for p in qrels_folder.glob("*.tsv"))
    hint = (" 'dev' is carved from train.tsv when there is no dev.tsv; this folder has neither, so "
            "score another split by name (split 'test' only once settings are fixed)."
            if split == DEV_SPLIT else "")
    raise DataError(f"'{folder}' has no qrels for split '{split}' (available: "
                    f"{', '.join(available) or 'none'}).{hint}")


def read_beir(folder: str | os.PathLike, split: str = DEV_SPLIT) -> RetrievalSet:
    """A BEIR folder (corpus, queries, ``qrels/<split>.tsv``).

    The default split is ``dev`` (``qrels/dev.tsv``, or the carve of the train queries of
    :func:`in_dev_carve`): the test split is read only when asked for by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"The BEIR folder '{folder}' does not exist.")
    qrels, qrels_source = read_split_qrels(folder, split)
    corpus = read_jsonl(_find(folder, "corpus.jsonl"))
    queries = {str(r["_id"]): r.get("text", "") for r in read_jsonl(_find(folder, "queries.jsonl"))}
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise DataError(f"{len(missing)} query ids of {qrels_source} are not in queries.jsonl "
                        f"(first: {missing[0]}).")
    query_ids = [q for q in queries if q in qrels]
    return RetrievalSet(
        doc_ids=[str(r["_id"]) for r in corpus],
        titles=[r.get("title", "") or "" for r in corpus],
        texts=[r.get("text", "") or "" for r in corpus],
        query_ids=query_ids,
        queries=[queries[q] for q in query_ids],
        qrels={q: qrels[q] for q in query_ids},
    )
