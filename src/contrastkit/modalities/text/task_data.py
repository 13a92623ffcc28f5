"""The data a text task names (:mod:`contrastkit.modalities.text.task_files`), read into plain lists:
CSV, TSV or JSONL with named columns (:mod:`contrastkit.modalities.text.tables`), after the entry's
``format``, ``header``, ``where`` and ``carve``; a retrieval task's BEIR folder is read by
:func:`contrastkit.modalities.text.sources.read_beir`.

Data by type (CSV, TSV or JSONL with named columns; retrieval: a BEIR folder):

=======================  =========================================================================
type                     roles (rows)
=======================  =========================================================================
``sts``                  sentence1, sentence2, score (a file in the STS Benchmark's own layout too)
``pair-classification``  sentence1, sentence2, label (0 or 1)
``clustering``           text, label (any value)
``reranking``            query, positive, negative: a JSONL field may hold a list of texts; rows of
                         the same query are merged, and an empty cell adds no candidate
=======================  =========================================================================

A role takes the column ``columns`` names for it (in the order of the roles, or ``{role: column}``),
else the first of its aliases (:data:`ROLE_ALIASES`) the file has, letter case and ``_ - space``
ignored; a role without a column is a DataError naming the role, the aliases looked for and the
file's columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from contrastkit.core.errors import ConfigError, DataError
from contrastkit.modalities.text.sources import (
    RetrievalSet,
    SentencePairs,
    _find,
    read_corpus,
    read_jsonl,
    read_sts,
)
from contrastkit.modalities.text.tables import ALIASES, Table, _explicit, _field, _key, read_table
from contrastkit.modalities.text.task_files import DEV_SPLIT, DataEntry, TaskSpec

ROLES = {
    "sts": ("sentence1", "sentence2", "score"),
    "pair-classification": ("sentence1", "sentence2", "label"),
    "clustering": ("text", "label"),
    "reranking": ("query", "positive", "negative"),
}
ROLE_ALIASES = {
    **{role: ALIASES[role] for role in ("sentence1", "sentence2", "score")},
    "label": ("label", "labels", "is_duplicate", "is_paraphrase", "category", "class", "cluster", "topic", "score"),
    "text": ("text", "sentence", "definition", "document", "title"),
    "query": ("query", "anchor", "question"),
    "positive": ("positive", "positives", "pos", "relevant"),
    "negative": ("negative", "negatives", "neg", "irrelevant"),
}
DOCUMENT_SEPARATOR = " "  # as contrastkit.modalities.text.evaluation (BEIR: title + " " + text), without torch

# ------------------------------------------------------------------------------------- tables


def read_entry(entry: DataEntry) -> Table:
    """The rows of a CSV / TSV / JSONL entry, after ``header``, ``where`` and ``carve``."""
    table = read_table(entry.path, entry.format, entry.header)
    needed = [*entry.where, *(entry.carve.key if entry.carve else ())]
    missing = [column for column in needed if column not in table.header]
    if missing:
        raise DataError(f"'{entry.path}' has no column '{missing[0]}' (named by 'where' or 'carve'); its columns: "
                        f"{', '.join(table.header)}.")
    kept = [i for i, row in enumerate(table.rows)
            if all(str(row.get(column)) in values for column, values in entry.where.items())
            and (entry.carve is None or entry.carve.keeps(row))]
    if not kept:
        raise DataError(f"No row of '{entry.path}' is left after 'where' and 'carve'.")
    return replace(table, rows=[table.rows[i] for i in kept], lines=[table.lines[i] for i in kept])


def resolve_roles(table: Table, roles: Sequence[str], columns=None) -> dict[str, str]:
    """role -> column of ``table``: ``columns`` as in :mod:`~contrastkit.modalities.text.tables` (in the
    order of ``roles``, or ``{role: column}``), else the first alias of :data:`ROLE_ALIASES` present
    (letter case and ``_ - space`` ignored, one column per role)."""
    if columns is not None:
        named = _explicit(columns, roles, negatives=False)
        resolved = {}
        for role in roles:
            if role not in named or len(named[role]) != 1:
                raise ConfigError(f"'columns' must name one column for '{role}' (roles: {', '.join(roles)}).")
            if named[role][0] not in table.header:
                raise DataError(f"'{table.path}' has no column '{named[role][0]}' (named for '{role}'); its columns: "
                                f"{', '.join(table.header)}.")
            resolved[role] = named[role][0]
        return resolved
    by_key: dict[str, str] = {}
    for name in table.header:
        by_key.setdefault(_key(name), name)
    resolved, taken = {}, set()
    for role in roles:
        found = next((by_key[_key(a)] for a in ROLE_ALIASES[role] if by_key.get(_key(a)) not in (None, *taken)), None)
        if found is None:
            raise DataError(f"'{table.path}' has no column for '{role}' (looked for: {', '.join(ROLE_ALIASES[role])}); "
                            f"its columns: {', '.join(table.header) or 'none'}. Name the columns with 'columns' in the "
                            f"task file (in the order {', '.join(roles)}), or rename them in the file.")
        resolved[role] = found
        taken.add(found)
    return resolved


# ------------------------------------------------------------------------------ data by type


@dataclass(frozen=True)
class LabelledPairs:
    """Sentence pairs with 0/1 labels (pair classification)."""

    first: list[str]
    second: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.first)


@dataclass(frozen=True)
class RerankingSet:
    """Queries, each with its own candidates (texts); ``corpus``: the BEIR folder they came from, if any."""

    queries: list[str]
    positives: list[list[str]]
    negatives: list[list[str]]
    corpus: RetrievalSet | None = None

    def __len__(self) -> int:
        return len(self.queries)


def _data(spec: TaskSpec, split: str) -> DataEntry:
    entry = spec.entry(split)
    if entry is None:
        raise DataError(f"The task file '{spec.file}' has no data for the split '{split}' (it has: "
                        f"{'dev' if spec.shared else ', '.join(spec.data)}).")
    return entry


def _table(spec: TaskSpec, split: str) -> tuple[Table, dict[str, str]]:
    table = read_entry(_data(spec, split))
    return table, resolve_roles(table, ROLES[spec.type], spec.columns)


def read_sts_task(spec: TaskSpec, split: str = DEV_SPLIT) -> SentencePairs:
    """The scored pairs of an STS task; a plain file goes through :func:`~contrastkit.modalities.text.sources.read_sts`
    exactly as ``contrastkit evaluate --task sts`` reads it (the STS Benchmark layout too)."""
    entry = _data(spec, split)
    if entry.plain:
        return read_sts(entry.path, spec.columns)
    table, roles = _table(spec, split)
    scores = [_number(table, i, roles["score"]) for i in range(len(table.rows))]
    return SentencePairs([_field(table, i, roles["sentence1"]) for i in range(len(table.rows))],
                         [_field(table, i, roles["sentence2"]) for i in range(len(table.rows))],
                         np.asarray(scores, dtype=np.float64))


def read_pair_classification_task(spec: TaskSpec, split: str = DEV_SPLIT) -> LabelledPairs:
    table, roles = _table(spec, split)
    labels = []
    for i in range(len(table.rows)):
        value = _number(table, i, roles["label"])
        if value not in (0, 1):
            raise DataError(f"Row {i + 1} (line {table.lines[i]}) of '{table.path}': the label {value:g} of column "
                            f"'{roles['label']}' is not 0 or 1.")
        labels.append(int(value))
    return LabelledPairs([_field(table, i, roles["sentence1"]) for i in range(len(table.rows))],
                         [_field(table, i, roles["sentence2"]) for i in range(len(table.rows))], labels)


def read_clustering_task(spec: TaskSpec, split: str = DEV_SPLIT) -> tuple[list[str], list[str]]:
    """``(texts, labels)``; labels are compared as strings."""
    table, roles = _table(spec, split)
    rows = range(len(table.rows))
    return [_field(table, i, roles["text"]) for i in rows], [str(table.rows[i][roles["label"]]) for i in rows]


def read_reranking_task(spec: TaskSpec, split: str = DEV_SPLIT) -> RerankingSet:
    """Queries with their positive and negative candidates (rows of one query merged, in file order);
    with ``corpus`` the fields are ids of that BEIR folder's queries and documents."""
    table, roles = _table(spec, split)
    merged: dict[str, tuple[list[str], list[str]]] = {}
    for i, row in enumerate(table.rows):
        positives, negatives = merged.setdefault(_field(table, i, roles["query"]), ([], []))
        positives.extend(_texts(table, i, roles["positive"]))
        negatives.extend(_texts(table, i, roles["negative"]))
    queries = list(merged)
    corpus = None
    if spec.corpus is not None:
        corpus, query_texts = _corpus(spec.corpus)
        documents = dict(zip(corpus.doc_ids, corpus.documents(DOCUMENT_SEPARATOR)))
        for ids, lookup, what in ((queries, query_texts, "query"),
                                  ([d for p, n in merged.values() for d in (*p, *n)], documents, "document")):
            unknown = next((x for x in ids if x not in lookup), None)
            if unknown is not None:
                raise DataError(f"'{table.path}' names the {what} id '{unknown}', which the corpus '{spec.corpus}' "
                                f"does not hold.")
        merged = {query_texts[q]: ([documents[d] for d in p], [documents[d] for d in n]) for q, (p, n) in merged.items()}
        queries = list(merged)
    return RerankingSet(queries, [p for p, _ in merged.values()], [n for _, n in merged.values()], corpus)


def _corpus(folder: Path) -> tuple[RetrievalSet, dict[str, str]]:
    corpus = read_corpus(folder)
    queries = {str(r["_id"]): str(r.get("text", "")) for r in read_jsonl(_find(folder, "queries.jsonl"))}
    return corpus, queries


def _texts(table: Table, index: int, column: str) -> list[str]:
    """A cell as a list of texts: a JSONL list, one text, or none (an empty cell)."""
    value = table.rows[index].get(column)
    if value in (None, ""):
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (str, int)) and str(v).strip() for v in values):
        raise DataError(f"Row {index + 1} (line {table.lines[index]}) of '{table.path}': the column '{column}' must "
                        "hold a text or a list of non-empty texts.")
    return [str(v) for v in values]


def _number(table: Table, index: int, column: str) -> float:
    value = table.rows[index].get(column)
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise DataError(f"Row {index + 1} (line {table.lines[index]}) of '{table.path}': the value '{value}' of column "
                        f"'{column}' is not a number.") from error
