"""A dictionary's entries and their definitions, from the Open English WordNet files.

An *entry* is a lemma with its part of speech (``bank (n)``); its definitions are the definitions of
the synsets it is a sense of, in sense order. A synset's definition is shared by all its member
lemmas, so one definition may belong to several entries (``dog (n)`` and ``domestic dog (n)``).

The files (``$CONTRASTKIT_DATA/wordnet``, see its PROVENANCE.txt): ``synsets.tsv.gz`` (synset_id, pos,
lexfile, ili, members, definition, examples) and ``senses.tsv.gz`` (lemma, pos, entry, sense_number,
synset_id, sense_key); gzip'd UTF-8 TSV with a header row and no quoting (definitions hold quotes),
so lines are split on tabs. Synset ids are OEWN's (PWN 3.1-style offsets), not NLTK's WordNet 3.0.

:func:`write_definition_rows` writes ``definition<TAB>entry`` rows, the training data of ``defsent-plus``
(:mod:`contrastkit.modalities.text.methods.defsent_plus`)::

    python -m contrastkit.modalities.text.dictionary --entries 4000 --seed 0 --out definitions.tsv
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from contrastkit.core.errors import DataError
from contrastkit.core.paths import data_root

SYNSETS_FILE = "synsets.tsv.gz"
SENSES_FILE = "senses.tsv.gz"


@dataclass(frozen=True)
class Entry:
    """A dictionary entry: its name (``lemma (pos)``) and its definitions in sense order."""

    name: str
    definitions: tuple[str, ...]


def _rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"'{path}' does not exist: the WordNet folder needs {SYNSETS_FILE} and {SENSES_FILE} "
                        "(see $CONTRASTKIT_DATA/wordnet/PROVENANCE.txt).")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    header = lines[0].rstrip("\r").split("\t")
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"'{path}' has no column {', '.join(missing)}; its columns: {', '.join(header)}.")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")  # no quoting: a definition's quotes are text
        if len(fields) != len(header):
            raise DataError(f"Line {number} of '{path}' has {len(fields)} tab-separated fields, the header {len(header)}.")
        rows.append(dict(zip(header, fields)))
    return rows


def read_wordnet_entries(folder: str | os.PathLike | None = None) -> list[Entry]:
    """Every (lemma, pos) entry of the WordNet folder (default ``$CONTRASTKIT_DATA/wordnet``) with its
    definitions, sorted by name; senses in their upstream order (``sense_number``, roughly by frequency)."""
    folder = Path(folder) if folder is not None else data_root() / "wordnet"
    definitions = {row["synset_id"]: row["definition"].strip()
                   for row in _rows(folder / SYNSETS_FILE, ("synset_id", "definition"))}
    senses: dict[str, list[tuple[int, str]]] = {}
    for row in _rows(folder / SENSES_FILE, ("lemma", "pos", "sense_number", "synset_id")):
        synset = row["synset_id"]
        if synset not in definitions:
            raise DataError(f"The sense {row['lemma']} ({row['pos']}) names synset {synset}, which "
                            f"{SYNSETS_FILE} does not hold.")
        senses.setdefault(f"{row['lemma']} ({row['pos']})", []).append((int(row["sense_number"]), synset))
    entries = []
    for name in sorted(senses):
        texts = tuple(dict.fromkeys(definitions[s] for _, s in sorted(senses[name]) if definitions[s]))
        if texts:
            entries.append(Entry(name, texts))
    return entries


def sample_entries(entries: Sequence[Entry], count: int | None, seed: int = 0) -> list[Entry]:
    """``count`` entries drawn without replacement by ``random.Random(seed)`` (all when None), in
    the order of ``entries``."""
    if count is None or count >= len(entries):
        return list(entries)
    if count < 1:
        raise DataError(f"Sample at least one entry, got {count}.")
    keep = set(random.Random(seed).sample(range(len(entries)), count))
    return [entry for i, entry in enumerate(entries) if i in keep]


def write_definition_rows(entries: Sequence[Entry], path: str | os.PathLike) -> Path:
    """One ``definition<TAB>entry`` row per (entry, definition), with that header line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("definition\tentry\n")
        for entry in entries:
            for definition in entry.definitions:
                if "\t" in definition or "\n" in definition or "\t" in entry.name:
                    raise DataError(f"The definition of {entry.name!r} holds a tab or a line break: {definition[:60]!r}.")
                handle.write(f"{definition}\t{entry.name}\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrastkit.modalities.text.dictionary",
                                     description="write WordNet (definition, entry) rows for defsent-plus")
    parser.add_argument("--wordnet", default=None, help="the WordNet folder (default: $CONTRASTKIT_DATA/wordnet)")
    parser.add_argument("--entries", type=int, default=None, help="a random sample of this many entries (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the .tsv file to write")
    args = parser.parse_args(argv)
    entries = sample_entries(read_wordnet_entries(args.wordnet), args.entries, args.seed)
    write_definition_rows(entries, args.out)
    print(f"{len(entries)} entries, {sum(len(e.definitions) for e in entries)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
