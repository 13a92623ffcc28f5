"""Task descriptions for the text task runner (:mod:`contrastkit.modalities.text.benchmark_tasks`):
one small YAML or JSON file per task, checked before anything is read or encoded.

A task file (``stsb.yaml``)::

    type: sts                      # sts | retrieval | pair-classification | clustering | reranking
    data:                          # one path or entry per split; the runner scores `dev` unless told
      dev: $CONTRASTKIT_DATA/stsb/sts-dev.csv
      test: $CONTRASTKIT_DATA/stsb/sts-test.csv
    columns: [sentence1, sentence2, score]   # optional: names of the columns of each role
    metric: spearman               # optional: the table's score (the type's first metric by default)
    name: STS-B                    # optional: the file name without its suffix by default
    description: ...               # optional, free text

Keys:

- ``data``: a path, an entry, or a mapping from split name to a path or entry. A single path or entry
  of a ``retrieval`` task (a BEIR folder) serves every split (its ``qrels/<split>.tsv``; ``dev`` is
  carved from the train queries where the folder has no dev file: :func:`~contrastkit.modalities.text.sources.read_beir`);
  for every other type it is the ``dev`` data, and the task has no test data.
- An **entry** is ``{path, format, header, where, carve}`` (only ``path`` required): ``format`` (csv,
  tsv or jsonl) reads a file whose suffix does not say (``.txt``); ``header`` names the columns of a
  file without a header line (its first line is data); ``where: {column: value or [values]}`` keeps
  the rows whose column holds one of the values; ``carve: {key: column or [columns], modulus: 3,
  remainder: 0}`` keeps the rows whose key (the columns' values joined by a tab) has a SHA-256 equal
  to ``remainder`` modulo ``modulus`` (the rule of SciFact's dev carve,
  :func:`~contrastkit.modalities.text.sources.in_dev_carve`, for ``modulus`` 3 and ``remainder`` 0):
  a fixed, machine-independent share of a file, so a development split can be carved from a training
  file and a sample from a large one.
- **Paths**: ``$CONTRASTKIT_DATA/...`` is under the data root (:func:`contrastkit.core.paths.data_root`),
  so the project's own task files ship without machine paths; any other relative path is relative to
  the task file's folder (a user's data beside their task files); ``~`` and absolute paths as usual.
  Explicit rather than searched: a path never silently means one of two files.
- ``columns`` (not for retrieval): the columns of the task's roles, as in
  :mod:`contrastkit.modalities.text.tables` (in the order of the roles, or ``{role: column}``); without
  it each role takes the first of its aliases the file has
  (:data:`contrastkit.modalities.text.task_data.ROLE_ALIASES`).
- ``corpus`` (reranking only): a BEIR folder; the ``query``, ``positive`` and ``negative`` fields then
  hold its query and document ids, not texts, and the candidates' embeddings are the corpus's, through
  the corpus-embedding cache (the whole corpus is embedded once, and is free after a retrieval task on it).

The data each task names is read by :mod:`contrastkit.modalities.text.task_data`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from contrastkit.core.errors import ConfigError, DataError, closest_names
from contrastkit.core.paths import data_root
from contrastkit.modalities.text.sources import hash_bucket

TASK_TYPES = ("sts", "retrieval", "pair-classification", "clustering", "reranking")
METRICS = {  # the first is the type's default score
    "sts": ("spearman",),
    "retrieval": ("ndcg@10", "recall@100", "mrr@10"),
    "pair-classification": ("ap", "accuracy", "f1"),
    "clustering": ("v_measure",),
    "reranking": ("map", "mrr@10"),
}
TASK_KEYS = ("type", "data", "name", "description", "columns", "metric", "corpus")
ENTRY_KEYS = ("path", "format", "header", "where", "carve")
CARVE_KEYS = ("key", "modulus", "remainder")
FORMATS = ("csv", "tsv", "jsonl")
TASK_SUFFIXES = (".yaml", ".yml", ".json")
DATA_ROOT_PREFIXES = ("$CONTRASTKIT_DATA", "${CONTRASTKIT_DATA}")
DEV_SPLIT = "dev"


@dataclass(frozen=True)
class Carve:
    key: tuple[str, ...]
    modulus: int = 3
    remainder: int = 0

    def keeps(self, row: Mapping) -> bool:
        text = "\t".join(str(row[column]) for column in self.key)
        return hash_bucket(text, self.modulus) == self.remainder  # SciFact's dev carve: modulus 3, remainder 0


@dataclass(frozen=True)
class DataEntry:
    """A file or folder of a task and how to read it (the module docstring's entry)."""

    path: Path
    format: str | None = None
    header: tuple[str, ...] | None = None
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)
    carve: Carve | None = None

    @property
    def plain(self) -> bool:
        """Whether the file is read as it is (no format, header, filter or carve)."""
        return self.format is None and self.header is None and not self.where and self.carve is None


