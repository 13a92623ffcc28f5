"""Sentence pairs in files with named columns: STS pairs with scores, and training rows of
(anchor, positive, negative_1 .. negative_k).

The layouts of sentence-transformers' data sets, chosen by suffix (``.gz`` allowed):

- ``.csv``: comma-separated, the first line names the columns, fields quoted as RFC 4180 (the
  csv module): a field may hold commas, quotes (doubled) and line breaks. A ``.csv`` file whose
  header holds tabs and no comma is read as TSV.
- ``.tsv`` / ``.tab``: tab-separated, the first line names the columns, *no quoting*: a quote is
  part of the text (as in STS-B, whose sentences hold unbalanced quotes); a field cannot hold a tab.
- ``.jsonl`` / ``.json``: one object per line, its keys are the columns; the negatives may also be
  one key holding a list of texts.

A column is found by its role. Unless ``columns`` names them, each role takes the first of its
aliases the header has (letter case and the separators ``_``, ``-`` and space ignored):

=============  ====================================================================
role           aliases
=============  ====================================================================
``sentence1``  sentence1, text1, sentence_a, anchor, query
``sentence2``  sentence2, text2, sentence_b, positive
``score``      score, label, similarity, similarity_score, relatedness_score
``anchor``     anchor, query, question, sentence1, text1, sentence_a, definition
``positive``   positive, pos, document, passage, answer, sentence2, text2, sentence_b, entry
``negative``   every column called negative, neg or hard_negative, numbered or not
               (``negative_1 .. negative_k`` in the order of their numbers), or one
               JSONL key ``negatives`` / ``negative`` holding a list
=============  ====================================================================

``columns`` names them explicitly, in the order of the roles (``["s1", "s2", "gold"]`` for STS;
``["q", "d", "n1", "n2"]`` for training: anchor, positive, then every negative), or by role
(``{"sentence1": "s1", ...}``; ``"negative"`` takes a list). On the command line,
``--columns s1,s2,gold`` or ``--columns sentence1=s1,sentence2=s2,score=gold`` (:func:`parse_columns`).

Training rows may also have a column named ``domain`` (each row's domain, for the methods routed by
domain: ``mnrl-moe``); it is read whenever the header has it.

A role without a column is a :class:`~contrastkit.core.errors.DataError` that names the role, the
names looked for and the columns the file has; so is an empty field, a score that is no number,
or a row with a different number of negatives from the first row's.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.sources import SentencePairs, open_text_file, read_jsonl

STS_ROLES = ("sentence1", "sentence2", "score")
TRAINING_ROLES = ("anchor", "positive")  # then any number of negatives
ALIASES: dict[str, tuple[str, ...]] = {
    "sentence1": ("sentence1", "text1", "sentence_a", "anchor", "query"),
    "sentence2": ("sentence2", "text2", "sentence_b", "positive"),
    "score": ("score", "label", "similarity", "similarity_score", "relatedness_score"),
    "anchor": ("anchor", "query", "question", "sentence1", "text1", "sentence_a", "definition"),
    "positive": ("positive", "pos", "document", "passage", "answer", "sentence2", "text2", "sentence_b", "entry"),
}
DOMAIN_COLUMN = "domain"  # optional in training rows
NEGATIVE_COLUMN = re.compile(r"^(?:hard)?neg(?:ative)?s?(\d*)$")  # after _key(): negative, negative3, neg_2, ...
Columns = Sequence[str] | Mapping[str, str | Sequence[str]] | None


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def is_column_name(name: str, roles: Sequence[str]) -> bool:
    """Whether ``name`` is one of the aliases of ``roles``."""
    return any(_key(name) == _key(alias) for role in roles for alias in ALIASES[role])


@dataclass(frozen=True)
class Table:
    """A file read as a header and its rows (``line``: where each row starts, for messages)."""

    path: Path
    header: list[str]
    rows: list[dict]
    lines: list[int]


def table_format(path: str | os.PathLike) -> str:
    """``csv``, ``tsv`` or ``jsonl`` from the file name (``.gz`` ignored)."""
    name = Path(path).name.lower().removesuffix(".gz")
    for suffixes, kind in (((".csv",), "csv"), ((".tsv", ".tab"), "tsv"), ((".jsonl", ".json"), "jsonl")):
        if name.endswith(suffixes):
            return kind
    raise DataError(f"'{path}' is not a file of named columns: give a .csv, .tsv or .jsonl file (plain or .gz).")


def read_table(path: str | os.PathLike, kind: str | None = None, header: Sequence[str] | None = None) -> Table:
    """The header and rows of a CSV, TSV or JSONL file (see the module docstring).

    ``kind`` (csv, tsv or jsonl) reads the file as that whatever its name says; ``header`` names the
    columns of a CSV or TSV file that has no header line (every line is then a row). A file read by
    neither is CSV, TSV or JSONL by its name, a tab-separated file named .csv read as TSV."""
    path = Path(path)
    detect = kind is None and header is None
    kind = kind or table_format(path)
    if kind == "jsonl":
        if header is not None:
            raise ConfigError(f"'header' names the columns of a CSV or TSV file; the keys of '{path}' (JSONL) "
                              "are its columns.")
        records = read_jsonl(path)
        header = list(dict.fromkeys(key for record in records for key in record))
        return Table(path, header, records, list(range(1, len(records) + 1)))
    try:
        with open_text_file(path) as handle:
            text = handle.read()
    except (UnicodeDecodeError, OSError, EOFError) as error:
        raise DataError(f"Could not read '{path}' as UTF-8 text (plain or gzip): {error}.") from error
    text = text.removeprefix("\ufeff")
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    if detect and kind == "csv" and "\t" in first_line and "," not in first_line:
        kind = "tsv"  # a tab-separated file named .csv (as the STS Benchmark's own files are)
    if kind == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        records, lines = [], []
        try:
            for fields in reader:
                records.append(fields)
                lines.append(reader.line_num)
        except csv.Error as error:
            raise DataError(f"'{path}' is not valid CSV near line {reader.line_num}: {error}.") from error
    else:
        numbered = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
        lines = [n for n, line in numbered if line.strip()]
        records = [line.split("\t") for _, line in numbered if line.strip()]
    keep = [i for i, fields in enumerate(records) if any(f.strip() for f in fields)]
    records, lines = [records[i] for i in keep], [lines[i] for i in keep]
    if header is None:
        if not records:
            raise DataError(f"'{path}' is empty: a {kind.upper()} file needs a header line naming its columns.")
        header, records, lines = [name.strip() for name in records[0]], records[1:], lines[1:]
    else:
        header = list(header)
    rows = []
    for fields, line in zip(records, lines):
        if len(fields) != len(header):
            raise DataError(f"Line {line} of '{path}' has {len(fields)} fields, the header has {len(header)} "
                            f"({', '.join(header)}).")
        rows.append(dict(zip(header, fields)))
    return Table(path, header, rows, lines)


def parse_columns(text: str | None) -> list[str] | dict[str, list[str]] | None:
    """``"s1,s2,gold"`` -> ``["s1", "s2", "gold"]``; ``"sentence1=s1,score=gold"`` ->
    ``{"sentence1": ["s1"], "score": ["gold"]}`` (a role given twice, e.g. ``negative``, keeps both)."""
    if text is None or not str(text).strip():
        return None
    parts = [part.strip() for part in str(text).split(",")]
    if any(not part for part in parts):
        raise ConfigError(f"--columns takes comma-separated column names, got '{text}'.")
    named = ["=" in part for part in parts]
    if not any(named):
        return parts
    if not all(named):
        raise ConfigError(f"--columns takes either names in the order of the roles or ROLE=NAME pairs, not a mix: "
                          f"'{text}'.")
    mapping: dict[str, list[str]] = {}
    for part in parts:
        role, _, name = part.partition("=")
        mapping.setdefault(role.strip(), []).append(name.strip())
    return mapping


def _explicit(columns: Columns, roles: Sequence[str], negatives: bool) -> dict[str, list[str]]:
    """role -> column names from ``columns`` (the order of ``roles``, then negatives)."""
    if isinstance(columns, str):
        columns = parse_columns(columns)
    if isinstance(columns, Mapping):
        valid = (*roles, "negative") if negatives else tuple(roles)
        unknown = [role for role in columns if role not in valid]
        if unknown:
            raise ConfigError(f"Unknown column role '{unknown[0]}'; the roles are {', '.join(valid)}.")
        return {role: [names] if isinstance(names, str) else list(names) for role, names in columns.items()}
    names = list(columns)
    if len(names) < len(roles) or (len(names) > len(roles) and not negatives):
        expected = f"{', '.join(roles)}{', then the negatives' if negatives else ''}"
        raise ConfigError(f"The columns {', '.join(names)} do not match the roles ({expected}): give one name per "
                          f"role, in that order.")
    resolved = {role: [name] for role, name in zip(roles, names)}
    if names[len(roles):]:
        resolved["negative"] = names[len(roles):]
    return resolved


def resolve_columns(table: Table, roles: Sequence[str], columns: Columns = None,
                    negatives: bool = False) -> dict[str, list[str]]:
    """role -> the columns of ``table`` that hold it (one name per role; the negatives: any number)."""
    by_key = {}
    for name in table.header:
        by_key.setdefault(_key(name), name)
    if columns is not None:
        resolved = _explicit(columns, roles, negatives)
        for role in roles:
            if role not in resolved:
                raise ConfigError(f"--columns names no column for '{role}' (roles: {', '.join(roles)}).")
        for role, names in resolved.items():
            for name in names:
                if name not in table.header:
                    raise DataError(f"'{table.path}' has no column '{name}' (named for '{role}'); its columns: "
                                    f"{', '.join(table.header)}.")
        return resolved
    resolved: dict[str, list[str]] = {}
    taken: set[str] = set()
    for role in roles:
        found = next((by_key[_key(a)] for a in ALIASES[role] if _key(a) in by_key and by_key[_key(a)] not in taken),
                     None)
        if found is None:
            raise DataError(
                f"'{table.path}' has no column for '{role}' (looked for: {', '.join(ALIASES[role])}); its columns: "
                f"{', '.join(table.header) or 'none'}. Name the columns with --columns (in the order "
                f"{', '.join(roles)}{', negatives...' if negatives else ''}), or rename them in the file.")
        resolved[role] = [found]
        taken.add(found)
    if negatives:
        numbered = []
        for position, name in enumerate(table.header):
            match = NEGATIVE_COLUMN.match(_key(name))
            if match and name not in taken:
                numbered.append((int(match.group(1) or 0), position, name))
        if numbered:
            resolved["negative"] = [name for _, _, name in sorted(numbered)]
    return resolved


def _field(table: Table, index: int, column: str) -> str:
    value = table.rows[index].get(column)
    if isinstance(value, str) and value.strip():
        return value
    what = "is empty" if value in (None, "") or (isinstance(value, str) and not value.strip()) else \
        f"is not text ({type(value).__name__})"
    raise DataError(f"Row {index + 1} (line {table.lines[index]}) of '{table.path}': the column '{column}' {what}.")


def read_scored_pairs(path: str | os.PathLike, columns: Columns = None) -> SentencePairs:
    """STS pairs (sentence1, sentence2, score) from a CSV, TSV or JSONL file with named columns."""
    table = read_table(path)
    resolved = resolve_columns(table, STS_ROLES, columns)
    first_column, second_column, score_column = (resolved[role][0] for role in STS_ROLES)
    first, second, scores = [], [], []
    for i, row in enumerate(table.rows):
        first.append(_field(table, i, first_column))
        second.append(_field(table, i, second_column))
        try:
            scores.append(float(row[score_column]))
        except (TypeError, ValueError) as error:
            raise DataError(f"Row {i + 1} (line {table.lines[i]}) of '{table.path}': the score "
                            f"'{row[score_column]}' of column '{score_column}' is not a number.") from error
    if not first:
        raise DataError(f"'{table.path}' holds no sentence pairs (only a header).")
    return SentencePairs(first, second, np.asarray(scores, dtype=np.float64))


@dataclass(frozen=True)
class TrainingPairs:
    """Training rows: ``anchors[i]`` and ``positives[i]`` are a positive pair, ``negatives[i]``
    holds the row's ``k`` negatives (the same ``k`` for every row; 0 when the file has none)."""

    anchors: list[str]
    positives: list[str]
    negatives: list[tuple[str, ...]]
    name: str = "pairs"
    domains: list[str] | None = None  # each row's domain (a ``domain`` column), for methods routed by domain

    def __post_init__(self) -> None:
        if not (len(self.anchors) == len(self.positives) == len(self.negatives)):
            raise DataError(f"'{self.name}': {len(self.anchors)} anchors, {len(self.positives)} positives and "
                            f"{len(self.negatives)} rows of negatives; every row needs all three.")
        if self.domains is not None and len(self.domains) != len(self.anchors):
            raise DataError(f"'{self.name}': {len(self.domains)} domains for {len(self.anchors)} rows.")
        if len({len(n) for n in self.negatives}) > 1:
            raise DataError(f"'{self.name}': the rows have different numbers of negatives "
                            f"({sorted({len(n) for n in self.negatives})}); give every row the same number.")

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def negatives_per_row(self) -> int:
        return len(self.negatives[0]) if self.negatives else 0


