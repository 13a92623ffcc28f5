"""Paired samples read from disk: two fields of one file, two files aligned by id, and the
code-docstring pairs of the CPython standard library.

A pair set is two equally long lists, ``first`` and ``second``: row ``i`` of each is one sample
seen in two modalities (docstring and code, caption and image path, ...). Values are kept as read
(strings for text; any JSON value for a custom tower); the tower's collate function decides what
it accepts.

Formats:

- JSONL (``.jsonl``, ``.jsonl.gz``): one object per line.
- CSV (``.csv``, ``.csv.gz``) with a header row, or TSV (``.tsv``, ``.tsv.gz``); standard quoting.

``read_pairs(path, first_field, second_field)`` reads both fields of every record;
``read_aligned_pairs(first_path, second_path, ...)`` joins two files on an id field (every id
must appear exactly once in each file). ``split=`` keeps the records whose ``split_field`` equals
it. ``read_code_docstring(split)`` reads ``code-docstring/pairs.jsonl.gz`` under the data root
(first: the docstring's first paragraph, second: the function's code with its docstring removed;
splits train / valid / test by module, see its PROVENANCE.txt).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrastkit.core.errors import DataError
from contrastkit.core.paths import data_root
from contrastkit.modalities.text.sources import read_jsonl

CODE_DOCSTRING_FILE = Path("code-docstring") / "pairs.jsonl.gz"
CODE_DOCSTRING_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Pairs:
    """Row ``i`` of ``first`` and row ``i`` of ``second`` are one sample in two modalities."""

    first: list[Any]
    second: list[Any]
    ids: list[str]
    first_name: str = "first"
    second_name: str = "second"
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not len(self.first) == len(self.second) == len(self.ids):
            raise DataError(
                f"A pair set needs as many first items ({len(self.first)}) as second items "
                f"({len(self.second)}) and ids ({len(self.ids)}){self._where()}."
            )

    def __len__(self) -> int:
        return len(self.first)

    def subset(self, indices: Sequence[int]) -> Pairs:
        """The pairs at ``indices``, in that order."""
        return Pairs([self.first[i] for i in indices], [self.second[i] for i in indices],
                     [self.ids[i] for i in indices], self.first_name, self.second_name, self.source)

    def _where(self) -> str:
        return f" (from '{self.source}')" if self.source else ""


def _table_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix in ("jsonl", "csv", "tsv"):
        if name.endswith("." + suffix):
            return suffix
    raise DataError(
        f"'{path}' is neither JSONL (.jsonl[.gz]) nor CSV/TSV (.csv[.gz], .tsv[.gz]); pairs are read "
        "from one of those formats (rename the file if its content is one of them)."
    )


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL, CSV or TSV file (plain or gzip), as dicts, in file order."""
    path = Path(path)
    kind = _table_format(path)
    if kind == "jsonl":
        return read_jsonl(path)
    if not path.is_file():
        raise DataError(f"The pairs file '{path}' does not exist (or is not a file).")
    raw = path.read_bytes()
    try:
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise DataError(f"Could not read '{path}' as UTF-8 text (plain or gzip): {error}.") from error
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
    records = [dict(row) for row in reader]
    if not records:
        raise DataError(f"'{path}' has a header but no rows (or is empty); it holds no pairs.")
    return records


def _field_values(records: list[dict[str, Any]], name: str, path: Path, option: str) -> list[Any]:
    values = []
    for number, record in enumerate(records, start=1):
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            fields = ", ".join(sorted(record))
            raise DataError(
                f"Record {number} of '{path}' has no value for the field '{name}' (its fields: "
                f"{fields}). Name the right field with {option}, or drop the records without one."
            )
        values.append(value)
    return values


def _keep_split(records: list[dict[str, Any]], split: str | None, split_field: str,
                path: Path) -> list[dict[str, Any]]:
    if split is None:
        return records
    present = {str(r.get(split_field)) for r in records}
    kept = [r for r in records if str(r.get(split_field)) == split]
    if not kept:
        raise DataError(
            f"No record of '{path}' has {split_field} = '{split}' (values found: "
            f"{', '.join(sorted(present)[:10])}). Choose one of those splits, or pass no split."
        )
    return kept