@dataclass(frozen=True)
class TaskSpec:
    """One task file, checked: its data per split (``shared``: one entry for every split)."""

    name: str
    type: str
    file: Path
    data: dict[str, DataEntry]
    shared: bool
    metric: str
    columns: object = None
    corpus: Path | None = None
    description: str = ""
    kmeans_seeds: tuple[int, ...] | None = None  # clustering: k-means runs averaged (None: task_metrics' 5)

    def entry(self, split: str) -> DataEntry | None:
        """The data of ``split``, or None when the task has none."""
        if self.shared:
            return next(iter(self.data.values())) if self.type == "retrieval" or split == DEV_SPLIT else None
        return self.data.get(split)


# --------------------------------------------------------------------------------- task files


def _where(file: Path) -> str:
    return f"the task file '{file}'"


def _check_keys(mapping: Mapping, valid: Sequence[str], where: str) -> None:
    for name in mapping:
        if name not in valid:
            close = closest_names(str(name), valid)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown key '{name}' in {where}.{hint} Valid keys: {', '.join(valid)}.")


def resolve_path(text: str, task_folder: Path, where: str) -> Path:
    """``$CONTRASTKIT_DATA/x`` -> the data root's ``x``; another relative path -> under ``task_folder``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"A path in {where} must be a non-empty string, got {text!r}.")
    for prefix in DATA_ROOT_PREFIXES:
        if text == prefix or text.startswith(prefix + "/"):
            return data_root() / text[len(prefix):].lstrip("/")
    if "$" in text:
        raise ConfigError(f"The path '{text}' in {where} names a variable; only $CONTRASTKIT_DATA is expanded (other "
                          "relative paths are relative to the task file's folder).")
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(task_folder / path))  # no 'tasks/../x' in messages


def _names(value, what: str, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"'{what}' in {where} must be a column name or a list of them, got {value!r}.")
    return tuple(names)


def _entry(value, task_folder: Path, where: str) -> DataEntry:
    if isinstance(value, str):
        return DataEntry(resolve_path(value, task_folder, where))
    if not isinstance(value, Mapping):
        raise ConfigError(f"A data entry in {where} must be a path or a mapping with 'path', got {value!r}.")
    _check_keys(value, ENTRY_KEYS, f"a data entry of {where}")
    if "path" not in value:
        raise ConfigError(f"A data entry in {where} has no 'path' key (it has: {', '.join(map(str, value))}).")
    kind = value.get("format")
    if kind is not None and kind not in FORMATS:
        raise ConfigError(f"Unknown format '{kind}' in {where}; the formats are {', '.join(FORMATS)}.")
    where_rows = value.get("where") or {}
    if not isinstance(where_rows, Mapping):
        raise ConfigError(f"'where' in {where} must map column names to a value or a list of values.")
    carve = value.get("carve")
    if carve is not None:
        if not isinstance(carve, Mapping) or "key" not in carve:
            raise ConfigError(f"'carve' in {where} must be a mapping with 'key' (a column or a list of columns) and "
                              "optionally 'modulus' (3) and 'remainder' (0).")
        _check_keys(carve, CARVE_KEYS, f"'carve' of {where}")
        modulus, remainder = carve.get("modulus", 3), carve.get("remainder", 0)
        if not (isinstance(modulus, int) and isinstance(remainder, int) and 0 <= remainder < modulus):
            raise ConfigError(f"'carve' in {where} needs integers 0 <= remainder < modulus, got {modulus}, {remainder}.")
        carve = Carve(_names(carve["key"], "carve.key", where), modulus, remainder)
    return DataEntry(
        path=resolve_path(value["path"], task_folder, where), format=kind,
        header=_names(value["header"], "header", where) if value.get("header") is not None else None,
        where={str(k): tuple(str(x) for x in (v if isinstance(v, list) else [v])) for k, v in where_rows.items()},
        carve=carve)


def read_task_file(path: str | os.PathLike) -> TaskSpec:
    """A task description (YAML or JSON), checked; a missing or unknown key is a ConfigError naming
    the file and the key."""
    import yaml

    file = Path(path)
    where = _where(file)
    try:
        text = file.read_text(encoding="utf-8")
        raw = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"Could not read {where}: {error}") from error
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where.capitalize()} must hold a mapping of keys (type, data, ...), got "
                          f"{type(raw).__name__}.")
    _check_keys(raw, TASK_KEYS, where)
    for key in ("type", "data"):
        if raw.get(key) in (None, ""):
            raise ConfigError(f"{where.capitalize()} has no '{key}' key: every task file needs 'type' (one of "
                              f"{', '.join(TASK_TYPES)}) and 'data' (a path, or one per split: dev, test).")
    kind = raw["type"]
    if kind not in TASK_TYPES:
        close = closest_names(str(kind), TASK_TYPES)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"Unknown task type '{kind}' in {where}.{hint} Valid types: {', '.join(TASK_TYPES)}.")
    metric = raw.get("metric", METRICS[kind][0])
    if metric not in METRICS[kind]:
        raise ConfigError(f"Unknown metric '{metric}' for a {kind} task in {where}; valid: {', '.join(METRICS[kind])}.")
    data = raw["data"]
    shared = isinstance(data, str) or (isinstance(data, Mapping) and "path" in data)
    entries = {"*": _entry(data, file.parent, where)} if shared else (
        {str(split): _entry(value, file.parent, f"{where} (split '{split}')") for split, value in data.items()}
        if isinstance(data, Mapping) and data else None)
    if entries is None:
        raise ConfigError(f"'data' in {where} must be a path, an entry with 'path', or a mapping from split to path.")
    if kind == "retrieval":
        extra = [key for key in ("columns", "corpus") if key in raw]
        extra += ["format/header/where/carve"] if any(not e.plain for e in entries.values()) else []
        if extra:
            raise ConfigError(f"{where.capitalize()}: a retrieval task reads a BEIR folder (corpus, queries, qrels), "
                              f"so {', '.join(extra)} do not apply.")
    if "corpus" in raw and kind != "reranking":
        raise ConfigError(f"'corpus' in {where} belongs to reranking tasks (candidates given as ids of a BEIR folder).")
    corpus = resolve_path(raw["corpus"], file.parent, where) if raw.get("corpus") is not None else None
    return TaskSpec(name=str(raw.get("name") or file.stem), type=kind, file=file, data=entries, shared=shared,
                    metric=metric, columns=raw.get("columns"), corpus=corpus,
                    description=str(raw.get("description") or ""))


def task_files(folder: str | os.PathLike) -> list[Path]:
    """The task files of a folder (``*.yaml``, ``*.yml``, ``*.json``; not its subfolders), or the file itself."""
    path = Path(folder)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"The task folder '{path}' does not exist.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TASK_SUFFIXES)
    if not files:
        raise ConfigError(f"The task folder '{path}' holds no task file ({', '.join(TASK_SUFFIXES)}).")
    return files


def read_task_folder(folder: str | os.PathLike, names: Sequence[str] | None = None) -> list[TaskSpec]:
    """Every task of ``folder`` (or of one task file), checked, in the order of :data:`TASK_TYPES` and
    then by name; ``names`` keeps those tasks (an unknown name is an error with the valid ones)."""
    specs = [read_task_file(path) for path in task_files(folder)]
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"Two task files are named '{spec.name}': '{seen[spec.name]}' and '{spec.file}'.")
        seen[spec.name] = spec.file
    if names is not None:
        unknown = [name for name in names if name not in seen]
        if unknown:
            close = closest_names(unknown[0], seen)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"No task named '{unknown[0]}' in '{folder}'.{hint} Tasks: {', '.join(sorted(seen))}.")
        specs = [spec for spec in specs if spec.name in names]
    return sorted(specs, key=lambda spec: (TASK_TYPES.index(spec.type), spec.name))


def check_data_exists(spec: TaskSpec, split: str) -> None:
    """Raise a DataError naming the task file when the data of ``split`` is missing on disk."""
    entry = spec.entry(split)
    paths = ([("data", entry.path)] if entry is not None else []) + ([("corpus", spec.corpus)] if spec.corpus else [])
    for key, path in paths:
        if not path.exists():
            hint = (f" ($CONTRASTKIT_DATA is '{data_root()}'; set it to the folder that holds the data)"
                    if path.is_relative_to(data_root()) else "")
            raise DataError(f"The {key} '{path}' of {_where(spec.file)} does not exist{hint}.")