def _row_negatives(table: Table, index: int, names: list[str]) -> tuple[str, ...]:
    texts: list[str] = []
    for name in names:
        value = table.rows[index].get(name)
        if isinstance(value, list):  # a JSONL list of negatives
            if not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise DataError(f"Row {index + 1} of '{table.path}': '{name}' must be a list of non-empty texts.")
            texts.extend(value)
        else:
            texts.append(_field(table, index, name))
    return tuple(texts)


def read_training_pairs(path: str | os.PathLike, columns: Columns = None) -> TrainingPairs:
    """(anchor, positive, negative_1 .. negative_k) rows from a CSV, TSV or JSONL file; the
    negatives are optional (``k = 0``: in-batch negatives only)."""
    table = read_table(path)
    resolved = resolve_columns(table, TRAINING_ROLES, columns, negatives=True)
    negative_names = resolved.get("negative", [])
    anchors, positives, negatives = [], [], []
    for i in range(len(table.rows)):
        anchors.append(_field(table, i, resolved["anchor"][0]))
        positives.append(_field(table, i, resolved["positive"][0]))
        row = _row_negatives(table, i, negative_names)
        if negatives and len(row) != len(negatives[0]):
            raise DataError(f"Row {i + 1} (line {table.lines[i]}) of '{table.path}' has {len(row)} negatives, the "
                            f"first row {len(negatives[0])}; every row needs the same number.")
        negatives.append(row)
    if not anchors:
        raise DataError(f"'{table.path}' holds no rows (only a header).")
    # An optional column named ``domain``: the row's domain, read by methods routed by domain (mnrl-moe).
    domain_column = next((name for name in table.header if _key(name) == DOMAIN_COLUMN), None)
    domains = [_field(table, i, domain_column).strip() for i in range(len(table.rows))] if domain_column else None
    return TrainingPairs(anchors, positives, negatives, name=str(table.path), domains=domains)