def read_pairs(path: str | os.PathLike, first_field: str, second_field: str, *,
               id_field: str | None = None, split: str | None = None,
               split_field: str = "split") -> Pairs:
    """Pairs from two fields of every record of one JSONL/CSV/TSV file.

    ``id_field`` names a field of unique ids (default: the record's row number among the kept
    records). ``split`` keeps only the records whose ``split_field`` equals it.
    """
    path = Path(path)
    records = _keep_split(read_records(path), split, split_field, path)
    first = _field_values(records, first_field, path, "--first-field")
    second = _field_values(records, second_field, path, "--second-field")
    if id_field is None:
        ids = [str(i) for i in range(len(records))]
    else:
        ids = [str(v) for v in _field_values(records, id_field, path, "--id-field")]
        _check_unique(ids, path, id_field)
    return Pairs(first, second, ids, first_field, second_field, str(path))


def _check_unique(ids: list[str], path: Path, id_field: str) -> None:
    seen: set[str] = set()
    repeated = [i for i in ids if i in seen or seen.add(i)]
    if repeated:
        raise DataError(
            f"The id field '{id_field}' of '{path}' repeats {len(repeated)} id(s) (e.g. "
            f"'{repeated[0]}'); ids must be unique to align or identify pairs."
        )


def read_aligned_pairs(first_path: str | os.PathLike, second_path: str | os.PathLike,
                       first_field: str, second_field: str, *, id_field: str = "id") -> Pairs:
    """Pairs from two files joined on ``id_field``, in the order of the first file.

    Every id must appear exactly once in each file: an id found in only one of them is an error
    (a silently dropped sample would change the evaluation).
    """
    first_path, second_path = Path(first_path), Path(second_path)
    first_records = read_records(first_path)
    second_records = read_records(second_path)
    first_ids = [str(v) for v in _field_values(first_records, id_field, first_path, "--id-field")]
    second_ids = [str(v) for v in _field_values(second_records, id_field, second_path, "--id-field")]
    _check_unique(first_ids, first_path, id_field)
    _check_unique(second_ids, second_path, id_field)
    only_first = sorted(set(first_ids) - set(second_ids))
    only_second = sorted(set(second_ids) - set(first_ids))
    if only_first or only_second:
        raise DataError(
            f"The files '{first_path}' and '{second_path}' do not hold the same ids in '{id_field}': "
            f"{len(only_first)} only in the first (e.g. {only_first[:3]}), {len(only_second)} only in "
            f"the second (e.g. {only_second[:3]}). Every sample needs one record in each file."
        )
    first = _field_values(first_records, first_field, first_path, "--first-field")
    by_id = dict(zip(second_ids, _field_values(second_records, second_field, second_path, "--second-field")))
    second = [by_id[i] for i in first_ids]
    return Pairs(first, second, first_ids, first_field, second_field, f"{first_path} + {second_path}")


def read_code_docstring(split: str, path: str | os.PathLike | None = None,
                        query_field: str = "docstring_summary") -> Pairs:
    """The CPython standard-library docstring/code pairs of one split (train, valid or test).

    ``first`` is ``query_field`` (the docstring's first paragraph, CodeSearchNet's query; or
    ``docstring`` for the whole docstring), ``second`` the function's code without its docstring;
    ids are ``path:lineno:func_name``. ``path`` defaults to ``code-docstring/pairs.jsonl.gz`` under
    the data root ($CONTRASTKIT_DATA).
    """
    if split not in CODE_DOCSTRING_SPLITS:
        raise DataError(f"The code-docstring split must be one of {', '.join(CODE_DOCSTRING_SPLITS)}, got '{split}'.")
    path = Path(path) if path is not None else data_root() / CODE_DOCSTRING_FILE
    if not path.is_file():
        raise DataError(
            f"The code-docstring pairs are not at '{path}'. Set CONTRASTKIT_DATA to the folder that "
            f"holds '{CODE_DOCSTRING_FILE}', or pass the file's path."
        )
    records = _keep_split(read_jsonl(path), split, "split", path)
    first = _field_values(records, query_field, path, "--first-field")
    second = _field_values(records, "code", path, "--second-field")
    ids = [f"{r['path']}:{r['lineno']}:{r['func_name']}" for r in records]
    return Pairs(first, second, ids, query_field, "code", str(path))