def training_rows(pairs: TrainingPairs) -> Iterator[dict[str, str]]:
    """The rows of ``pairs`` as ``{"anchor", "positive", "negative_1", ...}`` (what :func:`write_training_pairs` writes)."""
    domains = pairs.domains if pairs.domains is not None else [None] * len(pairs)
    for anchor, positive, negatives, domain in zip(pairs.anchors, pairs.positives, pairs.negatives, domains):
        yield {"anchor": anchor, "positive": positive,
               **{f"negative_{j}": text for j, text in enumerate(negatives, start=1)},
               **({DOMAIN_COLUMN: domain} if domain is not None else {})}


def write_training_pairs(pairs: TrainingPairs, path: str | os.PathLike) -> Path:
    """Write ``pairs`` as CSV, TSV or JSONL (by suffix) with the columns anchor, positive,
    negative_1 .. negative_k, readable by :func:`read_training_pairs` without ``columns``."""
    import gzip
    import json

    path = Path(path)
    kind = table_format(path)
    header = ["anchor", "positive", *(f"negative_{j}" for j in range(1, pairs.negatives_per_row + 1)),
              *([DOMAIN_COLUMN] if pairs.domains is not None else [])]
    if kind == "tsv":
        bad = next((t for row in training_rows(pairs) for t in row.values() if "\t" in t or "\n" in t), None)
        if bad is not None:
            raise DataError(f"A text holds a tab or a line break, which a TSV file cannot: write .csv or .jsonl "
                            f"instead ({bad[:60]!r}).")
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        if kind == "jsonl":
            for row in training_rows(pairs):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif kind == "csv":
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(training_rows(pairs))
        else:
            handle.write("\t".join(header) + "\n")
            for row in training_rows(pairs):
                handle.write("\t".join(row[name] for name in header) + "\n")
    return path
